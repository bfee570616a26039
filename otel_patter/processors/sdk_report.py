"""The SDK's own call reports (getpatter `notify_dashboard`), made safe and kept per call.

getpatter 0.7.0 POSTs JSON to `http://127.0.0.1:8000/api/dashboard/ingest` (httpx, 1 s timeout,
fire-and-forget, never retried; `PATTER_DASHBOARD_NOTIFY=0` turns it off). Three kinds, told apart
the way the SDK's own standalone dashboard does (`getpatter/cli.py` `ingest`):

- `initiated` (`status == "initiated"`): an outbound dial handed to the carrier
  `{call_id, caller, callee, direction: "outbound", status}`.
- `call_end` (`ended_at` set): `{call_id, caller, callee, ended_at, transcript, conversation_history,
  metrics, direction, recording_path?}`; `metrics` is `asdict(CallMetrics)`: `duration_seconds`,
  `turns` (every turn's texts and latencies), `cost{stt,tts,llm,telephony,total,llm_cached_savings}`,
  `latency_avg/_p50/_p90/_p95/_p99`, `provider_mode`, `{stt,tts,llm,telephony}_provider`,
  `{stt,tts,llm}_model`, `error_code`, ...
- `call_start` (anything else): `{call_id, caller, callee, direction, custom_params, telephony_provider}`.

These payloads are hostile to privacy: raw caller and callee numbers, every turn's text, tool
arguments and results, custom parameters. Nothing of them is kept but a closed list of fields:
numbers (cost breakdown, duration, turn count, latency percentiles), timestamps, provider names and
models (allowlisted shapes, and only when `PiiProcessor.scrub_text` finds nothing in them),
direction, status and error code (closed vocabularies). Each kept field must also pass the PII key
policy as `patter.sdk.<field>` (so `pii.deny_keys` can drop more). `caller`/`callee` are redacted
per `store.redact_phone` (`mask`: `***` + last 4 digits; `hash_only`: `hmac:` + 16 hex of
HMAC-SHA256 with the store's key; `full`: only by our own config). No text field is ever stored.

A sanitized report is made durable as a line of its call's WAL (`type: "sdk_report"`) before it
counts, so a restart rebuilds it like spans. The first report of each kind per call counts;
repeats are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otel_patter.component import Stage
from otel_patter.processors.pii import phone_e164
from otel_patter.store.hash_key import load_or_create_hash_key
from otel_patter.store.paths import valid_call_id

if TYPE_CHECKING:
    from otel_patter.config import Config
    from otel_patter.processors.pii import PiiProcessor
    from otel_patter.processors.rollup_state import CallState
    from otel_patter.selfmetrics import SelfMetrics

WAL_TYPE = "sdk_report"
KINDS = ("initiated", "call_start", "call_end")
KEY_PREFIX = "patter.sdk."
COST_FIELDS = ("stt", "tts", "llm", "telephony", "total", "llm_cached_savings")
SPEND_COMPONENTS = ("stt", "tts", "llm", "telephony")  # `patter_sdk_cost_usd_total{component}`
DIRECTIONS = ("inbound", "outbound")
STATUSES = ("initiated", "queued", "ringing", "in-progress", "in_progress", "completed", "busy", "no-answer",
            "no_answer", "failed", "canceled", "cancelled")
PERCENTILES = (("latency_p50", "p50_ms"), ("latency_p95", "p95_ms"), ("latency_p99", "p99_ms"),
               ("latency_avg", "avg_ms"))
# payload keys read at all (everything else, e.g. transcript, conversation_history, custom_params,
# recording_path, the turns' texts, is never looked at and counted as a dropped key)
TOP_KEYS = frozenset({"call_id", "caller", "callee", "direction", "status", "telephony_provider", "ended_at",
                      "metrics"})
METRICS_KEYS = frozenset({"duration_seconds", "turns", "cost", "provider_mode", "stt_provider", "tts_provider",
                          "llm_provider", "telephony_provider", "stt_model", "tts_model", "llm_model", "error_code",
                          *(k for k, _ in PERCENTILES)})

_PROVIDER = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_NON_DIGIT = re.compile(r"\D")
MAX_USD = 1_000_000.0
MAX_SECONDS = 7 * 86400.0
MAX_MS = 86_400_000.0
EPOCH_MIN, EPOCH_MAX = 946_684_800.0, 4_102_444_800.0  # 2000 .. 2100


def _number(v: Any, hi: float, lo: float = 0.0) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) and lo <= f <= hi else None


def redact_phone(raw: str, mode: str, key: bytes | None) -> str:
    """A caller/callee value as `store.redact_phone` says: `mask` (`***` + last 4 digits, `***` with fewer),
    `hash_only` (`hmac:` + 16 hex of HMAC-SHA256 over the E.164 digits, or over the value when it is no
    phone number; never unkeyed) or `full` (the value, bounded and printable)."""
    raw = raw.strip()
    if not raw:
        return ""
    if mode == "full":
        cleaned = "".join(c for c in raw if c.isprintable())[:64]
        return cleaned
    if mode == "hash_only":
        if not key:
            raise ValueError("hash_only needs an HMAC key (unkeyed phone hashes are never written)")
        e164 = phone_e164(raw)
        material = e164.lstrip("+") if e164 else raw
        return "hmac:" + hmac.new(key, material.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]
    digits = _NON_DIGIT.sub("", raw)
    return "***" + digits[-4:] if len(digits) >= 4 else "***"


def report_kind(payload: dict[str, Any]) -> str:
    """The SDK dashboard's own dispatch: `status == "initiated"`, else `ended_at` set, else a call start."""
    if payload.get("status") == "initiated":
        return "initiated"
    if payload.get("ended_at"):
        return "call_end"
    return "call_start"


