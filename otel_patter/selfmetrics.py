"""Self-metrics (`otel_patter_*`): one registry per running service, so tests can run several."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class LabelledChildren:
    """`family.labels(*values)`, each child looked up once: prometheus_client's `labels()` takes a lock and builds
    its key on every call, which a finalization pays ~18 times. Bounded as the label values are (allowlists,
    tenant cap, fixed reasons)."""

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def __call__(self, family: Any, *values: str) -> Any:
        key = (id(family), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child


class SelfMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("otel_patter_requests", "OTLP export requests received",
                                ["signal", "transport"], registry=r)
        self.refused = Counter("otel_patter_requests_refused", "OTLP requests refused, by reason",
                               ["signal", "reason"], registry=r)
        self.spans_received = Counter("otel_patter_spans_received", "Spans received", ["transport"], registry=r)
        self.spans_rejected = Counter("otel_patter_spans_rejected",
                                      "Spans dropped as invalid and reported in partial_success",
                                      ["reason"], registry=r)
        self.spans_duplicate = Counter("otel_patter_spans_duplicate",
                                       "Spans seen before (client retries), not counted again", registry=r)
        self.spans_unattributed = Counter("otel_patter_spans_unattributed",
                                          "Spans forwarded but not rolled up into a call", ["reason"],
                                          registry=r)
        self.spans_pending = Gauge("otel_patter_spans_pending", "Spans waiting for their call id",
                                   registry=r)
        self.metric_points = Counter("otel_patter_metric_points_received", "Metric data points received",
                                     registry=r)
        self.log_records = Counter("otel_patter_log_records_received", "Log records received", registry=r)
        self.store_errors = Counter("otel_patter_store_errors", "Store write failures", ["op"], registry=r)
        self.calls_finalized = Counter("otel_patter_calls_finalized", "Calls finalized, by signal",
                                       ["reason"], registry=r)
        self.calls_open = Gauge("otel_patter_calls_open", "Calls not yet final", registry=r)
        self.envelope_writes = Counter("otel_patter_envelope_writes", "Envelope files written (in progress and final)",
                                       registry=r)
        self.redactions = Counter("otel_patter_pii_redactions", "PII redactions, by rule", ["rule"],
                                  registry=r)
        # sdk_ingest: the SDK's own call reports (a separate family from patter_cost_usd_total, so sums over
        # that one never count the same call's spend twice)
        self.sdk_reports = Counter("otel_patter_sdk_reports", "SDK call reports received on sdk_ingest, by kind "
                                   "(initiated, call_start, call_end) and outcome", ["kind", "outcome"], registry=r)
        self.sdk_cost = Counter("patter_sdk_cost_usd", "USD the SDK itself reported per call (its call_end "
                                "report), by component", ["component"], registry=r)
        self.reconcile_mismatch = Counter("patter_reconcile_mismatch_calls",
                                          "Finalized calls whose span-derived USD differs from the SDK's own "
                                          "report by more than sdk_ingest.tolerance_usd", registry=r)
