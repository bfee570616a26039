"""Per-call aggregates: what one call's spans add up to, before pricing.

A call's spans are grouped by (service.instance.id, explicit side). The side of spans
that do not say theirs (every `getpatter.*` span in 0.7.0) is decided when the
envelope is built, from the sides other spans of the same instance declared, so a
late-arriving cost span still moves earlier stage spans to the right side.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from otel_patter.spans import STATUS_ERROR, SpanRecord

CALL_ID_KEYS = ("patter.call_id", "patter.call.id", "getpatter.call.id")
SIDES = ("uut", "driver")
ROOT_SPAN = "getpatter.call"  # 0.6 documented root; never emitted by 0.7.0
LLM_SPAN = "getpatter.llm"
FIRST_TOKEN_EVENT = "patter.event.llm_first_token"
MODEL_KEYS = ("patter.llm.model", "gen_ai.request.model")
PATTER_SPAN_PREFIXES = ("getpatter.", "patter.")
TEST_RUN_KEY = "test.run_id"  # resource attribute a test suite sets (OTEL_RESOURCE_ATTRIBUTES) to find its calls
TURN_BITS = 4096  # turn indexes kept as bits (an int of at most 512 bytes); others in a set
MAX_TEST_RUN_IDS = 16  # per group: a misbehaving client cannot grow a call without bound

# usage attribute -> (component, provider attribute)
USAGE_KEYS: dict[str, tuple[str, str]] = {
    "patter.cost.stt_seconds": ("stt", "patter.stt.provider"),
    "patter.cost.tts_chars": ("tts", "patter.tts.provider"),
    "patter.cost.telephony_minutes": ("telephony", "patter.telephony"),
    "patter.cost.realtime_minutes": ("realtime", "patter.realtime.provider"),
}
LLM_INPUT = "patter.cost.llm_input_tokens"
LLM_OUTPUT = "patter.cost.llm_output_tokens"
HANGUP_KEYS = ("patter.cost.telephony_minutes", "patter.cost.realtime_minutes")
# call outcome (the SDK's telemetry taxonomy; no 0.7.0 span carries these, apps may set them)
ERROR_LAYER_KEYS = ("patter.error.layer", "patter.error_layer")
DISCONNECT_KEYS = ("patter.disconnect_reason", "patter.call.disconnect_reason")
# the layer of an error span that does not name one
STAGE_LAYERS = {"getpatter.stt": "stt", "getpatter.endpoint": "stt", "getpatter.llm": "llm",
                "getpatter.tool": "llm", "getpatter.tts": "tts"}


def dec(v: Any) -> Decimal:
    return Decimal(str(v))


def first_call_id(attrs: dict[str, Any]) -> str | None:
    for k in CALL_ID_KEYS:
        v = attrs.get(k)
        if isinstance(v, str) and v:
            return v
    return None


def span_model(rec: SpanRecord) -> str | None:
    for k in MODEL_KEYS:
        v = rec.attrs.get(k)
        if isinstance(v, str) and v:
            return v
    for ev in rec.events:
        if ev["name"] == FIRST_TOKEN_EVENT:
            for k in MODEL_KEYS:
                v = ev["attrs"].get(k)
                if isinstance(v, str) and v:
                    return v
    return None


def _is_framework_span(rec: SpanRecord) -> bool:
    return not rec.name.startswith(PATTER_SPAN_PREFIXES)


def _as_ms(v: Any) -> float | None:
    """An attribute the usage guard does not judge, as a finite float (a number, or a string that spells one);
    None for anything else, which is ignored: one odd value must not stop a call from being counted, live or
    when its WAL is replayed after a restart."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _as_count(v: Any) -> int:
    """`_as_ms` for a count: 0 for what is not a number."""
    try:
        return int(v or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


# every span attribute `GroupAgg.add` reads (name-specific rules aside): a span with none of them skips the rules
_WATCHED = frozenset({"otel_patter.redacted_count", *ERROR_LAYER_KEYS, *DISCONNECT_KEYS, "patter.turn.idx",
                      "patter.latency.ttfb_ms", "patter.latency.turn_ms", "patter.direction", *USAGE_KEYS,
                      LLM_INPUT, LLM_OUTPUT, *HANGUP_KEYS})
_NONE: frozenset[str] = frozenset()
_ZERO = Decimal(0)  # immutable: one shared start for every usage bucket
# CallState.sides() of the last call asked: one module-wide slot, not a field, because the answer is merged
# copies of the groups and keeping one per open call would double the memory of every open call
_sides_memo: tuple[Any, int, int, dict[str, Any]] | None = None


class SeenKeys:
    """The (trace id, span id) keys a call has counted, compactly (a set of key tuples costs ~250 bytes a span):
    24 bytes a key in one buffer, searched at key boundaries; a set of 24-byte keys once the call is large.
    Keys that are not hex (never from a valid span) are kept as they are. `in`, `add` and `len` as a set."""

    __slots__ = ("_big", "_buf", "_odd")
    SET_AFTER = 256  # keys; a linear search of 6 KB is still faster than hashing

    def __init__(self) -> None:
        self._buf = b""  # bytes, not a bytearray: no over-allocation (~15%), and no buffer while empty
        self._big: set[bytes] | None = None
        self._odd: set[tuple[str, str]] | None = None

    @staticmethod
    def pack(key: tuple[str, str]) -> bytes | None:
        """A key's 24 bytes, or None when it is not hex of the right lengths (kept as it is)."""
        trace_id, span_id = key
        if len(trace_id) != 32 or len(span_id) != 16:
            return None
        try:
            return bytes.fromhex(trace_id + span_id)
        except ValueError:
            return None

    def _has(self, b: bytes) -> bool:
        if self._big is not None:
            return b in self._big
        buf = self._buf
        i = buf.find(b)
        while i != -1 and i % 24:
            i = buf.find(b, i + 1)
        return i != -1

    def __contains__(self, key: object) -> bool:
        return self.has_packed(key, self.pack(key))  # type: ignore[arg-type]

    def has_packed(self, key: tuple[str, str], packed: bytes | None) -> bool:
        """`key in self`, with `packed` = `pack(key)` already computed."""
        if packed is None:
            return self._odd is not None and key in self._odd
        return self._has(packed)

    def add(self, key: tuple[str, str]) -> None:
        b = self.pack(key)
        if b is None:
            if self._odd is None:
                self._odd = set()
            self._odd.add(key)
        elif not self._has(b):
            self._add_new(b)

    def _add_new(self, b: bytes) -> None:
        if self._big is not None:
            self._big.add(b)
            return
        self._buf += b
        if len(self._buf) > 24 * self.SET_AFTER:
            self._big = {bytes(self._buf[i:i + 24]) for i in range(0, len(self._buf), 24)}
            self._buf = b""

    def trace_ids(self) -> list[str]:
        """The distinct trace ids of the keys (hex, as `SpanRecord.trace_id`)."""
        if self._big is not None:
            packed: Iterable[bytes] = self._big
        else:
            buf = self._buf
            packed = (buf[i:i + 24] for i in range(0, len(buf), 24))
        ids = dict.fromkeys(b[:16].hex() for b in packed)
        if self._odd:  # keys kept as they are (a trace id of another length, or a normal one with an odd span id)
            ids.update(dict.fromkeys(t for t, _ in sorted(self._odd)))
        return list(ids)

    def __len__(self) -> int:
        n = len(self._big) if self._big is not None else len(self._buf) // 24
        return n + (len(self._odd) if self._odd else 0)


# An open call keeps a group or two whose containers mostly stay empty for long or for good: they start as
# these shared read-only empties and become the group's own list/set/dict on the first write (`_list`,
# `_set`, `_dict`), so an open call costs what its spans added (issue 9: < 8 KiB an open call). Readers only
# read (len, iteration, `in`, get/items/values work on both shapes).
class _EmptyMap(dict):  # type: ignore[type-arg]
    """An empty dict that refuses writes (a hashable dataclass default; json/orjson see a dict)."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return 0

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a shared empty: write through GroupAgg._dict")

    __setitem__ = __delitem__ = __ior__ = setdefault = update = pop = popitem = clear = _read_only


_NO_LIST: Any = ()
_NO_SET: Any = frozenset()
_NO_DICT: Any = _EmptyMap()


@dataclass(slots=True)
class GroupAgg:
    """What the spans of one (instance, side) group of a call add up to. Its containers are shared read-only
    empties until their first write (`_NO_LIST`): write through `_list`/`_set`/`_dict`."""

    spans: int = 0
    # turn indexes seen: 0..TURN_BITS-1 as bits of one int (32 bytes for 60 turns, where a set costs 216+),
    # any other index (never from the SDK) in a set
    turn_bits: int = 0
    turn_idx_other: set[int] = _NO_SET
    outer_llm: int = 0
    iter0_llm: int = 0
    ttfb_ms: list[float] = _NO_LIST
    ttfb_turns: list[tuple[int, float]] = _NO_LIST  # (span start ns, ttfb ms): per-turn order
    turn_ms: list[float] = _NO_LIST
    ttft_ms: list[float] = _NO_LIST
    barge_ins: int = 0
    tool_calls: int = 0
    tts_spans: int = 0
    errors: int = 0
    redactions: int = 0
    stt: dict[str, Decimal] = _NO_DICT
    tts: dict[str, Decimal] = _NO_DICT
    telephony: dict[str, Decimal] = _NO_DICT
    realtime: dict[str, Decimal] = _NO_DICT
    # (provider, model or None) -> [input, output]
    llm: dict[tuple[str, str | None], list[int]] = _NO_DICT
    framework_cost_spans: int = 0
    hangup: bool = False
    root_ended: bool = False
    root_error: str | None = None
    direction: str | None = None
    provider_mode: str | None = None
    last_arrival: float = 0.0
    signal_at: float | None = None  # first hang-up / root-end arrival time
    test_run_ids: set[str] = _NO_SET
    resource: dict[str, Any] = _NO_DICT  # the group's first resource (tenant label; shared, read-only)
    error_layers: dict[str, int] = _NO_DICT  # error spans by layer (raw; labels allowlist)
    error_layer: str | None = None  # the layer a span named explicitly (`patter.error.layer`)
    disconnect_reason: str | None = None  # raw `patter.disconnect_reason`, when a span says it

    def _list(self, name: str) -> list[Any]:
        v = getattr(self, name)
        if v is _NO_LIST:
            v = []
            setattr(self, name, v)
        return v  # type: ignore[no-any-return]

    def _set(self, name: str) -> set[Any]:
        v = getattr(self, name)
        if v is _NO_SET:
            v = set()
            setattr(self, name, v)
        return v  # type: ignore[no-any-return]

    def _dict(self, name: str) -> dict[Any, Any]:
        v = getattr(self, name)
        if v is _NO_DICT:
            v = {}
            setattr(self, name, v)
        return v  # type: ignore[no-any-return]

    def add(self, rec: SpanRecord, arrival: float, run_id: Any) -> None:
        """Fold in one span; `run_id` is `rec.resource.get(TEST_RUN_KEY)` (read once per resource by the caller)."""
        a = rec.attrs
        # the watched keys this span has (most spans have none or one): every attribute rule below is gated on it
        present = _WATCHED.intersection(a) if a else _NONE
        self.spans += 1
        if arrival > self.last_arrival:  # max() without the call (this runs for every span, live and replayed)
            self.last_arrival = arrival
        if not self.resource:
            self.resource = rec.resource
        explicit_layer = None
        if present:  # most spans have no watched attribute: skip these checks at once
            if "otel_patter.redacted_count" in present:
                self.redactions += _as_count(a["otel_patter.redacted_count"])
            if not present.isdisjoint(ERROR_LAYER_KEYS):
                explicit_layer = next((a[k] for k in ERROR_LAYER_KEYS if isinstance(a.get(k), str) and a[k]),
                                      None)
                if explicit_layer is not None:
                    self.error_layer = self.error_layer or explicit_layer
            if not present.isdisjoint(DISCONNECT_KEYS):
                reason = next((a[k] for k in DISCONNECT_KEYS if isinstance(a.get(k), str) and a[k]), None)
                if reason is not None:
                    self.disconnect_reason = reason
        if rec.status_code == STATUS_ERROR:
            self.errors += 1
            layer = explicit_layer or STAGE_LAYERS.get(rec.name, "other")
            layers = self._dict("error_layers")
            layers[layer] = layers.get(layer, 0) + 1
        name = rec.name
        events = rec.events
        if name == LLM_SPAN:
            iteration = a.get("patter.llm.iteration", a.get("getpatter.llm.iteration"))
            if iteration is None:
                self.outer_llm += 1
            elif iteration == 0:
                self.iter0_llm += 1
            for ev in events:
                if ev["name"] == FIRST_TOKEN_EVENT and ev["time_ns"] >= rec.start_ns:
                    self._list("ttft_ms").append((ev["time_ns"] - rec.start_ns) / 1e6)
            if "getpatter.llm.ttft_ms" in a and not any(e["name"] == FIRST_TOKEN_EVENT for e in events):
                ttft = _as_ms(a["getpatter.llm.ttft_ms"])
                if ttft is not None:
                    self._list("ttft_ms").append(ttft)
        elif name == "getpatter.bargein":
            self.barge_ins += 1
        elif name == "getpatter.tool":
            self.tool_calls += 1
        elif name == "getpatter.tts":
            self.tts_spans += 1
        elif name == ROOT_SPAN:
            self.root_ended = True
            self.signal_at = self.signal_at or arrival
            self.direction = a.get("getpatter.call.direction") or self.direction
            self.provider_mode = a.get("getpatter.call.provider_mode") or self.provider_mode
            if rec.status_code == STATUS_ERROR:
                self.root_error = "error"
        if "patter.turn.idx" in present:
            idx = a["patter.turn.idx"]
            if isinstance(idx, int):
                self._add_turn(idx)
        for ev in events:
            idx = ev["attrs"].get("patter.turn.idx")
            if isinstance(idx, int):
                self._add_turn(idx)
        if "patter.latency.ttfb_ms" in present:
            ttfb = float(a["patter.latency.ttfb_ms"])
            self._list("ttfb_ms").append(ttfb)
            self._list("ttfb_turns").append((rec.start_ns, ttfb))
        if isinstance(run_id, str) and run_id and len(self.test_run_ids) < MAX_TEST_RUN_IDS:
            self._set("test_run_ids").add(run_id)
        if not present:
            return
        if "patter.latency.turn_ms" in present:
            self._list("turn_ms").append(float(a["patter.latency.turn_ms"]))
        if "patter.direction" in present and isinstance(a["patter.direction"], str):
            self.direction = sys.intern(a["patter.direction"])
        has_cost = False
        if not present.isdisjoint(USAGE_KEYS):
            for key, (component, provider_key) in USAGE_KEYS.items():
                if key in a:
                    has_cost = True
                    provider = sys.intern(str(a.get(provider_key) or "unknown"))  # one copy for every call
                    bucket: dict[str, Decimal] = self._dict(component)
                    bucket[provider] = bucket.get(provider, _ZERO) + dec(a[key])
        if LLM_INPUT in present or LLM_OUTPUT in present:
            has_cost = True
            model = span_model(rec)
            key = (sys.intern(str(a.get("patter.llm.provider") or "unknown")), model and sys.intern(model))
            line = self._dict("llm").setdefault(key, [0, 0])
            line[0] += int(a.get(LLM_INPUT) or 0)
            line[1] += int(a.get(LLM_OUTPUT) or 0)
        if not present.isdisjoint(HANGUP_KEYS):
            self.hangup = True
            self.signal_at = self.signal_at or arrival
        if has_cost and _is_framework_span(rec):
            self.framework_cost_spans += 1

    def _add_turn(self, idx: int) -> None:
        if 0 <= idx < TURN_BITS:
            self.turn_bits |= 1 << idx
        else:
            self._set("turn_idx_other").add(idx)

    def merge(self, other: GroupAgg) -> None:
        """Fold another group into this one (several instances on one side)."""
        self.spans += other.spans
        self.outer_llm += other.outer_llm
        self.iter0_llm += other.iter0_llm
        self.barge_ins += other.barge_ins
        self.tool_calls += other.tool_calls
        self.tts_spans += other.tts_spans
        self.errors += other.errors
        self.redactions += other.redactions
        self.framework_cost_spans += other.framework_cost_spans
        self.turn_bits |= other.turn_bits
        if other.turn_idx_other:
            self._set("turn_idx_other").update(other.turn_idx_other)
        if other.ttfb_ms:
            self._list("ttfb_ms").extend(other.ttfb_ms)
        if other.ttfb_turns:
            self._list("ttfb_turns").extend(other.ttfb_turns)
        if other.turn_ms:
            self._list("turn_ms").extend(other.turn_ms)
        if other.test_run_ids:
            self._set("test_run_ids").update(other.test_run_ids)
        self.resource = self.resource or other.resource
        if other.error_layers:
            layers = self._dict("error_layers")
            for k, n in other.error_layers.items():
                layers[k] = layers.get(k, 0) + n
        self.error_layer = self.error_layer or other.error_layer
        self.disconnect_reason = self.disconnect_reason or other.disconnect_reason
        if other.ttft_ms:
            self._list("ttft_ms").extend(other.ttft_ms)
        for comp in ("stt", "tts", "telephony", "realtime"):
            theirs: dict[str, Decimal] = getattr(other, comp)
            if not theirs:
                continue
            mine: dict[str, Decimal] = self._dict(comp)
            for k, v in theirs.items():
                mine[k] = mine.get(k, Decimal(0)) + v
        for k, (i, o) in other.llm.items():
            line = self._dict("llm").setdefault(k, [0, 0])
            line[0] += i
            line[1] += o
        self.hangup |= other.hangup
        self.root_ended |= other.root_ended
        self.root_error = self.root_error or other.root_error
        self.direction = self.direction or other.direction
        self.provider_mode = self.provider_mode or other.provider_mode
        self.last_arrival = max(self.last_arrival, other.last_arrival)
        if other.signal_at is not None:
            self.signal_at = other.signal_at if self.signal_at is None else min(self.signal_at, other.signal_at)

    @property
    def turns(self) -> int:
        distinct = self.turn_bits.bit_count() + len(self.turn_idx_other)
        if distinct:
            return distinct
        if self.outer_llm:
            return self.outer_llm
        if self.iter0_llm:
            return self.iter0_llm
        return len(self.ttfb_ms)


@dataclass(slots=True)
class CallState:
    """Everything otel-patter knows about one call, rebuilt from its WAL after a restart."""

    call_id: str
    reldir: str
    groups: dict[tuple[str, str | None], GroupAgg] = field(default_factory=dict)
    seen: SeenKeys = field(default_factory=SeenKeys)  # (trace id, span id) keys counted, as a set of tuples
    trace_id: str | None = None
    start_ns: int = 0
    end_ns: int = 0
    revision: int = 1
    final: bool = False
    final_reason: str | None = None
    finalize_requested_at: float | None = None
    warnings: dict[str, str] = _NO_DICT  # a shared read-only empty until the first warning (_sides)
    dirty: bool = True
    final_at: float | None = None  # wall time the call last became final
    last_write: float = 0.0  # wall time of the last envelope write
    sdk: Any = None  # processors.sdk_report.SdkReports: the SDK's own call reports (sdk_ingest), if any
    due_at: float | None = None  # the deadline of its live entry in rollup's deadline heap (older ones are stale)
    write_queued: bool = False  # it has an entry in rollup's heap of envelopes due

    def add(self, rec: SpanRecord, arrival: float) -> bool:
        """Count one span; False (and nothing changes) when the call already counted it (restart replay; live
        batches come through `add_planned`, their keys searched once in `assign`)."""
        key = (rec.trace_id, rec.span_id)
        packed = SeenKeys.pack(key)
        if self.seen.has_packed(key, packed):
            return False
        self.add_planned([rec], [packed], arrival)
        return True

    def add_planned(self, recs: list[SpanRecord], packed: list[bytes | None], arrival: float) -> None:
        """Count spans `assign` planned for this call. It found each key new (to this call and to the batch) and
        packed it (`packed[i]` = `SeenKeys.pack(recs[i].key)`), and nothing changes the call in between, so the
        keys are not searched again. The WAL replay uses `add`, which dedupes."""
        self.dirty = True  # first: whatever a span below changes is written with the next envelope
        seen = self.seen
        groups = self.groups
        last_resource: dict[str, Any] | None = None
        instance, resource_side, run_id = "", None, None
        for rec, b in zip(recs, packed, strict=True):
            if b is not None:
                seen._add_new(b)
            else:
                seen.add((rec.trace_id, rec.span_id))
            if self.trace_id is None:
                self.trace_id = rec.trace_id
            start_ns = rec.start_ns
            if start_ns and (not self.start_ns or start_ns < self.start_ns):
                self.start_ns = start_ns
            if rec.end_ns > self.end_ns:
                self.end_ns = rec.end_ns
            resource = rec.resource
            if resource is not last_resource:  # the records of one request share one resource dict: read it once
                last_resource = resource
                instance = str(resource.get("service.instance.id") or "")
                resource_side = resource.get("patter.side")
                run_id = resource.get(TEST_RUN_KEY)
            side = rec.attrs.get("patter.side") or resource_side  # the span's side, else its resource's
            gkey = (instance, side if side in SIDES else None)
            group = groups.get(gkey)
            if group is None:
                group = groups[gkey] = GroupAgg()
            group.add(rec, arrival, run_id)

    def sides(self) -> dict[str, GroupAgg]:
        """Resolve every group to a side and fold the groups of each side together.

        Read-only for callers: a finalization asks three times in a row (envelope, metrics, summary), so the
        last answer is kept (one call's, until a span is added to it)."""
        global _sides_memo
        memo = _sides_memo
        if memo is not None and memo[0] is self and memo[1] == len(self.seen) and memo[2] == len(self.groups):
            return memo[3]
        out = self._sides()
        _sides_memo = (self, len(self.seen), len(self.groups), out)
        return out

    def _sides(self) -> dict[str, GroupAgg]:
        declared: dict[str, set[str]] = {}
        for instance, side in self.groups:
            if side is not None:
                declared.setdefault(instance, set()).add(side)
        out: dict[str, GroupAgg] = {}
        for (instance, side), group in sorted(self.groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if side is None:
                options = declared.get(instance, set())
                if len(options) > 1:
                    if self.warnings is _NO_DICT:
                        self.warnings = {}
                    self.warnings["side_conflict"] = (
                        f"spans without patter.side from one instance that declared {sorted(options)}; "
                        "counted as uut"
                    )
                side = next(iter(options)) if len(options) == 1 else "uut"
            out.setdefault(side, GroupAgg()).merge(group)
        return out
