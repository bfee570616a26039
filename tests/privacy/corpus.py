"""The privacy corpus (issue #4): telemetry as real instrumentations emit it, with personal data planted.

Each case is a small trace (or log records, or metric data points) shaped like what the host app's
auto-instrumentation really sends next to Patter's own spans: FastAPI/starlette server spans for
Twilio webhooks, httpx client spans, OpenAI and Anthropic LLM spans (OpenLLMetry's indexed
`gen_ai.prompt.N.*` and the newer `gen_ai.input.messages` shape), `record_exception` events,
logs-as-span-events, error statuses, links, resource attributes, the Python logging bridge and
metric data points. Personal data is planted where apps really leak it: phone numbers of twelve
countries in E.164, international, national, RFC 3966, IDD, `(0)`, dotted, no-break/thin-space,
WhatsApp/SIP and URL/form-encoded spellings; emails; payment cards; API keys, bearer tokens and
URL credentials; unique marker words in content (prompts, completions, transcripts, log bodies).
Every case also carries ids that must survive: Twilio CallSids and AccountSids, UUIDs, ISO
timestamps, call ids, LLM response ids, trace and span ids.

`build(seed)` is deterministic. `Emitter` sends a corpus through the real OpenTelemetry SDK
(`TracerProvider`, `LoggerProvider`, `MeterProvider`) and its real OTLP exporters, gRPC or HTTP.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import string
import urllib.parse
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

MARKERS = ("zebracorn", "quixotic-plum", "marmalade-sphinx", "velvet-tuba", "glimmerwort")
CATEGORIES = ("twilio_webhook", "openai", "anthropic", "httpx", "exception", "span_event", "status", "link",
              "resource", "log", "metric")
PER_SEED = {"twilio_webhook": 40, "openai": 25, "anthropic": 15, "httpx": 25, "exception": 25, "span_event": 20,
            "status": 15, "link": 12, "log": 25, "metric": 20}  # + one resource case per resource variant

# -- phone numbers -----------------------------------------------------------------------------------
# (region, E.164 prefix, digits to append): every generated number is valid for phonenumbers and has a
# national significant number of at least 9 digits, so its digits cannot turn up in an output by chance.
PHONE_PLANS: tuple[tuple[str, str, int], ...] = (
    ("US", "+1415555", 4), ("US", "+1212555", 4), ("US", "+1646555", 4),
    ("GB", "+44207946", 4), ("GB", "+447911", 6),
    ("DE", "+4930901", 5), ("DE", "+4915123", 6),
    ("FR", "+3361234", 4), ("FR", "+3314268", 4),
    ("IN", "+9198765", 5),
    ("BR", "+551191234", 4), ("BR", "+552134567", 3),
    ("AU", "+6141234", 4), ("AU", "+6129374", 4),
    ("MX", "+52551234", 4),
    ("JP", "+81901234", 4),
    ("ES", "+3461234", 4),
    ("IT", "+39333123", 4), ("IT", "+39061234", 4),
    ("NL", "+3161234", 4),
)
STYLES = ("e164", "intl", "national", "rfc3966", "dashed", "idd", "trunk0", "dotted", "nbsp", "narrow", "thin",
          "whatsapp", "sip")
_TRUNK0 = {"GB", "DE", "FR", "NL", "AU"}  # "+44 (0)20 ..." is a common spelling there
_INTL = phonenumbers.PhoneNumberFormat.INTERNATIONAL
_NATL = phonenumbers.PhoneNumberFormat.NATIONAL


@dataclass(frozen=True)
class Phone:
    region: str
    e164: str

    @property
    def nsn(self) -> str:
        """National significant number: in every spelling, so the digits a leak check looks for."""
        return str(phonenumbers.parse(self.e164).national_number)

    def spell(self, style: str) -> str:
        num = phonenumbers.parse(self.e164)
        intl = phonenumbers.format_number(num, _INTL)
        if style == "e164":
            return self.e164
        if style == "intl":
            return intl
        if style == "national":
            return phonenumbers.format_number(num, _NATL)
        if style == "rfc3966":
            return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.RFC3966)
        if style == "dashed":
            return intl.replace(" ", "-")
        if style == "idd":
            return "00" + intl[1:]
        if style == "trunk0":
            return intl.replace(" ", " (0)", 1)
        if style == "dotted":
            nat = phonenumbers.format_number(num, _NATL)
            return nat.replace("(", "").replace(") ", ".").replace(" ", ".").replace("-", ".")
        if style == "nbsp":
            return intl.replace(" ", "\u00a0")
        if style == "narrow":  # French typography
            return intl.replace(" ", "\u202f")
        if style == "thin":
            return intl.replace(" ", "\u2009")
        if style == "whatsapp":
            return "whatsapp:" + self.e164
        if style == "sip":
            return f"sip:{self.e164}@pbx.example.com"
        raise ValueError(style)


def styles_for(region: str) -> tuple[str, ...]:
    out = [s for s in STYLES if s not in ("trunk0", "dotted", "narrow", "thin")]
    if region in _TRUNK0:
        out.append("trunk0")
    if region in ("US", "FR"):
        out.append("dotted")
    if region in ("FR", "DE"):
        out += ["narrow", "thin"]
    return tuple(out)


# -- the case model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Planted:
    kind: str  # phone | email | card | token | marker
    value: str  # as written into the telemetry
    digits: str = ""  # phone: national significant number; card: all digits
    also: tuple[str, ...] = ()  # other verbatim forms that must not appear (a token's secret part)
    region: str = ""  # phone: the country it belongs to


@dataclass(frozen=True)
class Keep:
    """An id that must survive: `value` is found (verbatim) in the output field `where` of this case.

    `where` is an attribute key (span, event, link, resource, log record or data point), or `name`,
    `event.name`, `status` for spans. `signal` is traces, logs or metrics. `wal`: also checked in the WAL
    (links are not stored there).
    """

    signal: str
    where: str
    value: str
    wal: bool = True


@dataclass
class LogSpec:
    api: bool = False  # False: Python `logging` through the SDK's LoggingHandler; True: `Logger.emit`
    level: int = logging.INFO
    msg: str = ""
    args: tuple[Any, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    exception: BaseException | None = None  # logged with `logger.exception` after raising it
    event_name: str | None = None
    body: Any = None


@dataclass
class MetricSpec:
    instrument: str  # counter | histogram | updown | gauge
    name: str
    value: float
    attrs: dict[str, Any]
    unit: str = ""


@dataclass
class SpanSpec:
    name: str
    kind: str = "internal"  # server | client | internal
    attrs: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    children: list[SpanSpec] = field(default_factory=list)
    status: str | None = None  # an ERROR status with this description
    exception: BaseException | None = None  # raised out of the span: the SDK records it and sets the status
    link: dict[str, Any] | None = None  # a link (with these attributes) to the previous case's root span
    logs: list[LogSpec] = field(default_factory=list)  # emitted while this span is current


@dataclass
class Case:
    category: str
    name: str
    call_id: str | None
    planted: list[Planted]
    keep: list[Keep]
    spans: list[SpanSpec] = field(default_factory=list)
    metrics: list[MetricSpec] = field(default_factory=list)
    resource: int = 0
    # filled by Emitter
    trace_ids: set[str] = field(default_factory=set)
    span_ids: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Corpus:
    seed: int
    cases: list[Case]
    resources: list[dict[str, Any]]

    def planted(self) -> list[tuple[Planted, str]]:
        return [(p, c.name) for c in self.cases for p in c.planted]

    def call_ids(self) -> set[str]:
        return {c.call_id for c in self.cases if c.call_id and c.spans}


# -- builders ----------------------------------------------------------------------------------------
FIRST = ("jane", "bob", "amelie", "jurgen", "priya", "joao", "olivia", "kenji", "lucia", "marco", "sanne", "diego")
LAST = ("doe", "smith", "martin", "muller", "sharma", "silva", "brown", "tanaka", "garcia", "rossi", "devries")
DOMAINS = ("example.com", "example.co.uk", "mail.example.org", "example.de", "example.com.br")
AGENT = "+14155550100"  # the agent's own Twilio number (planted too: it is a phone number)


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self._next: dict[int, int] = {}
        self._used: set[str] = {AGENT[2:]}  # national significant numbers handed out
        regions_styles = [(r, s) for r in sorted({p[0] for p in PHONE_PLANS}) for s in styles_for(r)]
        self.rng.shuffle(regions_styles)
        self._combos = regions_styles
        self._combo = 0
        self.n = 0

    # ids
    def hex(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    def call_sid(self) -> str:
        return "CA" + self.hex(32)

    def account_sid(self) -> str:
        return "AC" + self.hex(32)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def iso(self) -> str:
        return (f"2026-11-{self.rng.randint(10, 28):02d}T{self.rng.randint(0, 23):02d}:{self.rng.randint(0, 59):02d}:"
                f"{self.rng.randint(0, 59):02d}.{self.rng.randint(0, 999999):06d}Z")

    def alnum(self, n: int) -> str:
        return "".join(self.rng.choice(string.ascii_letters + string.digits) for _ in range(n))

    # planted values
    def phone(self, region: str | None = None) -> Phone:
        plans = [i for i, p in enumerate(PHONE_PLANS) if region is None or p[0] == region]
        idx = self.rng.choice(plans)
        reg, prefix, width = PHONE_PLANS[idx]
        for _ in range(10_000):
            k = self._next.get(idx, self.seed * 1000)  # disjoint tails per seed: digits unique across corpora
            self._next[idx] = k + 1
            e164 = prefix + f"{(k * 7919 + 13) % 10**width:0{width}d}"
            num = phonenumbers.parse(e164)
            nsn = str(num.national_number)
            # unique digits: no number's digits inside another's, so a leak names its case
            if (phonenumbers.is_valid_number(num) and len(nsn) >= 9 and not e164.endswith("0000")
                    and not any(nsn in u or u in nsn for u in self._used)):
                self._used.add(nsn)
                return Phone(reg, e164)
        raise AssertionError(f"no valid number left for {prefix}")

    def spelled(self, planted: list[Planted], style: str | None = None, region: str | None = None) -> str:
        """A fresh phone number in the next (region, style) of the rotation; recorded in `planted`."""
        if region is None and style is None:
            region, style = self._combos[self._combo % len(self._combos)]
            self._combo += 1
        p = self.phone(region)
        text = p.spell(style or self.rng.choice(styles_for(p.region)))
        planted.append(Planted("phone", text, digits=p.nsn, region=p.region))
        return text

    def email(self, planted: list[Planted]) -> str:
        e = (f"{self.rng.choice(FIRST)}.{self.rng.choice(LAST)}{self.rng.choice(['', '+calls', '.work'])}"
             f"{self.rng.randint(10, 9999)}@{self.rng.choice(DOMAINS)}")
        planted.append(Planted("email", e))
        return e

    def card(self, planted: list[Planted], sep: str | None = None) -> str:
        """A fresh Luhn-valid number with a real scheme prefix (Visa, Mastercard, Amex, Discover, JCB)."""
        prefix, length = self.rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("37", 15), ("34", 15),
                                          ("6011", 16), ("3528", 16)])
        body = prefix + "".join(self.rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
        digits = body + _luhn_digit(body)
        sep = self.rng.choice(["", " ", "-"]) if sep is None else sep
        text = sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))
        planted.append(Planted("card", text, digits=digits))
        return text

    def token(self, planted: list[Planted], kind: str | None = None) -> str:
        kind = kind or self.rng.choice(["openai", "anthropic", "stripe", "github", "aws", "google", "slack"])
        secret = self.alnum(40)
        tok = {
            "openai": f"sk-proj-{secret}",
            "anthropic": f"sk-ant-api03-{secret}",
            "stripe": f"sk_live_{secret[:28]}",
            "github": f"ghp_{secret[:36]}",
            "aws": "AKIA" + "".join(self.rng.choice(string.ascii_uppercase + "234567") for _ in range(16)),
            "google": f"AIza{secret[:35]}",
            "slack": f"xoxb-{self.rng.randint(10**11, 10**12)}-{secret[:24]}",
        }[kind]
        core = tok[-16:]
        planted.append(Planted("token", tok, also=(core,)))
        return tok

    def jwt(self, planted: list[Planted]) -> str:
        def b64(d: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

        head, claims = b64({"alg": "HS256", "typ": "JWT"}), b64({"sub": self.uuid(), "n": self.rng.random()})
        tok = f"{head}.{claims}.{self.alnum(43)}"
        planted.append(Planted("token", tok, also=(tok.rsplit(".", 1)[1],)))
        return tok

    def basic(self, planted: list[Planted], user: str) -> str:
        secret = self.hex(32)  # a Twilio auth token: 32 hex, exactly like an id, so only its context gives it away
        creds = base64.b64encode(f"{user}:{secret}".encode()).decode()
        planted.append(Planted("token", creds, also=(secret,)))
        return creds

    def marker(self, planted: list[Planted]) -> str:
        """A marker word unique to this case (`zebracorn-s1n017`), used in one case's content only."""
        m = f"{MARKERS[self.n % len(MARKERS)]}-s{self.seed}n{self.n:03d}"
        self.n += 1
        planted.append(Planted("marker", m))
        return m


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


