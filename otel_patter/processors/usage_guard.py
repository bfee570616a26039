"""Drop spans that cannot be true, before they reach a call's USD or a file name.

Spans with malformed ids are dropped too: they would corrupt dedupe.

NaN, infinite, negative or absurd usage (more than 1440 minutes, 86400 seconds, 10M
chars or 10M tokens on one span) is dropped, counted and reported in the request's
`partial_success`; the rest of the request succeeds (DESIGN.md "Ingest").
"""

from __future__ import annotations

import math
import sys

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_patter.component import Stage, TraceBatch
from otel_patter.selfmetrics import SelfMetrics
from otel_patter.spans import SpanRecord

LIMITS: dict[str, float] = {
    "patter.cost.telephony_minutes": 1440,
    "patter.cost.realtime_minutes": 1440,
    "patter.cost.stt_seconds": 86400,
    "patter.cost.tts_chars": 10_000_000,
    "patter.cost.llm_input_tokens": 10_000_000,
    "patter.cost.llm_output_tokens": 10_000_000,
    "patter.latency.ttfb_ms": 86_400_000,
    "patter.latency.turn_ms": 86_400_000,
}
_PREFIXES = ("patter.cost.", "patter.latency.")
_USAGE_KEYS_MAX = 1024  # key sets whose usage keys are kept (keys can be attacker-chosen)


def usage_problem(key: str, value: object) -> str | None:
    """Why a usage value is unusable, or None when it is fine."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN or infinite"
    if value < 0:
        return "negative"
    limit = LIMITS.get(key)
    if limit is not None and value > limit:
        return f"over {limit:g}"
    return None


class UsageGuard(Stage):
    def __init__(self, metrics: SelfMetrics) -> None:
        self.metrics = metrics
        # a key set's usage keys (`_check_record`): a pure function of the set, kept across requests (an app sends
        # the same few key sets in every request); bounded
        self._usage_keys: dict[tuple[str, ...], tuple[str, ...]] = {}

    def consume(self, batch: TraceBatch) -> None:
        """Drop invalid spans from `batch.request` (and from `batch.records` when it was flattened first)."""
        if batch.records:
            self._consume_records(batch)
            return
        for rs in batch.request.resource_spans:
            for ss in rs.scope_spans:
                spans = ss.spans
                for i in range(len(spans) - 1, -1, -1):
                    problem = self._check(spans[i])
                    if problem is not None:
                        del spans[i]
                        self.metrics.spans_rejected.labels("invalid_span").inc()
                        batch.reject(1, f"invalid span: {problem}")

    def _consume_records(self, batch: TraceBatch) -> None:
        """The same decisions read from the flat records (no second pass over the protobuf attributes);
        a record whose verdict the flat view cannot settle exactly is judged on its protobuf span."""
        verdicts: dict[int, str] = {}
        exact: list[int] = []
        usage_keys = self._usage_keys
        for i, rec in enumerate(batch.records):
            problem = _check_record(rec, usage_keys)
            if problem is _EXACT:
                exact.append(i)
            elif problem is not None:
                verdicts[i] = problem  # type: ignore[assignment]
        if not verdicts and not exact:
            return
        i = 0
        for rs in batch.request.resource_spans:
            for ss in rs.scope_spans:
                spans = ss.spans
                first = i
                i += len(spans)
                for j in exact:
                    if first <= j < i:
                        problem = self._check(spans[j - first])
                        if problem is not None:
                            verdicts[j] = problem
                for k in range(len(spans) - 1, -1, -1):  # the order the protobuf pass reports in
                    problem = verdicts.get(first + k)
                    if problem is not None:
                        del spans[k]
                        self.metrics.spans_rejected.labels("invalid_span").inc()
                        batch.reject(1, f"invalid span: {problem}")
        if verdicts:
            batch.records = [r for n, r in enumerate(batch.records) if n not in verdicts]

    @staticmethod
    def _check(span: Span) -> str | None:
        if len(span.trace_id) != 16 or len(span.span_id) != 8 or len(span.parent_span_id) not in (0, 8):
            return "trace id must be 16 bytes and span ids 8"
        for kv in span.attributes:
            key = kv.key
            if key.startswith(_PREFIXES):
                v = kv.value
                kind = v.WhichOneof("value")
                value = getattr(v, kind) if kind else None
                problem = usage_problem(key, value)
                if problem is not None:
                    return f"{key} {problem}"
        return None


_EXACT = object()  # the flat record cannot tell: judge the protobuf span
_LIMIT_GET = LIMITS.get
_FLOAT_MAX = sys.float_info.max  # the bound of a key with no limit: only inf is above it
_NON_FINITE = frozenset({"nan", "inf", "-inf"})  # how a flat record spells a NaN or infinite double


def _check_record(rec: SpanRecord, usage_keys: dict[tuple[str, ...], tuple[str, ...]]) -> str | object | None:
    """`UsageGuard._check` on a flat record: ids are hex there, values plain. Strings that may stand for a
    non-finite double, and attributes with repeated keys (a flat dict keeps only the last), go to `_EXACT`.
    `usage_keys` caches, per request, which keys of a key set are usage keys (its records repeat a few sets)."""
    if len(rec.trace_id) != 32 or len(rec.span_id) != 16 or len(rec.parent_span_id) not in (0, 16):
        return "trace id must be 16 bytes and span ids 8"
    attrs = rec.attrs
    if type(attrs) is not dict:  # DuplicateKeys: the protobuf span has more than the dict shows
        return _EXACT
    ks = tuple(attrs)
    keys = usage_keys.get(ks)
    if keys is None:
        if len(usage_keys) >= _USAGE_KEYS_MAX:  # per new set: one request's many sets stay bounded too
            usage_keys.clear()
        keys = usage_keys[ks] = tuple(k for k in ks if k.startswith(_PREFIXES))
    for key in keys:
        value = attrs[key]
        t = type(value)
        if (t is int or t is float) and 0 <= value <= _LIMIT_GET(key, _FLOAT_MAX):
            continue  # the common case, what `usage_problem` accepts (NaN and inf fail the comparison)
        if t is str and value in _NON_FINITE:
            return _EXACT
        problem = usage_problem(key, value)
        if problem is not None:
            return f"{key} {problem}"
    return None