class ReportSanitizer:
    """Turns one raw SDK payload into the few fields otel-patter keeps (see the module docstring)."""

    def __init__(self, pii: PiiProcessor, redact_mode: str, hash_key: Callable[[], bytes] | None = None) -> None:
        self.pii = pii
        self.redact_mode = redact_mode
        self._hash_key = hash_key
        self._key: bytes | None = None

    def _allowed(self, name: str) -> bool:
        return self.pii.key_allowed(KEY_PREFIX + name)

    def _token(self, v: Any, shape: re.Pattern[str], *, letter: bool = False) -> str | None:
        """An allowlisted token (provider, model, error code) that the PII scrubber leaves as it is."""
        if not isinstance(v, str) or not shape.fullmatch(v):
            return None
        if letter and not any(c.isalpha() for c in v):
            return None
        if self.pii.scrub_text(v) != v:
            return None
        return v

    def _phone(self, v: Any) -> str | None:
        if not isinstance(v, str):
            return None
        if not v.strip():
            return ""
        if self.redact_mode == "hash_only" and self._key is None:
            self._key = self._hash_key() if self._hash_key is not None else None
        out = redact_phone(v, self.redact_mode, self._key)
        if self.redact_mode != "full":
            self.pii.counts["phone"] += 1
        return out

    def sanitize(self, payload: Any, received_at: float) -> dict[str, Any] | None:
        """The kept fields of `payload`, or None when it is no report (not an object, no valid call id)."""
        if not isinstance(payload, dict):
            return None
        cid = payload.get("call_id")
        if not isinstance(cid, str) or not valid_call_id(cid):
            return None
        metrics = payload.get("metrics")
        metrics = metrics if isinstance(metrics, dict) else {}
        dropped = sum(1 for k in payload if k not in TOP_KEYS)
        dropped += sum(1 for k in metrics if k not in METRICS_KEYS)
        if dropped:
            self.pii.counts["key_dropped"] += dropped
        out: dict[str, Any] = {"kind": report_kind(payload), "call_id": cid, "received_at": received_at}

        def put(name: str, value: Any) -> None:
            if value is not None and self._allowed(name):
                out[name] = value

        for name in ("caller", "callee"):
            if self._allowed(name):
                put(name, self._phone(payload.get(name)))
        direction = payload.get("direction")
        put("direction", direction if direction in DIRECTIONS else None)
        status = payload.get("status")
        put("status", status if status in STATUSES else None)
        put("ended_at", _number(payload.get("ended_at"), EPOCH_MAX, EPOCH_MIN))
        put("duration_seconds", _number(metrics.get("duration_seconds"), MAX_SECONDS))
        turns = metrics.get("turns")
        put("turns", len(turns) if isinstance(turns, list | tuple) else None)
        put("provider_mode", self._token(metrics.get("provider_mode"), _PROVIDER))
        providers: dict[str, str] = {}
        for component in ("stt", "tts", "llm", "telephony"):
            raw = metrics.get(f"{component}_provider")
            if component == "telephony" and not raw:
                raw = payload.get("telephony_provider")
            value = self._token(raw, _PROVIDER)
            if value is not None and self._allowed(f"providers.{component}"):
                providers[component] = value
        if providers:
            out["providers"] = providers
        models: dict[str, str] = {}
        for component in ("stt", "tts", "llm"):
            value = self._token(metrics.get(f"{component}_model"), _MODEL, letter=True)
            if value is not None and self._allowed(f"models.{component}"):
                models[component] = value
        if models:
            out["models"] = models
        cost_raw = metrics.get("cost")
        if isinstance(cost_raw, dict):
            cost = {k: v for k in COST_FIELDS
                    if (v := _number(cost_raw.get(k), MAX_USD)) is not None and self._allowed(f"cost.{k}")}
            if cost:
                out["cost"] = cost
        latency: dict[str, float] = {}
        for src, name in PERCENTILES:
            block = metrics.get(src)
            if isinstance(block, dict):
                v = _number(block.get("total_ms"), MAX_MS)
                if v is not None and self._allowed(f"latency.{name}"):
                    latency[name] = v
        if latency:
            out["latency"] = latency
        code = metrics.get("error_code")
        if isinstance(code, str) and code:
            put("error_code", self._token(code.lower(), _ERROR_CODE))
        return out