def _q(form: dict[str, str]) -> str:
    """A query string exactly as a browser or Twilio encodes it (`+` for space, `%2B` for `+`)."""
    return urllib.parse.urlencode(form)


def _patter_child(call_id: str, name: str = "getpatter.stt", **attrs: Any) -> SpanSpec:
    return SpanSpec(name, attrs={"patter.call.id": call_id, "patter.side": "uut", **attrs})


# -- categories --------------------------------------------------------------------------------------
def twilio_webhook(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid, acct = b.call_sid(), b.account_sid()
    caller = b.spelled(pl, style="e164", region=None if i % 4 else "BR")  # Twilio sends E.164
    agent = AGENT if i % 3 else b.spelled(pl, style="e164", region="GB")
    if agent == AGENT and not any(p.value == AGENT for p in pl):
        pl.append(Planted("phone", AGENT, digits=AGENT[2:], region="US"))
    route = ("/webhooks/twilio/voice", "/twilio/gather", "/twilio/status", "/incoming-call")[i % 4]
    form = {"AccountSid": acct, "ApiVersion": "2010-04-01", "CallSid": sid, "CallStatus": "ringing",
            "Called": agent, "Caller": caller, "Direction": "inbound", "From": caller, "To": agent,
            "CallerCountry": "GB", "FromCity": "LONDON"}
    keep = [Keep("traces", "http.route", route)]
    if route == "/twilio/gather":
        word = b.marker(pl)
        form["SpeechResult"] = f"my number is {b.spelled(pl, style='national')} and the code word is {word}"
        form["Confidence"] = "0.91"
    if i % 5 == 2:
        form["Digits"] = b.card(pl, sep="")  # a card keyed in over DTMF
    if i % 7 == 3:
        form["CallbackEmail"] = b.email(pl)
    query = _q(form)
    host = "agent.example.com"
    method = "GET" if i % 2 else "POST"
    attrs: dict[str, Any]
    if i % 4 == 3:  # pre-1.23 HTTP semantic conventions (still the default of many instrumentations)
        attrs = {"http.method": method, "http.scheme": "https", "http.host": host,
                 "http.url": f"https://{host}{route}?{query}", "http.target": f"{route}?{query}",
                 "http.route": route, "http.status_code": 200, "http.flavor": "1.1",
                 "http.user_agent": "TwilioProxy/1.1", "net.peer.ip": "54.172.60.3", "net.host.port": 443}
        keep += [Keep("traces", "http.url", f"CallSid={sid}"), Keep("traces", "http.target", f"AccountSid={acct}")]
    else:
        attrs = {"http.request.method": method, "url.scheme": "https", "url.path": route, "url.query": query,
                 "url.full": f"https://{host}{route}?{query}", "http.route": route,
                 "http.response.status_code": 200, "network.protocol.version": "1.1", "server.address": host,
                 "server.port": 443, "client.address": "54.172.60.3", "user_agent.original": "TwilioProxy/1.1"}
        keep += [Keep("traces", "url.query", f"CallSid={sid}"), Keep("traces", "url.full", f"AccountSid={acct}")]
    # captured request headers (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST)
    attrs["http.request.header.x_twilio_signature"] = [b.alnum(27) + "="]
    attrs["http.request.header.authorization"] = ["Basic " + b.basic(pl, acct)]
    if i % 2 == 0:
        attrs["http.request.header.cookie"] = [f"session={b.alnum(24)}; email={urllib.parse.quote(b.email(pl))}"]
    # form fields the app copied onto the span, under the names apps use
    prefix = ("twilio.", "http.request.form.", "", "app.twilio.")[i % 4]
    for k in ("From", "To", "Caller") if i % 2 else ("From", "SpeechResult", "CallSid"):
        if k in form:
            attrs[prefix + k] = form[k]
    children = [
        SpanSpec(f"{method} {route} http receive", attrs={"asgi.event.type": "http.request"}),
        _patter_child(sid, "getpatter.call", **{"patter.direction": "inbound", "patter.telephony": "twilio"}),
        SpanSpec(f"{method} {route} http send", attrs={"asgi.event.type": "http.response.start",
                                                        "http.response.status_code": 200}),
    ]
    if i % 6 == 5:  # the media stream: a websocket route with the CallSid in its path
        children.append(SpanSpec("WS /ws/stream/{call_id}", kind="server",
                                 attrs={"url.path": f"/ws/stream/{sid}", "url.scheme": "wss",
                                        "http.route": "/ws/stream/{call_id}",
                                        "url.query": _q({"from": caller, "token": b.token(pl, "openai")})}))
        keep.append(Keep("traces", "url.path", f"/ws/stream/{sid}"))
    name = f"{method} {route}"
    if i % 8 == 7:  # no route matched: older ASGI instrumentations name the span after the raw path
        path = f"/calls/{urllib.parse.quote(b.spelled(pl, style='e164'))}/status"
        name = f"{method} {path}"
        attrs["url.path"] = path
    root = SpanSpec(name, kind="server", attrs=attrs, children=children)
    return Case("twilio_webhook", f"twilio_webhook/{b.seed}/{i}", sid, pl, keep, [root])


def openai(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid = b.call_sid()
    model = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")[i % 3]
    resp_id = "chatcmpl-" + b.alnum(29)
    word = b.marker(pl)
    phone, email = b.spelled(pl), b.email(pl)
    system = f"You are the front desk of Acme Dental. Escalations go to {b.spelled(pl)}. Secret word: {word}."
    user = f"Hi, this is about my appointment, call me on {phone} or mail {email}. {word}"
    answer = f"Of course! I'll text {phone} the new time, {word}."
    tool_args = json.dumps({"phone": phone, "email": email, "card": b.card(pl), "note": word})
    attrs: dict[str, Any] = {
        "gen_ai.system": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
        "gen_ai.response.model": model + "-2024-07-18", "gen_ai.response.id": resp_id,
        "gen_ai.usage.input_tokens": 812 + i, "gen_ai.usage.output_tokens": 64, "server.address": "api.openai.com",
        "gen_ai.response.finish_reasons": ["tool_calls" if i % 2 else "stop"], "gen_ai.request.temperature": 0.2,
    }
    if i % 2 == 0:  # OpenLLMetry (opentelemetry-instrumentation-openai), content capture on
        attrs.update({
            "llm.request.type": "chat", "llm.user": email, "llm.is_streaming": True,
            "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": system,
            "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": user,
            "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": answer,
            "gen_ai.completion.0.finish_reason": "tool_calls",
            "gen_ai.completion.0.tool_calls.0.name": "send_sms",
            "gen_ai.completion.0.tool_calls.0.arguments": tool_args,
            "llm.request.functions.0.name": "send_sms",
            "llm.request.functions.0.parameters": json.dumps({"type": "object", "example": phone}),
        })
    else:  # semconv >= 1.37 content attributes (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)
        attrs.update({
            "gen_ai.provider.name": "openai",
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": user}]}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "finish_reason": "stop",
                                                   "parts": [{"type": "text", "content": answer}]}]),
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": system}]),
            "gen_ai.openai.request.user": email,
        })
    events = []
    if i % 3 == 0:  # the event-based content capture of older instrumentations
        events = [("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "user", "content": user}])}),
                  ("gen_ai.content.completion", {"gen_ai.completion": answer})]
    chat = SpanSpec(f"chat {model}" if i % 2 else "openai.chat", kind="client", attrs=attrs, events=events,
                    children=[SpanSpec("POST", kind="client", attrs={
                        "http.request.method": "POST", "url.full": "https://api.openai.com/v1/chat/completions",
                        "server.address": "api.openai.com", "http.response.status_code": 200})])
    tool = SpanSpec("execute_tool send_sms", attrs={
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "send_sms",
        "gen_ai.tool.call.id": "call_" + b.alnum(24), "gen_ai.tool.call.arguments": tool_args,
        "gen_ai.tool.call.result": json.dumps({"sent_to": phone, "status": "queued"})})
    root = _patter_child(sid, "getpatter.llm", **{"patter.llm.provider": "openai", "patter.llm.model": model,
                                                  "patter.cost.llm_input_tokens": 812 + i,
                                                  "patter.cost.llm_output_tokens": 64})
    root.children = [chat, tool]
    keep = [Keep("traces", "gen_ai.response.id", resp_id), Keep("traces", "patter.call.id", sid)]
    return Case("openai", f"openai/{b.seed}/{i}", sid, pl, keep, [root])


def anthropic(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid = b.call_sid()
    model = ("claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514")[i % 3]
    msg_id = "msg_01" + b.alnum(22)
    word = b.marker(pl)
    phone, email = b.spelled(pl), b.email(pl)
    user = f"Transcript so far: caller gave {phone}, email {email}, and said '{word}'."
    answer = f"Thanks. I have {phone} on file. {word}"
    if i % 2 == 0:  # OpenLLMetry's opentelemetry-instrumentation-anthropic
        attrs: dict[str, Any] = {
            "gen_ai.system": "Anthropic", "llm.request.type": "chat", "gen_ai.request.model": model,
            "gen_ai.response.model": model, "gen_ai.response.id": msg_id, "gen_ai.usage.input_tokens": 1200 + i,
            "gen_ai.usage.output_tokens": 88, "llm.usage.total_tokens": 1288 + i, "gen_ai.request.max_tokens": 1024,
            "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": f"Agent for {b.email(pl)}; {word}",
            "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": user,
            "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": answer,
            "gen_ai.completion.0.tool_calls.0.name": "lookup_customer",
            "gen_ai.completion.0.tool_calls.0.arguments": json.dumps({"phone": phone}),
            "traceloop.entity.input": json.dumps({"messages": [{"role": "user", "content": user}]}),
            "traceloop.entity.output": json.dumps({"content": answer}),
        }
        name = "anthropic.chat"
    else:
        attrs = {
            "gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
            "gen_ai.response.id": msg_id, "gen_ai.usage.input_tokens": 1200 + i, "gen_ai.usage.output_tokens": 88,
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": f"You serve {email}. {word}"}]),
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": user}]}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                {"type": "text", "content": answer},
                {"type": "tool_call", "name": "lookup_customer", "arguments": {"phone": phone}}]}]),
        }
        name = f"chat {model}"
    chat = SpanSpec(name, kind="client", attrs=attrs)
    root = _patter_child(sid, "getpatter.llm", **{"patter.llm.provider": "anthropic", "patter.llm.model": model})
    root.children = [chat]
    return Case("anthropic", f"anthropic/{b.seed}/{i}", sid, pl,
                [Keep("traces", "gen_ai.response.id", msg_id)], [root])


