"""PII hygiene (DESIGN.md "PII hygiene"): drop content keys, scrub personal data out of kept values.

Two layers, applied to every OTLP signal before anything is written or forwarded:

- **Keys**: deny by default. A key survives only when it is on the allowlist (all `getpatter.*`,
  the SDK's `patter.*`, a short list of safe semantic-convention keys, plus `pii.allow_keys`) and
  is not a content key (prompts, completions, messages, transcripts, `*.text`, tool arguments and
  results, bodies, headers, `db.statement`, credentials). Content keys are dropped whatever the
  allowlist says; `pii.deny_keys` drops more. Decisions are cached per key.
- **Values**: every kept string (attribute values, strings inside arrays and maps, span and event
  names, status messages, log strings, metric labels) is scrubbed of phone numbers in any common
  format (also percent-encoded, in URLs, in JSON inside strings), emails, payment cards (Luhn),
  API keys and bearer tokens, and optionally IP addresses. Ids survive: trace/span ids, provider
  ids such as Twilio `CA`+32-hex call SIDs, UUIDs, ISO-8601 timestamps, plain numbers. The call-id
  keys (`patter.call_id`, `patter.call.id`, `getpatter.call.id`) are never scrubbed.

Why not `phonenumbers.PhoneNumberMatcher` over the whole text: with `Leniency.VALID` it misses the
fictional `+1 555` numbers every test and demo uses; with `Leniency.POSSIBLE` it matches digit runs
inside hex ids (`CA0123456789abcdef...` -> `0123456789`) and bare unix timestamps. So a precompiled
candidate pattern (digits with separators, bounded by non-alphanumerics) finds the candidates and
`phonenumbers.parse` judges each: international `+`/`00`/`011` numbers and NANP numbers must be
*possible*, other national formats *valid* and written with their trunk prefix, bare digit runs
NANP-shaped (`[2-9]` + 9 digits) or trunk-prefixed and valid. A candidate holding several numbers
in a row (`5551234567 5557654321`) is cut at whitespace into the longest numbers that parse.
Dates, times, decimals, dotted quads and version strings are not numbers.

Replacements: phone -> `***` + last 4 digits (`mask`) or `hmac:` + 16 hex of HMAC-SHA256(key,
E.164 digits) (`hash_only`, never unkeyed); email `<email>`, card `<card>`, token `<token>`, ip
`<ip>`; the value of a query parameter that carries content (Twilio's `SpeechResult`, SMS `Body`,
`text`, `transcript`, ...) `<content>`. Scrubbing is idempotent. Every redaction is counted in `counts`
by rule (`key_dropped`, `content`, `phone`, `email`, `card`, `token`, `ip`); a changed span gets
`otel_patter.redacted_count`.
Raw values are never logged.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import ipaddress
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import phonenumbers
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_patter.component import Stage
from otel_patter.config import PiiConfig

if TYPE_CHECKING:
    from otel_patter.component import TraceBatch

REDACTED_COUNT_KEY = "otel_patter.redacted_count"
RULES = ("key_dropped", "content", "phone", "email", "card", "token", "ip")
PHONE_MODES = ("mask", "hash_only")

# key decisions
_DROP, _SCRUB, _RAW, _IDKEY = 0, 1, 2, 3
_KEY_CACHE_MAX = 10_000  # keys can be attacker-chosen (`x.0.y`, `x.1.y`, ...): bound the cache
_PLAN_CACHE_MAX = 1024  # attribute key sets whose `_flat_clean` plan is kept (bounded as the key cache)
_NO_PLAN: Any = object()  # not in the plan cache (None there means: a key of the set is dropped)
_CLEAN_CACHE_MAX = 8192  # bounded like the key cache: values can be attacker-chosen too
_CLEAN_MAX_LEN = 256
_MAX_PASSES = 4  # every pass that changes something removes digits or secrets; 2 suffice in practice

# -- key policy ------------------------------------------------------------------------------------
# Exact keys or `*` globs. Allowed keys are kept (values scrubbed); everything else is dropped.
ALLOW_KEYS: tuple[str, ...] = (
    "getpatter.*", "patter.*", "otel_patter.*",
    "service.*", "telemetry.sdk.*", "telemetry.distro.*", "telemetry.auto.version",
    "deployment.environment", "deployment.environment.*", "process.runtime.*",
    "http.response.status_code", "http.request.method", "http.route",
    "http.status_code", "http.method", "http.scheme", "http.url", "http.target",  # pre-1.23 HTTP semconv
    "url.scheme", "url.path", "url.full", "url.query", "server.port",
    "network.protocol.name", "network.protocol.version", "network.transport",
    "rpc.system", "rpc.method", "rpc.service", "rpc.grpc.status_code",
    "gen_ai.usage.*", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.provider.name",
    "gen_ai.system", "gen_ai.operation.name", "gen_ai.token.type", "gen_ai.response.id",
    "gen_ai.response.finish_reasons", "gen_ai.request.max_tokens", "gen_ai.request.temperature",
    "gen_ai.request.top_p",
    "error.type", "exception.type", "exception.message", "exception.escaped",
    "otel.*", "otelSpanID", "otelTraceID", "otelTraceSampled", "otelServiceName",
    "event.name", "code.function", "code.function.name", "code.lineno", "code.line.number", "code.namespace",
    "test.run_id", "tenant.id",
)
# Content and credential keys: dropped even when allowed (by us or by `pii.allow_keys`).
DENY_KEYS: tuple[str, ...] = (
    "gen_ai.prompt*", "gen_ai.completion*", "gen_ai.input.messages*", "gen_ai.output.messages*",
    "gen_ai.system_instructions*", "gen_ai.tool.call.*", "gen_ai.tool.definitions*", "gen_ai.retrieval.*",
    "text", "*.text", "*_text", "*transcript*",
    "*.arguments", "*.args", "*.argv", "*.result", "*.results",
    "*body*", "http.request.header.*", "http.response.header.*", "*.headers", "*.header",
    "rpc.*.metadata.*", "rpc.*metadata*",
    "db.statement", "db.query.*",
    "*.prompt", "*.prompts", "*.prompt_template.*", "*.message", "*.messages", "*.input_messages*",
    "*.output_messages*", "*.content", "*.contents", "input.value", "output.value",
    "*password*", "*passwd*", "*secret*", "*api_key*", "*apikey*", "*authorization*", "*cookie*",
    "*credential*", "*stacktrace*", "enduser.*", "user.*", "*email*",
)
# Allowed keys a deny glob would catch but that carry no content (their values are scrubbed).
_DENY_EXCEPTIONS = frozenset({"exception.message"})
# Ids: never scrubbed (DESIGN "Call identity": a call id is an id, only validated).
CALL_ID_KEYS = frozenset({"patter.call_id", "patter.call.id", "getpatter.call.id"})
_ID_KEY = re.compile(r"(?:[._]id|ID)$")
_ID_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-:./]{0,127}")


def _glob_regex(patterns: Iterable[str], *, ignore_case: bool) -> re.Pattern[str] | None:
    parts = ["".join(".*" if c == "*" else re.escape(c) for c in p) for p in patterns if p]
    if not parts:
        return None
    return re.compile("(?:" + "|".join(parts) + ")", re.IGNORECASE if ignore_case else 0)


_ALLOW_RE = _glob_regex(ALLOW_KEYS, ignore_case=False)
_DENY_RE = _glob_regex(DENY_KEYS, ignore_case=True)

# -- value patterns --------------------------------------------------------------------------------
# Query parameters that carry what a person said or wrote (Twilio's speech and SMS webhooks put the
# transcript and the message in the URL): their values go, like content keys.
_CONTENT_PARAMS = (r"(?i:(?:unstable)?speechresult|transcriptiontext|transcript|body|text|message|prompt|content"
                   r"|utterance)")
# A cheap pre-check: strings without any of these skip every heavier rule. Seven digits with at most
# three non-alphanumerics between neighbours (phones, cards), `@`, percent- and JSON `\uXXXX` escapes,
# content query parameters, token prefixes, credential-looking `name=` / `"name":`, and 32-character
# runs (high-entropy tokens).
_PRECHECK_SRC = (
    r"\d(?:[^\dA-Za-z]{0,3}\d){6}|@|%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}"
    rf"|(?<![^?&;]){_CONTENT_PARAMS}="
    r"|sk[-_]|[rp]k_|xox|AKIA|ASIA|gh[pousr]_|github_pat_|glpat-|AIza|eyJ|(?i:bearer|basic)\s"
    r"|(?i:key|token|secret|passw|pwd|sig|signature|credential|authorization)[\"']?\s*[=:]"
    r"|[A-Za-z0-9_\-]{32}"
)
_PRECHECK = re.compile(_PRECHECK_SRC)
_PRECHECK_IP = re.compile(_PRECHECK_SRC + r"|\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]*:")

_SEP = r"[ \t\u00a0\u2009\u202f.\-\u2010-\u2015/()]"
_B = r"(?<![A-Za-z0-9])"  # left word boundary (digits and letters only: `_`, `=`, `:` are boundaries)
_E = r"(?![A-Za-z0-9])"
_IPV4 = r"(?<![\d.])(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}(?![\d.])"
_KEEP = (  # ids and our own replacements: consumed first so no other rule sees them
    r"\*\*\*\d{4}(?!\d)|hmac:[0-9a-f]{16}(?![A-Za-z0-9])"
    r"|(?<!\d)\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
    r"|(?<![\d:])\d{2}:\d{2}:\d{2}(?:[.,]\d+)?"
    rf"|{_B}[0-9A-Fa-f]{{8}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{12}}{_E}"
    rf"|{_B}[A-Z]{{2}}[0-9a-f]{{32}}{_E}"  # Twilio CallSid CA.., AccountSid AC.., MZ.., RE.., ...
    rf"|{_B}(?=[0-9]*[A-Fa-f])[0-9A-Fa-f]{{16,64}}{_E}"  # trace/span ids, hashes (at least one letter)
    rf"|{_B}[0-9A-HJKMNP-TV-Z]{{26}}{_E}"  # ULID
)
_CRED = (  # credential-looking query parameters and JSON members: the value goes
    r"(?i:(?<![A-Za-z0-9_])(?:api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token"
    r"|auth[_-]?token|token|secret|client[_-]?secret|password|passwd|pwd|sig|signature|x-amz-signature"
    r"|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|awsaccesskeyid|key)"
    r"(?:=(?!<token>)[^&\s#\"',;<]+|[\"']\s*:\s*\"(?!<token>\")[^\"\\]+\"))"
)
_USERINFO = r"(?<=://)(?!<token>@)[^/@\s:]+:[^/@\s]+@"
_TOKEN = (
    rf"{_B}(?:sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-|admin-)?[A-Za-z0-9_\-]{{16,}}"
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{10,}|pk_live_[A-Za-z0-9]{10,}|sk_[A-Za-z0-9]{24,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_\-]{20,}|AIza[0-9A-Za-z_\-]{35}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})"
    # and the rest of its word: a fixed-length or prefix-bounded token glued to more (another token back to back)
    # would leave that part in clear text, its start hidden from every pattern's left boundary
    r"(?:[A-Za-z0-9_\-]|\.(?=[A-Za-z0-9_\-]))*"
)
_BEARER = r"(?i:(?<![A-Za-z0-9])(?:bearer|basic)\s+)(?!<token>)[A-Za-z0-9._~+/\-]{8,}=*"
_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
# digits with separators: phones and cards (the `\\n` branch finds numbers after JSON escapes)
# between two digits: up to three separators, or a `+` (a space in form encoding: `%2B44+20+7946+0958`)
_GAP = rf"(?:{_SEP}{{0,3}}|\)?\+{_SEP}?)"
_NUM = rf"(?:{_B}|(?<=\\[nrt]))(?:\+|\(\+?)?\d(?:{_GAP}\d){{6,22}}{_E}"
_CONTENT = rf"(?<![^?&;]){_CONTENT_PARAMS}=(?!<content>)[^&#\"'<>\r\n]+"
_RUN = r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{32,}={0,2}(?![A-Za-z0-9_\-=])"
_IPV6 = r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])"


def _master(redact_ip: bool) -> re.Pattern[str]:
    alts = [f"(?P<userinfo>{_USERINFO})", f"(?P<content>{_CONTENT})", f"(?P<keep>{_KEEP})"]
    alts.append(f"(?P<ip>{_IPV4})" if redact_ip else f"(?P<keepip>{_IPV4})")
    alts += [f"(?P<cred>{_CRED})", f"(?P<token>{_TOKEN})",
             f"(?P<bearer>{_BEARER})", f"(?P<num>{_NUM})", f"(?P<email>{_EMAIL})"]
    if redact_ip:
        alts.append(f"(?P<ip6>{_IPV6})")
    alts.append(f"(?P<run>{_RUN})")
    return re.compile("|".join(alts))


_MASTER = _master(False)
_MASTER_IP = _master(True)
_PCT = re.compile(r"%([0-7][0-9A-Fa-f])|((?:%[C-Fc-f][0-9A-Fa-f])(?:%[89ABab][0-9A-Fa-f]){1,3})|\\u([0-9A-Fa-f]{4})")
_NON_DIGIT = re.compile(r"\D")
_DECIMAL = re.compile(r"\d+[.,]\d+")
_DATE = re.compile(r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}[./-]\d{1,2}[./-]\d{1,2}")
_CARD_SHAPE = re.compile(r"\d(?:[ \-+]?\d)*")
_GROUP_SPLIT = re.compile(rf"{_SEP}+")
_WS_GROUP = re.compile(r"[^\s]+")
_PLUS_GAP = re.compile(r"(?<=[\d)])\+")  # `+` after a digit or `)`: a form-encoded space, never a country prefix
_ODD_SPACES = str.maketrans({"\t": " ", "\u2009": " ", "\u202f": " "})  # separators phonenumbers rejects
_NANP_BARE = re.compile(r"1?[2-9]\d{9}")
_US_LOCAL = re.compile(r"\d{3}[-. ]\d{4}")
_CRED_SPLIT = re.compile(r"=|[\"']\s*:\s*\"")
_BEARER_SPLIT = re.compile(r"\s+")

PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "IT", "ES", "IN", "NL", "BR", "AU", "MX")
_NANP = frozenset({"US", "CA"})
_TRUNK = {r: getattr(phonenumbers.PhoneMetadata.metadata_for_region(r), "national_prefix", None)
          for r in PHONE_REGIONS}
_E164 = phonenumbers.PhoneNumberFormat.E164
_NATIONAL = phonenumbers.PhoneNumberFormat.NATIONAL


def _writes_national_without_trunk(region: str) -> bool:
    """Whether `region`'s national format leaves its trunk prefix out (BR: `(11) 91234-5678`, dialled 0 11 ...)."""
    examples = (phonenumbers.example_number_for_type(region, t)
                for t in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE))
    return any(e is not None and not _NON_DIGIT.sub("", phonenumbers.format_number(e, _NATIONAL)).startswith("0")
               for e in examples)