@dataclass(slots=True)
class SdkReports:
    """A call's SDK reports (the first of each kind), as the rollup state holds them."""

    tolerance_usd: float = 0.001
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> sanitized report
    arrivals: dict[str, float] = field(default_factory=dict)  # kind -> receive time (epoch s)
    last_arrival: float = 0.0
    sdk_cost_counted: bool = False
    mismatch_counted: bool = False

    def add(self, report: dict[str, Any]) -> bool:
        kind = report["kind"]
        if kind in self.reports:
            return False
        self.reports[kind] = report
        self.arrivals[kind] = float(report["received_at"])
        self.last_arrival = max(self.last_arrival, self.arrivals[kind])
        return True

    @property
    def end(self) -> dict[str, Any] | None:
        return self.reports.get("call_end")

    @property
    def end_at(self) -> float | None:
        """When the SDK's call_end report arrived: the definitive end-of-call signal."""
        return self.arrivals.get("call_end")

    def value(self, name: str, sub: str | None = None) -> Any:
        """A field from the latest report that has it (call_end, then call_start, then initiated)."""
        for kind in ("call_end", "call_start", "initiated"):
            v = self.reports.get(kind, {}).get(name)
            if sub is not None:
                v = v.get(sub) if isinstance(v, dict) else None
            if v not in (None, ""):
                return v
        return None

    def start_time(self) -> float | None:
        """The call's start by the SDK: the earlier of its call_start report's arrival (sent as the media
        stream starts) and call_end's `ended_at - duration_seconds`; else the outbound dial's report."""
        candidates = [self.arrivals["call_start"]] if "call_start" in self.arrivals else []
        end = self.end
        if end is not None and "ended_at" in end:
            candidates.append(float(end["ended_at"]) - float(end.get("duration_seconds") or 0.0))
        if candidates:
            return min(candidates)
        return self.arrivals.get("initiated")


