"""The durability stage: make a batch's write plan durable before the client is answered.

Order matters for restarts: the index entry (call id -> directory) is appended before
the call's spans, so recovery always finds a WAL it can attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    store.append_index(plan.index)
    for cid, recs in plan.by_call.items():
        store.append_wal_bytes(plan.reldirs[cid], lines([(r.to_json(), r.side) for r in recs], arrival))
    if plan.pending:
        store.append_pending_bytes(lines([(r.to_json(), None) for r in plan.pending], arrival))