def httpx_client(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid, acct = b.call_sid(), b.account_sid()
    keep: list[Keep] = []
    kind = i % 8
    method = "GET"
    if kind == 0:  # CRM lookup by phone and email
        url = ("https://crm.example.com/api/v2/contacts/search?"
               + _q({"phone": b.spelled(pl), "email": b.email(pl), "api_key": b.alnum(32)}))
        pl.append(Planted("token", url.rsplit("api_key=", 1)[1]))
    elif kind == 1:  # Twilio REST: the call resource, ids in the path, a number in the query
        method = "POST"
        url = (f"https://api.twilio.com/2010-04-01/Accounts/{acct}/Calls/{sid}.json?"
               + _q({"To": b.spelled(pl, style="e164")}))
        keep.append(Keep("traces", "url.full", f"/Accounts/{acct}/Calls/{sid}.json"))
    elif kind == 2:  # Twilio Lookup: the number is in the path
        p = b.phone()
        pl.append(Planted("phone", p.e164, digits=p.nsn, region=p.region))
        url = f"https://lookups.twilio.com/v2/PhoneNumbers/{urllib.parse.quote(p.e164)}?Fields=line_type_intelligence"
    elif kind == 3:  # credentials in the URL
        url = f"https://{acct}:{b.hex(32)}@api.twilio.com/2010-04-01/Accounts/{acct}/Messages.json"
        pl.append(Planted("token", url.split(":", 2)[2].split("@", 1)[0]))
    elif kind == 4:  # a form a user filled in: spaces as `+`
        url = ("https://forms.example.com/callback-request?"
               + _q({"name": "Jane Doe", "phone": b.spelled(pl, style="intl"), "email": b.email(pl),
                     "card": b.card(pl, sep=" ")}))
    elif kind == 5:  # Google Maps, key in the query
        url = "https://maps.googleapis.com/maps/api/geocode/json?" + _q({"address": "10 Downing St",
                                                                        "key": b.token(pl, "google")})
    elif kind == 6:  # a webhook with an access token and a session uuid in the path
        session = b.uuid()
        url = (f"https://hooks.example.com/v1/sessions/{session}/notify?"
               + _q({"access_token": b.token(pl, "openai"), "to": b.spelled(pl)}))
        keep.append(Keep("traces", "url.full", f"/v1/sessions/{session}/notify"))
    else:  # SMS provider: the number in the path, the message in the query
        sig = b.alnum(28)
        pl.append(Planted("token", sig))
        url = (f"https://api.sms.example.net/v1/send/{urllib.parse.quote(b.spelled(pl, style='e164'))}?"
               + _q({"sig": sig, "ts": b.iso()}))
    if i % 3 == 0:  # the old semantic conventions
        attrs: dict[str, Any] = {"http.method": method, "http.url": url, "http.status_code": 200 if i % 4 else 401,
                                 "net.peer.name": urllib.parse.urlsplit(url).hostname}
        name = f"HTTP {method}"
        keep = [Keep(k.signal, "http.url", k.value) for k in keep]
    else:
        attrs = {"http.request.method": method, "url.full": url, "server.address": urllib.parse.urlsplit(url).hostname,
                 "server.port": 443, "network.protocol.version": "1.1",
                 "http.response.status_code": 200 if i % 4 else 401}
        name = method
    attrs["http.request.header.authorization"] = ["Bearer " + b.jwt(pl)]
    root = _patter_child(sid, "getpatter.tool",
                         **{"patter.tool.name": "crm_lookup", "patter.tool.transport": "handler"})
    root.children = [SpanSpec(name, kind="client", attrs=attrs)]
    return Case("httpx", f"httpx/{b.seed}/{i}", sid, pl, keep, [root])


class TwilioRestException(Exception):
    pass


class HTTPStatusError(Exception):
    pass


class AuthenticationError(Exception):
    pass


def exception(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid = b.call_sid()
    ts = b.iso()
    kind = i % 6
    exc: BaseException
    if kind == 0:
        exc = ValueError(f"invalid callback number '{b.spelled(pl)}' given by caller {b.email(pl)} at {ts}")
    elif kind == 1:
        exc = TwilioRestException(f"HTTP 400 error: Unable to create record: The 'To' number {b.spelled(pl)} is not "
                                  f"a valid phone number. (call {sid} at {ts})")
    elif kind == 2:
        q = _q({"phone": b.spelled(pl), "api_key": b.token(pl, "openai")})
        exc = HTTPStatusError(f"Client error '401 Unauthorized' for url 'https://api.example.com/v1/lookup?{q}' "
                              f"at {ts}")
    elif kind == 3:
        exc = ValueError(f"could not parse tool arguments: {json.dumps({'phone': b.spelled(pl), 'card': b.card(pl)})}"
                         f" (call {sid}, {ts})")
    elif kind == 4:
        exc = AuthenticationError(f"Error code: 401 - {{'error': {{'message': 'Incorrect API key provided: "
                                  f"{b.token(pl, 'openai')}', 'type': 'invalid_request_error'}}}} at {ts}")
    else:
        exc = KeyError(f"no customer for {b.spelled(pl)} / {b.email(pl)} ({ts})")
    keep = [Keep("traces", "exception.message", ts)]
    if kind in (1, 3):
        keep.append(Keep("traces", "exception.message", sid))
    child = SpanSpec("getpatter.tool" if i % 2 else "POST /twilio/status", kind="internal" if i % 2 else "server",
                     attrs={"patter.tool.name": "transfer_call"} if i % 2 else {"http.route": "/twilio/status"},
                     exception=exc)
    root = _patter_child(sid, "getpatter.llm")
    root.children = [child]
    return Case("exception", f"exception/{b.seed}/{i}", sid, pl, keep, [root])


def span_event(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid = b.call_sid()
    ts = b.iso()
    word = b.marker(pl)
    events = [
        ("log", {"log.severity": "INFO", "log.message": f"caller {b.spelled(pl)} said: {word}",
                 "event": f"transcript: {word}"}),
        (f"SMS sent to {b.spelled(pl)} at {ts}", {"patter.turn.idx": i}),
        ("patter.event.user_speech_ended", {"patter.speech.duration_ms": 1200.0 + i, "text": word,
                                            "patter.stt.text": f"{word}, my card is {b.card(pl)}"}),
        (f"Callback scheduled for {b.email(pl)}", {"message": f"{word} {b.spelled(pl)}"}),
        ("message", {"message.type": "RECEIVED", "message.content": json.dumps({"text": word}), "message.id": 1}),
        ("user_input", {"input.value": word, "output.value": word, "patter.user.utterance_text": word}),
    ]
    lo = i % 3
    root = _patter_child(sid, "getpatter.stt", **{"getpatter.stt.text_len": 42})
    root.events = events[lo:lo + 4]
    keep = [Keep("traces", "event.name", ts)] if lo <= 1 else []
    # what was planted only in events this case left out does not count
    used = json.dumps(root.events, ensure_ascii=False)
    pl = [p for p in pl if p.value in used or p.kind == "marker"]
    return Case("span_event", f"span_event/{b.seed}/{i}", sid, pl, keep, [root])


def status(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid = b.call_sid()
    kind = i % 5
    if kind == 0:
        desc = f"payment declined for card {b.card(pl)} (caller {b.spelled(pl)}, call {sid})"
    elif kind == 1:
        desc = f"401 Unauthorized: Authorization: Bearer {b.jwt(pl)} rejected for call {sid}"
    elif kind == 2:
        desc = f"invalid api key {b.token(pl)} for {b.email(pl)} (call {sid})"
    elif kind == 3:
        desc = f"AWS credentials {b.token(pl, 'aws')} rejected; caller {b.spelled(pl)} (call {sid})"
    else:
        desc = f"transfer to {b.spelled(pl)} failed: busy (call {sid})"
    child = SpanSpec("getpatter.tool", attrs={"patter.tool.name": "charge_card"}, status=desc)
    root = _patter_child(sid, "getpatter.llm")
    root.children = [child]
    return Case("status", f"status/{b.seed}/{i}", sid, pl, [Keep("traces", "status", f"call {sid}")], [root])


def link(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid, other = b.call_sid(), b.call_sid()
    attrs = {"patter.transfer.to": b.spelled(pl), "patter.link.reason": f"warm transfer for {b.email(pl)}",
             "transfer.target": b.spelled(pl), "messaging.message.conversation_id": b.email(pl),
             "patter.call_id": other}
    child = SpanSpec("patter.transfer", attrs={"patter.call.id": sid}, link=attrs)
    root = _patter_child(sid, "getpatter.call")
    root.children = [child]
    return Case("link", f"link/{b.seed}/{i}", sid, pl, [Keep("traces", "link.patter.call_id", other, wal=False)],
                [root])


def log_case(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid = b.call_sid()
    ts = b.iso()
    word = b.marker(pl)
    kind = i % 5
    if kind == 0:
        logs = [LogSpec(msg="caller %s said: %s", args=(b.spelled(pl), f"I'd like to book, {word}"),
                        extra={"patter.call_id": sid, "caller.number": b.spelled(pl), "patter.caller": b.spelled(pl)})]
    elif kind == 1:
        logs = [LogSpec(level=logging.WARNING, msg=f"SMS to {b.spelled(pl)} failed: {word} ({b.email(pl)})",
                        extra={"patter.call_id": sid})]
    elif kind == 2:
        logs = [LogSpec(level=logging.ERROR, msg="tool call failed for %s: %s", args=(b.email(pl), word),
                        exception=ValueError(f"bad number {b.spelled(pl)} at {ts}"), extra={"patter.call_id": sid})]
    elif kind == 3:  # OpenAI v2 instrumentation: content as log events, body a map
        logs = [LogSpec(api=True, event_name="gen_ai.user.message",
                        body={"content": f"{word}: my number is {b.spelled(pl)}", "role": "user"},
                        extra={"gen_ai.system": "openai", "patter.call_id": sid}),
                LogSpec(api=True, event_name="gen_ai.choice",
                        body={"index": 0, "finish_reason": "stop",
                              "message": {"content": f"Texting {b.spelled(pl)} now. {word}"}},
                        extra={"gen_ai.system": "openai", "patter.call_id": sid})]
    else:  # a structured transcript line; the api key of a misconfigured client in an attribute
        logs = [LogSpec(api=True, event_name="patter.transcript", body=f"USER: {word} {b.card(pl)} {b.spelled(pl)}",
                        extra={"patter.call_id": sid, "patter.turn.idx": i, "openai.api_key": b.token(pl, "openai"),
                               "patter.note": f"reach me at {b.email(pl)} ({ts})"})]
    keep = [Keep("logs", "patter.call_id", sid)]
    if kind == 2:
        keep.append(Keep("logs", "exception.message", ts))
    if kind == 4:
        keep.append(Keep("logs", "patter.note", ts))
    root = _patter_child(sid, "getpatter.llm")
    root.logs = logs
    return Case("log", f"log/{b.seed}/{i}", sid, pl, keep, [root])


def metric(b: _Builder, i: int) -> Case:
    pl: list[Planted] = []
    sid = b.call_sid()
    kind = i % 4
    if kind == 0:
        specs = [MetricSpec("counter", "patter.calls.started", 1,
                            {"patter.caller": b.spelled(pl), "patter.call_id": sid, "tenant.id": b.email(pl),
                             "caller": b.spelled(pl)})]
    elif kind == 1:  # an un-templated route (404s have none): the path lands in the route label
        specs = [MetricSpec("histogram", "http.server.request.duration", 0.012 * (i + 1),
                            {"http.request.method": "GET", "http.route": f"/callback/{b.spelled(pl, style='e164')}",
                             "url.scheme": "https", "http.response.status_code": 404, "patter.call_id": sid},
                            unit="s")]
    elif kind == 2:
        specs = [MetricSpec("updown", "patter.sms.queue", 2,
                            {"sms.to": b.spelled(pl), "patter.agent.number": b.spelled(pl), "user.email": b.email(pl),
                             "patter.call_id": sid})]
    else:
        specs = [MetricSpec("gauge", "patter.callback.delay", 30.0 + i,
                            {"patter.callback.to": b.spelled(pl), "patter.callback.card": b.card(pl),
                             "patter.api_key": b.token(pl), "patter.call_id": sid})]
    return Case("metric", f"metric/{b.seed}/{i}", sid, pl, [Keep("metrics", "patter.call_id", sid)], metrics=specs)


BUILDERS: dict[str, Callable[[_Builder, int], Case]] = {
    "twilio_webhook": twilio_webhook, "openai": openai, "anthropic": anthropic, "httpx": httpx_client,
    "exception": exception, "span_event": span_event, "status": status, "link": link, "log": log_case,
    "metric": metric,
}


def resources(b: _Builder) -> tuple[list[dict[str, Any]], list[Case]]:
    """Resource variants (index 0 is clean) and one case per personal variant."""
    base = {"service.name": "patter-agent", "service.version": "1.4.2", "deployment.environment": "production",
            "service.instance.id": b.uuid()}
    out: list[dict[str, Any]] = [base]
    cases: list[Case] = []
    for k in range(6):
        pl: list[Planted] = []
        inst = b.uuid()
        r = {**base, "service.instance.id": inst}
        if k == 0:
            r.update({"enduser.id": b.email(pl), "host.name": "janes-macbook.local", "process.owner": "jane.doe",
                      "patter.agent.phone_number": b.spelled(pl)})
        elif k == 1:
            r.update({"process.command_line": f"python -m app --openai-key {b.token(pl, 'openai')} --from "
                                              f"{b.spelled(pl)}",
                      "process.command_args": ["python", "-m", "app", "--twilio-auth-token", b.hex(32),
                                               b.marker(pl)]})
        elif k == 2:
            r.update({"user.email": b.email(pl), "patter.agent.number": b.spelled(pl, style="rfc3966"),
                      "tenant.id": b.email(pl)})
        elif k == 3:
            r.update({"k8s.pod.annotation.owner": b.email(pl), "patter.operator.email": b.email(pl),
                      "patter.agent.did": b.spelled(pl), "container.image.name": "acme/agent"})
        elif k == 4:
            r.update({"tenant.id": f"acme-{b.spelled(pl, style='e164')}", "deployment.environment": "staging",
                      "patter.notes": f"owner {b.email(pl)} card {b.card(pl)}"})
        else:
            r.update({"process.environ.OPENAI_API_KEY": b.token(pl, "openai"),
                      "patter.sip.uri": b.spelled(pl, style="sip"), "patter.whatsapp": b.spelled(pl, style="whatsapp")})
        out.append(r)
        sid = b.call_sid()
        root = _patter_child(sid, "getpatter.call", **{"patter.telephony": "twilio"})
        keep = [Keep("traces", "resource.service.instance.id", inst)]
        cases.append(Case("resource", f"resource/{b.seed}/{k}", sid, pl, keep, [root], resource=k + 1))
    return out, cases


def build(seed: int) -> Corpus:
    b = _Builder(seed)
    res, res_cases = resources(b)
    cases = list(res_cases)
    for cat, n in PER_SEED.items():
        for i in range(n):
            c = BUILDERS[cat](b, i)
            c.resource = (i * 7 + len(cases)) % len(res)
            cases.append(c)
    return Corpus(seed, cases, res)


# -- emitting through the real SDK ---------------------------------------------------------------------
class Emitter:
    """One SDK 'process' per resource variant: TracerProvider, LoggerProvider and MeterProvider with the
    real OTLP exporters of `protocol` (`grpc` or `http`), BatchSpanProcessor / BatchLogRecordProcessor /
    PeriodicExportingMetricReader as apps configure them. `flush()` exports everything. Protocol `memory`:
    no exporter, only the in-memory copy (`sent()`)."""

    def __init__(self, protocol: str, endpoint: str, corpus: Corpus) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            BatchLogRecordProcessor,
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        def exporters() -> tuple[Any, Any, Any] | None:
            return None

        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            host = endpoint.split("://", 1)[-1]

            def exporters() -> tuple[Any, Any, Any] | None:
                return (OTLPSpanExporter(endpoint=host, insecure=True), OTLPLogExporter(endpoint=host, insecure=True),
                        OTLPMetricExporter(endpoint=host, insecure=True))
        elif protocol == "http":
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

            def exporters() -> tuple[Any, Any, Any] | None:
                return (HttpSpanExporter(endpoint=f"{endpoint}/v1/traces"),
                        HttpLogExporter(endpoint=f"{endpoint}/v1/logs"),
                        HttpMetricExporter(endpoint=f"{endpoint}/v1/metrics"))

        self.corpus = corpus
        self.protocol = protocol
        self.tracers: list[Any] = []
        self.providers: list[Any] = []
        self.handlers: list[logging.Handler] = []
        self.log_providers: list[Any] = []
        self.meters: list[Any] = []
        self.meter_providers: list[Any] = []
        self._instruments: dict[tuple[int, str], Any] = {}
        self._last_root: Any = None
        self.spans = self.log_records = self.points = 0
        # what the SDK exported, kept in memory too: the control that every planted value was really sent
        self.sent_spans = InMemorySpanExporter()
        self.sent_logs = InMemoryLogRecordExporter()
        self.sent_metrics: list[Any] = []
        for attrs in corpus.resources:
            resource = Resource.create(attrs)
            otlp = exporters()
            tp = TracerProvider(resource=resource)
            lp = LoggerProvider(resource=resource)
            reader = InMemoryMetricReader()
            readers: list[Any] = [reader]
            if otlp is not None:
                tp.add_span_processor(BatchSpanProcessor(otlp[0]))
                lp.add_log_record_processor(BatchLogRecordProcessor(otlp[1]))
                readers.append(PeriodicExportingMetricReader(otlp[2], export_interval_millis=3_600_000))
            tp.add_span_processor(SimpleSpanProcessor(self.sent_spans))
            lp.add_log_record_processor(SimpleLogRecordProcessor(self.sent_logs))
            self.sent_metrics.append(reader)
            mp = MeterProvider(resource=resource, metric_readers=readers)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from opentelemetry.sdk._logs import LoggingHandler

                handler = LoggingHandler(logger_provider=lp)
            self.providers.append(tp)
            self.tracers.append(tp.get_tracer("acme.voice.app", "1.4.2"))
            self.log_providers.append(lp)
            self.handlers.append(handler)
            self.meter_providers.append(mp)
            self.meters.append(mp.get_meter("acme.voice.app", "1.4.2"))
        self._loggers = [self._py_logger(k, h) for k, h in enumerate(self.handlers)]

    def _py_logger(self, k: int, handler: logging.Handler) -> logging.Logger:
        lg = logging.getLogger(f"acme.voice.{self.protocol}.{self.corpus.seed}.{k}")
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
        return lg

    def emit(self) -> None:
        for case in self.corpus.cases:
            for spec in case.spans:
                ctx = self._span(case, spec, root=True)
                self._last_root = ctx
            for m in case.metrics:
                self._metric(case.resource, m)

    def _span(self, case: Case, spec: SpanSpec, root: bool = False) -> Any:
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        kinds = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
        tracer = self.tracers[case.resource]
        links = [Link(self._last_root, spec.link)] if spec.link is not None and self._last_root is not None else []
        ctx = None
        try:
            with tracer.start_as_current_span(spec.name, kind=kinds[spec.kind], attributes=spec.attrs,
                                              links=links) as span:
                ctx = span.get_span_context()
                self.spans += 1
                case.trace_ids.add(f"{ctx.trace_id:032x}")
                case.span_ids.add((f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"))
                for name, attrs in spec.events:
                    span.add_event(name, attrs)
                for child in spec.children:
                    self._span(case, child)
                for log in spec.logs:
                    self._log(case.resource, log)
                if spec.status is not None:
                    span.set_status(Status(StatusCode.ERROR, spec.status))
                if spec.exception is not None:
                    raise spec.exception
        except Exception as e:
            if e is not spec.exception:
                raise
        return ctx

    def _log(self, k: int, spec: LogSpec) -> None:
        self.log_records += 1
        if spec.api:
            logger = self.log_providers[k].get_logger("acme.voice.genai")
            logger.emit(body=spec.body, attributes=spec.extra, event_name=spec.event_name,
                        severity_text="INFO")
            return
        lg = self._loggers[k]
        if spec.exception is not None:
            try:
                raise spec.exception
            except Exception:
                lg.exception(spec.msg, *spec.args, extra=spec.extra)
            return
        lg.log(spec.level, spec.msg, *spec.args, extra=spec.extra)

    def _metric(self, k: int, spec: MetricSpec) -> None:
        key = (k, spec.name)
        inst = self._instruments.get(key)
        meter = self.meters[k]
        if inst is None:
            make = {"counter": meter.create_counter, "histogram": meter.create_histogram,
                    "updown": meter.create_up_down_counter, "gauge": meter.create_gauge}[spec.instrument]
            inst = self._instruments[key] = make(spec.name, unit=spec.unit)
        if spec.instrument in ("counter", "updown"):
            inst.add(spec.value, spec.attrs)
        elif spec.instrument == "histogram":
            inst.record(spec.value, spec.attrs)
        else:
            inst.set(spec.value, spec.attrs)
        self.points += 1

    def sent(self) -> list[Any]:
        """The OTLP requests (protobuf messages) of everything the SDK exported, as its exporters encode them."""
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        out = [encode_spans(self.sent_spans.get_finished_spans()), encode_logs(self.sent_logs.get_finished_logs())]
        for reader in self.sent_metrics:
            data = reader.get_metrics_data()
            if data is not None:
                out.append(encode_metrics(data))
        return out

    def flush(self) -> None:
        for p in self.providers + self.log_providers + self.meter_providers:
            assert p.force_flush(30_000) is not False, "the OTLP exporter did not flush"

    def shutdown(self) -> None:
        for lg in self._loggers:
            lg.handlers[:] = []
        for p in self.providers + self.log_providers + self.meter_providers:
            p.shutdown()
