"""The one place that knows where a span goes next.

    receivers (gRPC :4317, HTTP :4318) -> decode
      -> flatten      one flat record per span (the one pass over every attribute of the protobuf)
      -> UsageGuard   drop spans with impossible ids or usage (partial_success), judged on the records
      -> PiiProcessor scrub keys and values in place (records read again only if it changed something)
      -> Rollup.assign  call id, side, duplicates, pending  (decides, changes nothing)
      -> SpanWal      make it durable: WAL, pending log, index (refuse on failure)
      -> Forwarder    the sanitized request into every downstream's persistent queue (refuse on failure)
      -> Rollup.apply   fold into per-call aggregates; tick() finalizes and writes envelopes
    -> answer the client (ack after append)

Metrics and logs are scrubbed by the same PII rules, counted and forwarded.
On finalization: Forwarder queues a `patter.call.summary` span (rollup `before_final`: before the call is
final on disk, so a crash in between finalizes it again after restart), then CallMetrics (`patter_*` on
/metrics, `on_final`). Forward queues send in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_patter.component import TraceBatch
from otel_patter.config import Config
from otel_patter.exporters.forward import Forwarder
from otel_patter.exporters.metrics import CallMetrics
from otel_patter.memlimit import MemoryLimiter
from otel_patter.pricing import PriceBook
from otel_patter.processors.pii import PiiProcessor
from otel_patter.processors.rollup import RollupProcessor
from otel_patter.processors.sdk_report import SdkReportProcessor
from otel_patter.processors.usage_guard import UsageGuard
from otel_patter.receivers.decode import Unavailable
from otel_patter.selfmetrics import LabelledChildren, SelfMetrics
from otel_patter.spans import flatten
from otel_patter.store.envelope_store import EnvelopeStore, StoreError
from otel_patter.store.hash_key import load_or_create_hash_key
from otel_patter.store.span_wal import SpanWal

log = logging.getLogger("otel_patter.pipeline")
TICK_S = 0.25
TICK_SLICE_S = 0.005  # the longest the ticker holds the event loop before letting requests in
STORE_PROBE_S = 1.0  # while the store fails, how often the ticker checks whether the disk takes writes again


@dataclass(slots=True)
class ExportResult:
    rejected: int = 0
    message: str = ""


class Pipeline:
    def __init__(self, cfg: Config, metrics: SelfMetrics | None = None) -> None:
        from pathlib import Path

        self.cfg = cfg
        self.metrics = metrics or SelfMetrics()
        ops = None
        if "OTEL_PATTER_FAULTS" in os.environ:  # TEST-ONLY disk fault injection (store/faults.py)
            from otel_patter.store.faults import from_env

            ops = from_env(Path(cfg.store.log_dir), cfg.store.fsync)
        self.store = EnvelopeStore(Path(cfg.store.log_dir), fsync=cfg.store.fsync,
                                   retention_days=cfg.store.retention_days, ops=ops)
        # soft memory limit (limits.memory_mib): receivers hold request bytes against it and refuse over it
        self.memory = MemoryLimiter(cfg.limits.memory_mib,
                                    on_refuse=lambda signal: self.metrics.refused.labels(signal, "memory").inc())
        self.guard = UsageGuard(self.metrics)
        hash_key = None
        if cfg.pii.phone_mode == "hash_only" or cfg.store.redact_phone == "hash_only":
            hash_key = load_or_create_hash_key(Path(cfg.store.log_dir))
        self.pii = PiiProcessor(cfg.pii, hash_key=hash_key)
        self.rollup = RollupProcessor(cfg, self.store, PriceBook.load(cfg.pricing, cfg.llm_pricing), self.metrics)
        self.wal = SpanWal(self.store, self.metrics)
        self.forward = Forwarder(cfg, self.metrics)
        self.call_metrics = CallMetrics(cfg.metrics, self.metrics.registry, self.rollup.book,
                                        self.rollup.open_calls)
        self.rollup.before_final.append(self.forward.on_final)  # the summary span: queued before final on disk
        self.rollup.on_final.append(self.call_metrics.on_final)
        self.rollup.on_reopen.append(self.call_metrics.on_reopen)  # after a restart: count only the difference
        # sdk_ingest: the SDK's own call reports -> sanitize -> the call's WAL -> rollup (reconciliation)
        self.sdk_reports = SdkReportProcessor(cfg, self.pii, self.rollup, self.metrics)
        self.rollup.on_final.append(self.sdk_reports.on_final)
        self._redactions_synced: dict[str, int] = {}
        self._child = LabelledChildren()  # per request: the traces path's labelled counters, looked up once
        self._ticker: asyncio.Task[None] | None = None
        self._last_sweep = 0.0
        self._last_probe = 0.0

    async def start(self) -> None:
        await self.store.start()
        await self.pii.start()
        await self.rollup.start()
        await self.forward.start()
        self._ticker = asyncio.create_task(self._tick_forever(), name="otel-patter-tick")

    async def shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.rollup.shutdown()
        await self.forward.shutdown()
        await self.pii.shutdown()
        await self.store.shutdown()

    @property
    def ready(self) -> bool:
        return self.rollup.ready and self.store.error is None

    def readiness(self) -> dict[str, str]:
        return {
            "rollup": "ok" if self.rollup.ready else "recovering",
            # ready meanwhile: a call a request touches is loaded first
            **({"recovery": f"loading {self.rollup.calls_loading} open calls"} if self.rollup.recovering else {}),
            "store": "ok" if self.store.error is None else f"failing: {self.store.error}",
            **({"memory": self.memory.status()} if self.memory.enabled else {}),  # refuses, never unready
            **self.forward.readiness(),  # a failing downstream is reported but never makes us unready
        }

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                if self.store.error is not None and time.monotonic() - self._last_probe >= STORE_PROBE_S:
                    self._last_probe = time.monotonic()
                    self.store.probe()  # readiness comes back when the disk does, even with no client sending
                budget = TICK_SLICE_S
                while not self.rollup.tick(budget_s=budget):  # a burst of calls ending: slices, with requests
                    yielded = time.perf_counter()  # in between, so finalizing never holds an ack for long,
                    await asyncio.sleep(0)
                    # and then as long as those requests took: calls are finalized as fast as they are opened
                    budget = max(TICK_SLICE_S, min(0.1, time.perf_counter() - yielded))
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
        self._child(self.metrics.requests, "traces", transport).inc()
        # one pass over the protobuf attributes: the guard judges the flat records (and drops bad spans from
        # both); PII scrubs the protobuf; only when it changed something are the records read again
        batch.records = list(flatten(batch.request))
        self._child(self.metrics.spans_received, transport).inc(len(batch.records))  # one record a span
        self.guard.consume(batch)
        if not self.pii.consume_flat(batch):
            batch.records = list(flatten(batch.request))
            self._sync_redaction_metrics()
        try:
            self.rollup.assign(batch)
        except OSError as e:  # after a restart: a call this request names could not be replayed from disk yet
            self.metrics.refused.labels("traces", "store").inc()
            raise Unavailable(f"call state unavailable: {e.strerror or e}", retry_after=1.0) from e
        try:
            self.wal.consume(batch)
        except StoreError as e:
            self.metrics.refused.labels("traces", "store").inc()
            raise Unavailable(f"store unavailable: {e.strerror}", retry_after=5.0) from e
        try:
            self.forward.consume(batch)
        except StoreError as e:
            self.metrics.refused.labels("traces", "store").inc()
            raise Unavailable(f"forward queue unavailable: {e.strerror}", retry_after=5.0) from e
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
        self._forward_signal("metrics", request, points)
        return ExportResult()

    def consume_sdk_report(self, payload: object) -> str:
        """One SDK call report (receivers/sdk_ingest): `accepted`, `duplicate` or `ignored`. Raises Unavailable
        while recovering or when the store fails (the SDK never retries; the call still ends by its spans)."""
        if not self.rollup.ready:
            raise Unavailable("otel-patter is recovering its state", retry_after=1.0)
        try:
            outcome = self.sdk_reports.consume(payload, time.time())
        except StoreError as e:
            self.metrics.refused.labels("sdk_report", "store").inc()
            raise Unavailable(f"store unavailable: {e.strerror}", retry_after=5.0) from e
        finally:
            self._sync_redaction_metrics()
        return outcome

    def consume_logs(self, request: ExportLogsServiceRequest, transport: str) -> ExportResult:
        self.metrics.requests.labels("logs", transport).inc()
        records = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        self.metrics.log_records.inc(records)
        self.pii.scrub_logs(request)
        self._sync_redaction_metrics()
        self._forward_signal("logs", request, records)
        return ExportResult()

    def _forward_signal(self, signal: str, request: ExportMetricsServiceRequest | ExportLogsServiceRequest,
                        items: int) -> None:
        try:
            self.forward.consume_signal(signal, request, items)
        except StoreError as e:
            self.metrics.refused.labels(signal, "store").inc()
            raise Unavailable(f"forward queue unavailable: {e.strerror}", retry_after=5.0) from e
