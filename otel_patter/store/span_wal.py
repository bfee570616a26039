"""The durability stage: make a batch's write plan durable before the client is answered.

Order matters for restarts: the index entry (call id -> directory) is appended before
the call's spans, so recovery always finds a WAL it can attribute.
"""

from __future__ import annotations

from otel_patter.component import TraceBatch
from otel_patter.selfmetrics import SelfMetrics
from otel_patter.store.envelope_store import EnvelopeStore, StoreError


class SpanWal:
    def __init__(self, store: EnvelopeStore, metrics: SelfMetrics) -> None:
        self.store = store
        self.metrics = metrics

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    def consume(self, batch: TraceBatch) -> None:
        plan = batch.plan
        line = EnvelopeStore.wal_line
        try:
            self.store.append_index(plan.index)
            for cid, recs in plan.by_call.items():
                self.store.append_wal(plan.reldirs[cid], [line(r.to_json(), r.side, batch.arrival) for r in recs])
            self.store.append_pending([line(r.to_json(), None, batch.arrival) for r in plan.pending])
        except StoreError:
            self.metrics.store_errors.labels("wal").inc()
            raise
