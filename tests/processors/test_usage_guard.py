"""The usage guard's per-key-set cache stays bounded, whatever one request's attributes are."""

from __future__ import annotations

from otel_patter.component import TraceBatch
from otel_patter.processors.usage_guard import _USAGE_KEYS_MAX, UsageGuard
from otel_patter.selfmetrics import SelfMetrics
from otel_patter.spans import flatten
from tests.otlp import request, span


def test_one_request_of_many_distinct_key_sets_keeps_the_cache_within_its_bound() -> None:
    # attacker-chosen keys: every span its own key set
    spans = [span("x", {f"k{i}": "v", "patter.cost.tts_chars": 12}) for i in range(2 * _USAGE_KEYS_MAX + 10)]
    batch = TraceBatch(request=request(spans), transport="grpc", arrival=0.0)
    batch.records = list(flatten(batch.request))
    guard = UsageGuard(SelfMetrics())
    guard.consume(batch)
    assert len(guard._usage_keys) <= _USAGE_KEYS_MAX
    assert len(batch.records) == len(spans)  # nothing judged invalid