_NO_TRUNK_NATIONAL = frozenset(r for r in PHONE_REGIONS
                               if r not in _NANP and _TRUNK[r] == "0" and _writes_national_without_trunk(r))


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def _e164(num: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(num, _E164)


def phone_e164(candidate: str) -> str | None:
    """E.164 (`+15551234567`) when `candidate` (digits with separators, no other text) is a phone number."""
    candidate = _PLUS_GAP.sub(" ", candidate.translate(_ODD_SPACES))
    digits = _NON_DIGIT.sub("", candidate)
    if not 7 <= len(digits) <= 17:
        return None
    head = candidate.lstrip("( ")
    if head.startswith("+"):
        num = _parse(candidate, None)
        return _e164(num) if num is not None and phonenumbers.is_possible_number(num) else None
    if digits.startswith(("00", "011")):  # international call prefix
        num = _parse(candidate, "US" if digits.startswith("011") else "GB")
        return _e164(num) if num is not None and phonenumbers.is_possible_number(num) else None
    if digits == candidate:  # a bare digit run: only NANP-shaped or trunk-prefixed valid numbers
        if _NANP_BARE.fullmatch(digits):
            num = _parse(digits, "US")
            return _e164(num) if num is not None else None
        if digits[0] == "0":
            for region in PHONE_REGIONS:
                if region in _NANP or _TRUNK[region] != "0":
                    continue
                num = _parse(digits, region)
                if num is not None and phonenumbers.is_valid_number(num):
                    return _e164(num)
        return None
    if _DECIMAL.fullmatch(candidate) or _DATE.fullmatch(candidate):
        return None
    groups = [g for g in _GROUP_SPLIT.split(candidate) if g]
    if sum(1 for g in groups if len(g) == 1) > 1 or len(groups) > 6:
        return None  # "1 2 3 4 5 6 7" is a list, not a number
    for region in PHONE_REGIONS:
        num = _parse(candidate, region)
        if num is None:
            continue
        if region in _NANP:
            if len(digits) == 7 and not _US_LOCAL.fullmatch(candidate):
                continue
            if phonenumbers.is_possible_number(num):
                return _e164(num)
        elif _TRUNK[region] != "0" or digits[0] == "0":
            if phonenumbers.is_valid_number(num):
                return _e164(num)  # national formats other than NANP are written with their trunk prefix ...
        elif region in _NO_TRUNK_NATIONAL and phonenumbers.is_valid_number(num) and _national_groups(num) == groups:
            return _e164(num)  # ... or grouped exactly as the region writes them without it: BR (11) 91234-5678
    return None


def _national_groups(num: phonenumbers.PhoneNumber) -> list[str]:
    return [g for g in _GROUP_SPLIT.split(phonenumbers.format_number(num, _NATIONAL)) if g]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card(candidate: str, digits: str) -> bool:
    return (13 <= len(digits) <= 19 and digits[0] in "23456" and _CARD_SHAPE.fullmatch(candidate) is not None
            and _luhn(digits))


def _looks_secret(run: str) -> bool:
    """A 32+ character run that is a random token: all three classes, class changes every ~3 chars."""
    core = run.rstrip("=")
    if len(core) < 32:
        return False
    has_upper = has_lower = has_digit = False
    changes = 0
    prev = -1
    for ch in core:
        if ch.isdigit():
            cls, has_digit = 0, True
        elif ch.isupper():
            cls, has_upper = 1, True
        elif ch.islower():
            cls, has_lower = 2, True
        else:
            cls = 3
        if prev != -1 and cls != prev:
            changes += 1
        prev = cls
    return has_upper and has_lower and has_digit and changes >= len(core) * 0.3


def _percent_decode(s: str) -> tuple[str, list[int], list[int]] | None:
    """`%XX` escapes (ASCII and UTF-8 sequences: `%C2%A0`) and JSON `\\uXXXX` escapes decoded, plus breakpoints
    mapping decoded offsets back to `s` (see `_orig`)."""
    parts: list[str] = []
    dpos = [0]
    opos = [0]
    d = pos = 0
    for m in _PCT.finditer(s):
        start = m.start()
        parts.append(s[pos:start])
        d += start - pos
        dpos.append(d)
        opos.append(start)
        ascii_hex, utf8, json_hex = m.groups()
        if ascii_hex is not None:
            ch = chr(int(ascii_hex, 16))
        elif utf8 is not None:
            ch = bytes.fromhex(utf8.replace("%", "")).decode("utf-8", "replace")
        else:
            ch = chr(int(json_hex, 16))
        parts.append(ch)
        d += len(ch)
        pos = m.end()
        dpos.append(d)
        opos.append(pos)
    if pos == 0:
        return None
    parts.append(s[pos:])
    return "".join(parts), dpos, opos


def _orig(i: int, dpos: list[int], opos: list[int]) -> int:
    """Offset in the original string of decoded offset `i` (text between escapes maps 1:1)."""
    k = bisect.bisect_right(dpos, i) - 1
    return opos[k] + (i - dpos[k])


class PiiProcessor(Stage):
    """Scrubs traces (`consume`), logs and metrics in place; `scrub_text` for any other output."""

    def __init__(self, config: PiiConfig, hash_key: bytes | None = None) -> None:
        if config.phone_mode not in PHONE_MODES:
            raise ValueError(f"pii.phone_mode: expected one of {' | '.join(PHONE_MODES)}, "
                             f"got {config.phone_mode!r}")
        if config.phone_mode == "hash_only" and not hash_key:
            raise ValueError("pii.phone_mode hash_only needs an HMAC key "
                             "(unkeyed phone hashes are never written)")
        self.config = config
        self._hash_key = hash_key if config.phone_mode == "hash_only" else None
        self._master = _MASTER_IP if config.redact_ip else _MASTER
        self._precheck = _PRECHECK_IP if config.redact_ip else _PRECHECK
        self._allow_cfg = _glob_regex(config.allow_keys, ignore_case=False)
        self._deny_cfg = _glob_regex(config.deny_keys, ignore_case=False)
        self._keys: dict[str, int] = {}
        self._clean: set[str] = set()  # recent short strings that needed no change (span names, providers)
        # `_flat_clean`'s plan of each attribute key set (a pure function of `_decide`, so kept across requests:
        # an app sends the same few key sets in every request); None for a set with a dropped key. Bounded.
        self._plans: dict[tuple[str, ...], tuple[tuple[str, int], ...] | None] = {}
        self.counts: Counter[str] = Counter()

    # -- keys --------------------------------------------------------------------------------------
    def key_allowed(self, key: str) -> bool:
        """Whether attributes named `key` survive (their string values are still scrubbed)."""
        return self._decide(key) != _DROP

    def _decide(self, key: str) -> int:
        d = self._keys.get(key)
        if d is not None:
            return d
        if self._deny_cfg is not None and self._deny_cfg.fullmatch(key):
            d = _DROP
        elif key in CALL_ID_KEYS:
            d = _RAW
        elif key not in _DENY_EXCEPTIONS and _DENY_RE is not None and _DENY_RE.fullmatch(key):
            d = _DROP
        elif ((self._allow_cfg is not None and self._allow_cfg.fullmatch(key))
              or (_ALLOW_RE is not None and _ALLOW_RE.fullmatch(key))):
            d = _IDKEY if _ID_KEY.search(key) else _SCRUB
        else:
            d = _DROP
        if len(self._keys) >= _KEY_CACHE_MAX:
            self._keys.clear()
        self._keys[key] = d
        return d

    # -- values ------------------------------------------------------------------------------------
    def scrub_text(self, s: str) -> str:
        """`s` with phone numbers, emails, cards, tokens (and IPs when configured) replaced; counted."""
        return self._scrub_str(s)[0] if s else s

    def _scrub_str(self, s: str) -> tuple[str, int]:
        """(scrubbed `s`, redactions): cache of clean strings, then the pre-check, then the rules."""
        clean = self._clean
        if s in clean:
            return s, 0
        if s.isascii():
            s, n = self._scrub_plain(s)
        else:  # again while it changes: a replacement glued to a fullwidth letter can match once folded
            n = 0  # (fullwidth '0@0.w0000000': the digits hashed to 'hmac:...' make '0@0.whmac' an email), so
            for _ in range(_MAX_PASSES):  # scrubbing its output would change it again
                s, k = self._scrub_folded(s)
                n += k
                if not k or s.isascii():
                    break
        if not n and len(s) <= _CLEAN_MAX_LEN:
            if len(clean) >= _CLEAN_CACHE_MAX:
                clean.clear()
            clean.add(s)
        return s, n

    def _scrub_folded(self, s: str) -> tuple[str, int]:
        """Fullwidth and other compatibility forms of digits, `+`, `@`: the NFKC-folded text is scrubbed when
        it has something to scrub (a partly folded mask would keep digits of the original), else `s` as it is."""
        folded = unicodedata.normalize("NFKC", s)
        if folded != s and self._precheck.search(folded) is not None:
            scrubbed, n = self._scrub(folded)
            if n:
                return scrubbed, n
        return self._scrub_plain(s)

    def _scrub_plain(self, s: str) -> tuple[str, int]:
        return (s, 0) if self._precheck.search(s) is None else self._scrub(s)

    def _scrub(self, s: str) -> tuple[str, int]:
        """Passes until nothing changes (a replacement can expose a neighbour: `***4567 20 7946 0958`)."""
        total = 0
        for _ in range(_MAX_PASSES):
            s, n = self._scrub_once(s)
            if not n:
                break
            total += n
        return s, total

    def _scrub_once(self, s: str) -> tuple[str, int]:
        decoded = _percent_decode(s) if "%" in s or "\\u" in s else None
        text = decoded[0] if decoded is not None else s
        pieces: list[str] = []
        pos = 0
        n = 0
        for m in self._master.finditer(text):
            kind = m.lastgroup
            if kind == "keep" or kind == "keepip":
                continue
            found = self._replace(kind, m.group())
            if found is None:
                continue
            rule, repl, count = found
            self.counts[rule] += count
            n += count
            start, end = m.span()
            if decoded is not None:
                start, end = _orig(start, decoded[1], decoded[2]), _orig(end, decoded[1], decoded[2])
            pieces.append(s[pos:start])
            pieces.append(repl)
            pos = end
        if not n:
            return s, 0
        pieces.append(s[pos:])
        return "".join(pieces), n

    def _replace(self, kind: str | None, text: str) -> tuple[str, str, int] | None:
        """(rule, replacement, redactions) for one match, or None to keep it."""
        if kind == "num":
            digits = _NON_DIGIT.sub("", text)
            if not text.startswith(("+", "(+")) and _is_card(text, digits):
                return "card", "<card>", 1
            e164 = phone_e164(text)
            if e164 is not None:
                return "phone", self._phone_repl(e164), 1
            if len(digits) >= 14 or len(_WS_GROUP.findall(_PLUS_GAP.sub(" ", text))) >= 3:
                return self._split_phones(text)
            return None
        if kind == "email":
            return "email", "<email>", 1
        if kind == "token":
            return "token", "<token>", 1
        if kind == "bearer":
            scheme = _BEARER_SPLIT.split(text, maxsplit=1)[0]
            secret = text[len(scheme):].lstrip()
            if not any(c.isdigit() for c in secret) and len(secret) < 20:
                return None  # "bearer instruments": prose, not a credential
            return "token", f"{scheme} <token>", 1
        if kind == "cred":
            m = _CRED_SPLIT.search(text)
            if m is None:  # pragma: no cover - the pattern always has one
                return None
            tail = '"' if m.group() != "=" else ""
            return "token", f"{text[:m.end()]}<token>{tail}", 1
        if kind == "userinfo":
            return "token", "<token>@", 1
        if kind == "content":
            return "content", text.split("=", 1)[0] + "=<content>", 1
        if kind == "run":
            return ("token", "<token>", 1) if _looks_secret(text) else None
        if kind == "ip":
            return "ip", "<ip>", 1
        if kind == "ip6":
            addr = text.split("%", 1)[0]
            if sum(c != ":" for c in addr) < 2:
                return None
            try:
                ipaddress.IPv6Address(addr)
            except ValueError:
                return None
            return "ip", "<ip>", 1
        return None

    def _split_phones(self, text: str) -> tuple[str, str, int] | None:
        """Numbers next to each other or to other digits (`5551234567 5557654321`, `+1 555 765 4321 8`).

        Greedy over the candidate's whitespace-separated groups (`10.0.19045.2965` is one group, so a
        version string is never cut into a number): from each group, the longest run of groups with
        7-17 digits that is a phone number is replaced; groups that start none are kept.
        """
        spaced = _PLUS_GAP.sub(" ", text)  # same offsets: `+` between digits is a form-encoded space
        groups = [(m.start(), m.end(), len(_NON_DIGIT.sub("", m.group()))) for m in _WS_GROUP.finditer(spaced)]
        out: list[str] = []
        pos = 0
        found = 0
        i = 0
        while i < len(groups):
            hit: tuple[int, str] | None = None
            digits = 0
            window: list[int] = []
            for j in range(i, len(groups)):
                digits += groups[j][2]
                if digits > 17:
                    break
                if digits >= 7:
                    window.append(j)
            for j in reversed(window):
                e164 = phone_e164(spaced[groups[i][0]:groups[j][1]])
                if e164 is not None:
                    hit = (j, e164)
                    break
            if hit is None:
                i += 1
                continue
            j, e164 = hit
            out.append(text[pos:groups[i][0]])
            out.append(self._phone_repl(e164))
            pos = groups[j][1]
            found += 1
            i = j + 1
        if not found:
            return None
        out.append(text[pos:])
        return "phone", "".join(out), found

    def _phone_repl(self, e164: str) -> str:
        digits = e164.lstrip("+")
        if self._hash_key is not None:
            return "hmac:" + hmac.new(self._hash_key, digits.encode("ascii"), hashlib.sha256).hexdigest()[:16]
        return "***" + digits[-4:]

    def _scrub_value(self, v: AnyValue, key: str) -> int:
        """Scrub one AnyValue in place (strings, arrays, maps); redactions made."""
        kind = v.WhichOneof("value")
        if kind == "string_value":
            s = v.string_value
            if not s or s in self._clean:
                return 0
            new, n = self._scrub_str(s)
            if n:
                v.string_value = new
            return n
        if kind == "array_value":
            return sum(self._scrub_value(x, key) for x in v.array_value.values)
        if kind == "kvlist_value":
            return self._scrub_attrs(v.kvlist_value.values, prefix=key + ".")
        return 0

    def _scrub_attrs(self, attrs: Any, prefix: str = "") -> int:
        """Drop disallowed keys and scrub kept values of a repeated KeyValue, in place; redactions made.

        Keys inside a map value are judged by their dotted path (`parent.child`).
        """
        n = 0
        decide = self._decide
        clean = self._clean
        for i in range(len(attrs) - 1, -1, -1):
            kv = attrs[i]
            key = prefix + kv.key if prefix else kv.key
            d = self._keys.get(key)
            if d is None:
                d = decide(key)
            if d == _DROP:
                del attrs[i]
                self.counts["key_dropped"] += 1
                n += 1
                continue
            if d == _RAW:
                continue
            v = kv.value
            kind = v.WhichOneof("value")
            if kind == "string_value":
                s = v.string_value
                if not s or s in clean or (d == _IDKEY and _ID_VALUE.fullmatch(s)):
                    continue
                new, c = self._scrub_str(s)
                if c:
                    v.string_value = new
                    n += c
            elif kind == "array_value" or kind == "kvlist_value":
                n += self._scrub_value(v, key)
        return n

    def _scrub_field(self, msg: Any, field: str) -> int:
        s = getattr(msg, field)
        if not s or s in self._clean:
            return 0
        new, n = self._scrub_str(s)
        if n:
            setattr(msg, field, new)
        return n

    def _scrub_scope(self, scope: Any) -> None:
        """An instrumentation scope: its name and version are free text too, and its attributes."""
        self._scrub_field(scope, "name")
        self._scrub_field(scope, "version")
        self._scrub_attrs(scope.attributes)

    # -- signals -----------------------------------------------------------------------------------
    def consume(self, batch: TraceBatch) -> None:
        """Scrub every resource, scope, span, event and link of `batch.request` in place."""
        for rs in batch.request.resource_spans:
            self._scrub_attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                self._scrub_scope(ss.scope)
                for span in ss.spans:
                    n = self._scrub_attrs(span.attributes)
                    n += self._scrub_field(span, "name")
                    if span.status.message:
                        n += self._scrub_field(span.status, "message")
                    for ev in span.events:
                        n += self._scrub_field(ev, "name")
                        n += self._scrub_attrs(ev.attributes)
                    for link in span.links:
                        n += self._scrub_attrs(link.attributes)
                    if n:
                        _add_redacted_count(span.attributes, n)

    def consume_flat(self, batch: TraceBatch) -> bool:
        """`consume(batch)` for a batch whose `records` were just flattened from its request (pipeline).

        The fast path: when the records show that nothing would be dropped or scrubbed (every key kept and
        already decided, every string clean or an id), the protobuf is not walked attribute by attribute
        again. Anything the records cannot show for sure (scope attributes, links, repeated keys, maps and
        arrays, a string the pre-check flags) runs `consume` as before. True when the request is unchanged,
        so the records still describe it; False when `consume` changed it (read the records again)."""
        if self._flat_clean(batch):
            return True
        before = self.counts.total()
        self.consume(batch)
        return self.counts.total() == before

    def _flat_clean(self, batch: TraceBatch) -> bool:
        spans = 0
        versions: list[str] = []  # scope versions are not on the records (names are): checked below
        for rs in batch.request.resource_spans:  # what records do not carry: scope attributes, links, empty ones
            n = 0
            for ss in rs.scope_spans:
                scope = ss.scope
                if len(scope.attributes):
                    return False
                version = scope.version
                if version:
                    versions.append(version)
                for span in ss.spans:
                    if len(span.links):
                        return False
                    n += 1
            if not n:
                return False  # a resource with no span has no record to show its attributes
            spans += n
        records = batch.records
        if spans != len(records):
            return False
        keys, decide, clean, precheck = self._keys, self._decide, self._clean, self._precheck

        def clean_str(v: str, d: int = _SCRUB) -> bool:
            if not v or v in clean or (d == _IDKEY and _ID_VALUE.fullmatch(v)):
                return True
            if precheck.search(v) is not None or (not v.isascii() and precheck.search(
                    unicodedata.normalize("NFKC", v)) is not None):
                return False  # maybe something to scrub (in any width): the full pass decides (and counts)
            if len(v) <= _CLEAN_MAX_LEN:  # as _scrub_str caches it
                if len(clean) >= _CLEAN_CACHE_MAX:
                    clean.clear()
                clean.add(v)
            return True

        plans = self._plans

        def plan_of(ks: tuple[str, ...]) -> tuple[tuple[str, int], ...] | None:
            """The keys whose values need a look (not raw), or None when one is dropped (the fast path ends)."""
            todo: list[tuple[str, int]] = []
            dropped = False
            for k in ks:
                d = keys.get(k)
                if d is None:
                    d = decide(k)
                if d == _DROP:
                    dropped = True
                    break
                if d != _RAW:
                    todo.append((k, d))
            if len(plans) >= _PLAN_CACHE_MAX:
                plans.clear()
            plans[ks] = plan = None if dropped else tuple(todo)
            return plan

        def clean_attrs(attrs: dict[str, Any]) -> bool:
            if type(attrs) is not dict:  # spans.DuplicateKeys: the protobuf has values the dict does not show
                return False
            # the records of a request repeat a few key sets: each set's decisions are looked up once
            ks = tuple(attrs)
            plan = plans.get(ks, _NO_PLAN)
            if plan is _NO_PLAN:
                plan = plan_of(ks)
            if plan is None:
                return False
            for k, d in plan:
                v = attrs[k]
                t = type(v)
                if t is str:
                    if v and v not in clean and not clean_str(v, d):  # clean_str's first test, inline
                        return False
                elif t is list or t is dict:
                    return False
            return True

        for version in versions:
            if not clean_str(version):
                return False
        resources: set[int] = set()
        last: dict[str, Any] | None = None
        for rec in records:
            if rec.resource is not last and id(rec.resource) not in resources:  # one shared dict, checked once
                if not clean_attrs(rec.resource):
                    return False
                resources.add(id(rec.resource))
            last = rec.resource
            if not clean_attrs(rec.attrs):
                return False
            for v in (rec.name, rec.status_message, rec.scope):  # clean_str's first test, inline
                if v and v not in clean and not clean_str(v):
                    return False
            for ev in rec.events:
                v = ev["name"]
                if (v and v not in clean and not clean_str(v)) or not clean_attrs(ev["attrs"]):
                    return False
        return True

    def scrub_logs(self, req: ExportLogsServiceRequest) -> None:
        """Scrub logs in place: bodies are content and are cleared; attributes as for spans."""
        for rl in req.resource_logs:
            self._scrub_attrs(rl.resource.attributes)
            for sl in rl.scope_logs:
                self._scrub_scope(sl.scope)
                for lr in sl.log_records:
                    if lr.HasField("body"):
                        lr.ClearField("body")
                        self.counts["key_dropped"] += 1
                    self._scrub_attrs(lr.attributes)
                    if lr.event_name:
                        self._scrub_field(lr, "event_name")

    def scrub_metrics(self, req: ExportMetricsServiceRequest) -> None:
        """Scrub resource, scope (name, version, attributes), metric names, data point and exemplar attributes
        in place."""
        for rm in req.resource_metrics:
            self._scrub_attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                self._scrub_scope(sm.scope)
                for metric in sm.metrics:
                    for field in ("name", "description", "unit"):  # names are free text an app chooses
                        self._scrub_field(metric, field)
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    for dp in getattr(metric, kind).data_points:
                        self._scrub_attrs(dp.attributes)
                        for ex in getattr(dp, "exemplars", ()):
                            self._scrub_attrs(ex.filtered_attributes)


def _add_redacted_count(attrs: Any, n: int) -> None:
    for kv in attrs:
        if kv.key == REDACTED_COUNT_KEY:
            kv.value.int_value = (kv.value.int_value if kv.value.HasField("int_value") else 0) + n
            return
    kv = attrs.add()
    kv.key = REDACTED_COUNT_KEY
    kv.value.int_value = n
