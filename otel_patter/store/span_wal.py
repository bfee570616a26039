"""The durability stage: make a batch's write plan durable before the client is answered.

Order matters for restarts: the index entry (call id -> directory) is appended before
the call's spans, so recovery always finds a WAL it can attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otel_patter.component import Stage, TraceBatch
from otel_patter.selfmetrics import SelfMetrics
from otel_patter.store.envelope_store import EnvelopeStore, StoreError

if TYPE_CHECKING:
    from otel_patter.processors.rollup import WritePlan


class SpanWal(Stage):
    def __init__(self, store: EnvelopeStore, metrics: SelfMetrics) -> None:
        self.store = store
        self.metrics = metrics

    def consume(self, batch: TraceBatch) -> None:
        try:
            write_plan(self.store, batch.plan, batch.arrival)
        except StoreError:
            self.metrics.store_errors.labels("wal").inc()
            raise


def write_plan(store: EnvelopeStore, plan: WritePlan, arrival: float) -> None:
    """Append rollup's WritePlan: index entries, then one append per call, then the spans still pending."""
    lines = EnvelopeStore.wal_lines
    resources: dict[int, Any] = {}  # the request's resource dicts, encoded once (ids live as long as the plan)
    store.append_index(plan.index)
    for cid, recs in plan.by_call.items():
        store.append_wal_bytes(plan.reldirs[cid], lines(recs, arrival, resources=resources))
    if plan.pending:
        store.append_pending_bytes(lines(plan.pending, arrival, pending=True, resources=resources))
