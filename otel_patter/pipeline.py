"""The one place that knows where a span goes next.

    receivers (gRPC :4317, HTTP :4318) -> decode
      -> UsageGuard   drop spans with impossible ids or usage (partial_success)
      -> PiiProcessor scrub keys and values in place
      -> flatten      one flat record per span
      -> Rollup.assign  call id, side, duplicates, pending  (decides, changes nothing)
      -> SpanWal      make it durable: WAL, pending log, index (refuse on failure)
      -> Rollup.apply   fold into per-call aggregates; tick() finalizes and writes envelopes
    -> answer the client (ack after append)

Metrics and logs are scrubbed by the same PII rules and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_patter.component import TraceBatch
from otel_patter.config import Config
from otel_patter.pricing import PriceBook
from otel_patter.processors.pii import PiiProcessor
from otel_patter.processors.rollup import RollupProcessor
from otel_patter.processors.usage_guard import UsageGuard
from otel_patter.receivers.decode import Unavailable
from otel_patter.selfmetrics import SelfMetrics
from otel_patter.spans import flatten
from otel_patter.store.envelope_store import EnvelopeStore, StoreError
from otel_patter.store.hash_key import load_or_create_hash_key
from otel_patter.store.span_wal import SpanWal

log = logging.getLogger("otel_patter.pipeline")
TICK_S = 0.25


@dataclass(slots=True)
class ExportResult:
    rejected: int = 0
    message: str = ""


class Pipeline:
    def __init__(self, cfg: Config, metrics: SelfMetrics | None = None) -> None:
        from pathlib import Path

        self.cfg = cfg
        self.metrics = metrics or SelfMetrics()
        self.store = EnvelopeStore(Path(cfg.store.log_dir), fsync=cfg.store.fsync,
                                   retention_days=cfg.store.retention_days)
        self.guard = UsageGuard(self.metrics)
        hash_key = None
        if cfg.pii.phone_mode == "hash_only" or cfg.store.redact_phone == "hash_only":
            hash_key = load_or_create_hash_key(Path(cfg.store.log_dir))
        self.pii = PiiProcessor(cfg.pii, hash_key=hash_key)
        self.rollup = RollupProcessor(cfg, self.store, PriceBook.load(cfg.pricing, cfg.llm_pricing), self.metrics)
        self.wal = SpanWal(self.store, self.metrics)
        self._redactions_synced: dict[str, int] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._last_sweep = 0.0

    async def start(self) -> None:
        await self.store.start()
        await self.pii.start()
        await self.rollup.start()
        self._ticker = asyncio.create_task(self._tick_forever(), name="otel-patter-tick")

    async def shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.rollup.shutdown()
        await self.pii.shutdown()
        await self.store.shutdown()

    @property
    def ready(self) -> bool:
        return self.rollup.ready and self.store.error is None

    def readiness(self) -> dict[str, str]:
        return {
            "rollup": "ok" if self.rollup.ready else "recovering",
            "store": "ok" if self.store.error is None else f"failing: {self.store.error}",
        }

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.rollup.tick()
                now = time.time()
                if now - self._last_sweep > 3600:
                    self._last_sweep = now
                    self.store.sweep_retention(now)
            except Exception:  # the ticker must survive anything one call can throw at it
                log.exception("rollup tick failed")

    def _sync_redaction_metrics(self) -> None:
        for rule, n in self.pii.counts.items():
            delta = n - self._redactions_synced.get(rule, 0)
            if delta > 0:
                self.metrics.redactions.labels(rule).inc(delta)
                self._redactions_synced[rule] = n

    # -- signals -------------------------------------------------------------------------------
    def consume_traces(self, request: ExportTraceServiceRequest, transport: str) -> ExportResult:
        if not self.rollup.ready:
            raise Unavailable("otel-patter is recovering its state", retry_after=1.0)
        batch = TraceBatch(request=request, transport=transport, arrival=time.time())
        self.metrics.requests.labels("traces", transport).inc()
        self.metrics.spans_received.labels(transport).inc(
            sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans))
        self.guard.consume(batch)
        self.pii.consume(batch)
        self._sync_redaction_metrics()
        batch.records = list(flatten(batch.request))
        self.rollup.assign(batch)
        try:
            self.wal.consume(batch)
        except StoreError as e:
            self.metrics.refused.labels("traces", "store").inc()
            raise Unavailable(f"store unavailable: {e.strerror}", retry_after=5.0) from e
        self.rollup.apply(batch)
        return ExportResult(batch.rejected, "; ".join(batch.messages))

    def consume_metrics(self, request: ExportMetricsServiceRequest, transport: str) -> ExportResult:
        self.metrics.requests.labels("metrics", transport).inc()
        points = 0
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if kind:
                        points += len(getattr(m, kind).data_points)
        self.metrics.metric_points.inc(points)
        self.pii.scrub_metrics(request)
        self._sync_redaction_metrics()
        return ExportResult()

    def consume_logs(self, request: ExportLogsServiceRequest, transport: str) -> ExportResult:
        self.metrics.requests.labels("logs", transport).inc()
        self.metrics.log_records.inc(
            sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs))
        self.pii.scrub_logs(request)
        self._sync_redaction_metrics()
        return ExportResult()