def report_start(report: dict[str, Any]) -> float:
    """The start time one report implies (for a call it opens: its directory's date)."""
    if report["kind"] == "call_end" and "ended_at" in report:
        return float(report["ended_at"]) - float(report.get("duration_seconds") or 0.0)
    return float(report["received_at"])


def sdk_wal_line(report: dict[str, Any]) -> str:
    """The report as a line of its call's WAL, beside the span lines: `{"schema_version","ts","type":
    "sdk_report","side":"uut","data":{...sanitized fields...}}`."""
    from otel_patter.store.envelope_store import SCHEMA_VERSION, dumps, iso_now

    return dumps({"schema_version": SCHEMA_VERSION, "ts": iso_now(report["received_at"]), "type": WAL_TYPE,
                  "side": "uut", "data": report})


def apply_report(state: CallState, report: dict[str, Any], tolerance_usd: float) -> bool:
    """Fold one sanitized report into a call (live and at WAL replay alike); False for a repeat."""
    if state.sdk is None:
        state.sdk = SdkReports(tolerance_usd=tolerance_usd)
    if not state.sdk.add(report):
        return False
    start = state.sdk.start_time()
    if start is not None:
        ns = int(start * 1e9)
        if not state.start_ns or ns < state.start_ns:
            state.start_ns = ns
    end = state.sdk.end
    if end is not None and "ended_at" in end:
        state.end_ns = max(state.end_ns, int(float(end["ended_at"]) * 1e9))
    state.dirty = True
    return True


def replay_report(state: CallState, data: dict[str, Any], tolerance_usd: float) -> bool:
    """`apply_report` for a WAL line at restart: a line that is not a report we wrote is skipped."""
    if data.get("kind") not in KINDS or _number(data.get("received_at"), EPOCH_MAX, EPOCH_MIN) is None:
        return False
    try:
        return apply_report(state, data, tolerance_usd)
    except (KeyError, TypeError, ValueError):
        return False


class SdkReportProcessor(Stage):
    """sdk_ingest's stage: sanitize a payload, record it in its call (WAL first), count it."""

    def __init__(self, cfg: Config, pii: PiiProcessor, rollup: Any, metrics: SelfMetrics) -> None:
        self.cfg = cfg
        self.rollup = rollup
        self.metrics = metrics
        log_dir = Path(cfg.store.log_dir)
        self.sanitizer = ReportSanitizer(pii, cfg.store.redact_phone, lambda: load_or_create_hash_key(log_dir))

    def consume(self, payload: Any, received_at: float) -> str:
        """`accepted`, `duplicate` or `ignored` (no call id); raises StoreError when the WAL append fails."""
        report = self.sanitizer.sanitize(payload, received_at)
        if report is None:
            kind = report_kind(payload) if isinstance(payload, dict) else "unknown"
            self.metrics.sdk_reports.labels(kind, "ignored").inc()
            return "ignored"
        kind = report["kind"]
        if not self.rollup.record_sdk_report(report):
            self.metrics.sdk_reports.labels(kind, "duplicate").inc()
            return "duplicate"
        self.metrics.sdk_reports.labels(kind, "accepted").inc()
        cost = report.get("cost")
        state = self.rollup.calls.get(report["call_id"])
        if kind == "call_end" and cost and state is not None and state.sdk is not None \
                and not state.sdk.sdk_cost_counted:
            state.sdk.sdk_cost_counted = True
            for component in SPEND_COMPONENTS:
                if cost.get(component):
                    self.metrics.sdk_cost.labels(component).inc(cost[component])
        return "accepted"

    def on_final(self, state: CallState, envelope: dict[str, Any]) -> None:
        """Count a call whose span-derived USD is further from the SDK's than the tolerance (once per call)."""
        rec = envelope.get("reconciliation") or {}
        if rec.get("mismatch") and state.sdk is not None and not state.sdk.mismatch_counted:
            state.sdk.mismatch_counted = True
            self.metrics.reconcile_mismatch.inc()
