"""Forwarding: the sanitized telemetry and each call's summary span to every configured downstream.

One `Downstream` per `forward:` target (plus `OTEL_PATTER_FORWARD_ENDPOINT`), each with its
own persistent queue (`queue.py`) and a background sender task:

- `consume(batch)` (ingest path, before the client is answered) serializes the sanitized
  request once and appends the bytes to every queue; a failed append raises `StoreError`
  so the receiver answers UNAVAILABLE and the client retries. Nothing waits for a
  downstream: a dead one only fills its own queue (bounded; the oldest data is dropped
  and counted).
- the sender sends the head record, together with the records queued behind it of the same
  signal up to `batch_max_bytes` (OTLP requests concatenated are one request holding all their
  resources: no re-encoding), so a downstream far away still takes what arrives, one round trip
  a batch. On success or a final refusal the batch is acknowledged (the ack position is
  persisted); on a retryable failure it waits (exponential backoff from `retry_initial_interval`
  doubling to `retry_max_interval`, ±20 % jitter, or the server's RetryInfo / Retry-After) and
  tries again from the same record, so per downstream data leaves in the order it arrived.
  A batch refused for good is split: its records are sent one at a time, so only the one the
  downstream refuses (its content, or its size) is dropped; refused for its size, it also halves
  the bound for later batches. After a batch timed out, the next attempt sends half as much, and
  so on down to one record, until a send succeeds.
- `on_final(state, envelope)` (rollup's `before_final` hook) enqueues a `patter.call.summary` span
  before the call is final on disk; a failed append raises `StoreError` and the finalization is
  retried, so a summary is never lost (after a crash at the wrong moment it may be queued twice,
  with the same span id).

Self-metrics (items are spans, metric data points or log records):
`otel_patter_forward_queue_bytes{downstream}`, `otel_patter_forward_sent_total{downstream}` (items),
`otel_patter_forward_dropped_total{downstream,reason}` (items; reason `queue_full`,
`rejected` (a final refusal), `partial_rejected` (partial_success), `corrupt`),
`otel_patter_forward_retries_total{downstream}` and `otel_patter_forward_failed_total{downstream}` (attempts).

A downstream whose host:port is one of our own listeners is refused at start: it would
loop our output back into us.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import socket
import time
from pathlib import Path
from typing import Any

from otel_patter.component import TraceBatch
from otel_patter.config import Config, ConfigError, ForwardTarget
from otel_patter.exporters.queue import CorruptRecord, Entry, PersistentQueue
from otel_patter.exporters.senders import SendResult, host_port, make_sender
from otel_patter.exporters.summary import build_summary, outcome
from otel_patter.processors.rollup_state import CallState
from otel_patter.selfmetrics import SelfMetrics
from otel_patter.store.envelope_store import StoreError

log = logging.getLogger("otel_patter.exporters.forward")

JITTER = 0.2


class ForwardMetrics:
    """The forward self-metrics, registered once per service registry."""

    def __init__(self, metrics: SelfMetrics) -> None:
        from prometheus_client import Counter, Gauge

        r = metrics.registry
        self.queue_bytes = Gauge("otel_patter_forward_queue_bytes", "Bytes waiting in a downstream's queue",
                                 ["downstream"], registry=r)
        self.sent = Counter("otel_patter_forward_sent", "Items (spans, data points, log records) delivered",
                            ["downstream"], registry=r)
        self.dropped = Counter("otel_patter_forward_dropped", "Items not delivered, by reason",
                               ["downstream", "reason"], registry=r)
        self.retries = Counter("otel_patter_forward_retries", "Send attempts that will be retried",
                               ["downstream"], registry=r)
        self.failed = Counter("otel_patter_forward_failed", "Send attempts that failed (retried or not)",
                              ["downstream"], registry=r)


class Downstream:
    def __init__(self, target: ForwardTarget, root: Path, fm: ForwardMetrics, *, fsync: bool) -> None:
        self.target = target
        self.name = target.name
        self.fm = fm
        self.queue = PersistentQueue(root / target.name, target.queue_max_bytes, fsync=fsync)
        self.sender = make_sender(target)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.inflight: set[int] = set()  # seqs of the records being sent right now
        self.inflight_gone: list[Entry] = []  # of those, dropped from the queue (full) while on the wire
        self.solo_through = 0  # records up to this seq go one a send (a batch of them was refused for good)
        self.batch_limit = target.batch_max_bytes  # halved when the downstream refuses a batch for its size
        # after a batch timed out: half of it a send at most, until the queue is empty (the backlog goes in batches
        # the downstream answered in time; growing back sooner sends a batch too big again, which may have arrived
        # all the same: each retry of it is a duplicate)
        self.retry_limit: int | None = None
        self.failures = 0  # consecutive failed attempts
        self.failing_since: float | None = None
        self.retrying = False  # the last attempt failed and waits to be retried (shutdown does not wait for it)
        self.last_error = ""
        self.last_success: float | None = None
        fm.queue_bytes.labels(self.name).set(0)
        for reason in ("queue_full", "rejected"):
            fm.dropped.labels(self.name, reason)
        fm.sent.labels(self.name)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.queue.open()
        if self.queue.recovered_records:
            log.info("forward %s: %d queued requests (%d bytes) recovered", self.name,
                     self.queue.recovered_records, self.queue.bytes, extra={"downstream": self.name})
        self.fm.queue_bytes.labels(self.name).set(self.queue.bytes)
        await self.sender.start()
        self.task = asyncio.create_task(self._run(), name=f"otel-patter-forward-{self.name}")

    async def shutdown(self) -> None:
        """Drain to a healthy downstream (the caller bounds the time); a failing one is not waited for:
        what is left stays queued on disk for the next start."""
        try:
            while self.task is not None and not self.task.done() and len(self.queue) and not self.retrying:
                await asyncio.sleep(0.02)
        finally:
            await self._stop()

    async def _stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        # a send cut short: what the queue dropped meanwhile was not delivered as far as we know
        self._count_queue_full(sum(e.items for e in self.inflight_gone))
        self.inflight, self.inflight_gone = set(), []
        await self.sender.close()
        self.queue.close()

    # -- enqueue ------------------------------------------------------------------------------
    def enqueue(self, signal: str, payload: bytes, items: int) -> None:
        """Durable append (raises StoreError); drops from the head are counted here."""
        dropped = self.queue.append(signal, payload, items)
        self._count_dropped(dropped)
        self.fm.queue_bytes.labels(self.name).set(self.queue.bytes)
        self.wake.set()

    def _count_dropped(self, dropped: list[Entry]) -> None:
        n = 0
        for e in dropped:
            if e.seq in self.inflight:
                self.inflight_gone.append(e)  # counted when its send resolves: it may still arrive
            else:
                n += e.items
        if n:
            self._count_queue_full(n)
            log.warning("forward %s: queue full (%d bytes); dropped the oldest %d items", self.name,
                        self.target.queue_max_bytes, n, extra={"downstream": self.name})

    # -- sending ------------------------------------------------------------------------------
    def backoff(self) -> float:
        t = self.target
        base = min(t.retry_max_interval, t.retry_initial_interval * (2 ** max(0, min(self.failures - 1, 30))))
        return base * random.uniform(1 - JITTER, 1 + JITTER)

    def _next_batch(self) -> tuple[list[Entry], bytes]:
        """The records to send next and their payloads concatenated; an unreadable head record is dropped."""
        while True:
            head = self.queue.peek()
            if head is None:
                return [], b""
            limit = self.batch_limit if self.retry_limit is None else min(self.retry_limit, self.batch_limit)
            if head.seq <= self.solo_through:
                limit = 0
            batch = self.queue.head_batch(limit)
            payloads: list[bytes] = []
            for e in batch:
                try:
                    payloads.append(self.queue.read(e))
                except OSError as err:
                    if payloads:  # send what comes before it; it is the head next time
                        break
                    if not isinstance(err, CorruptRecord) and err.errno != errno.ENOENT:
                        raise  # cannot read it now (EMFILE, ...): _run backs off and tries again
                    log.warning("forward %s: unreadable queue record dropped (%s)", self.name,
                                err.strerror or err, extra={"downstream": self.name})
                    if self.queue.pop(e.seq):
                        self.fm.dropped.labels(self.name, "corrupt").inc(e.items)
                    break
            if payloads:
                return batch[:len(payloads)], b"".join(payloads) if len(payloads) > 1 else payloads[0]

    async def _run(self) -> None:
        while True:
            try:
                batch, payload = self._next_batch()
            except OSError as e:
                log.warning("forward %s: cannot read the queue (%s); will retry", self.name, e.strerror or e,
                            extra={"downstream": self.name})
                await asyncio.sleep(self.target.retry_initial_interval)
                continue
            if not batch:
                self.wake.clear()
                await self.wake.wait()
                continue
            self.inflight, self.inflight_gone = {e.seq for e in batch}, []
            try:
                result = await self.sender.send(batch[0].signal, payload)
            except Exception as e:  # a sender bug must not stop forwarding for good
                log.exception("forward %s: send failed unexpectedly", self.name, extra={"downstream": self.name})
                result = SendResult(False, True, error=type(e).__name__)
            finally:
                self.inflight = set()
            delay = self._settle(batch, result, len(payload))
            self.fm.queue_bytes.labels(self.name).set(self.queue.bytes)
            if delay:
                self.wake.clear()
                await asyncio.sleep(delay)

    def _settle(self, batch: list[Entry], r: SendResult, size: int) -> float:
        """Account for one attempt (one batch of `size` bytes); the seconds to wait before the next one."""
        gone, self.inflight_gone = self.inflight_gone, []  # dropped from the queue (full) while on the wire
        items = sum(e.items for e in batch)
        if r.ok:  # the records the queue dropped meanwhile were delivered all the same
            self.failures, self.failing_since, self.last_success = 0, None, time.time()
            self.retrying = False
            self.fm.sent.labels(self.name).inc(max(0, items - r.rejected))
            if r.rejected:
                self.fm.dropped.labels(self.name, "partial_rejected").inc(min(r.rejected, items))
                log.warning("forward %s: downstream rejected %d items (partial success)", self.name, r.rejected,
                            extra={"downstream": self.name})
            self.queue.pop_through(batch[-1].seq)
            if not len(self.queue):
                self.retry_limit = None
            return 0.0
        self.fm.failed.labels(self.name).inc()
        gone_items = sum(e.items for e in gone)
        self._count_queue_full(gone_items)
        if len(batch) > 1 and not r.retryable:  # which of them it refuses: each gets its own answer, at once
            self.solo_through = batch[-1].seq  # (the downstream answered, so it is not failing)
            if r.too_large and self.batch_limit > size // 2:
                self.batch_limit = size // 2
                log.warning("forward %s: downstream refused a %d-byte batch for its size (%s); batches stay "
                            "within %d bytes from now on", self.name, size, r.error, self.batch_limit,
                            extra={"downstream": self.name})
            return 0.0
        left = items - gone_items
        self.failures += 1
        self.last_error = r.error
        # a batch that timed out may be more than the downstream answers within the timeout: half of it next, after
        # the backoff (it may still be busy with this one). Slow for this much is not down: neither failing nor
        # retrying (shutdown keeps draining)
        slow = len(batch) > 1 and r.timed_out
        if slow:
            self.retry_limit = size // 2
            log.warning("forward %s: a %d-byte batch timed out; sends carry at most %d bytes until the queue is "
                        "empty", self.name, size, self.retry_limit, extra={"downstream": self.name})
        self.retrying = r.retryable and not slow
        if self.failing_since is None and not slow:
            self.failing_since = time.time()
            log.warning("forward %s: send failed (%s); %s", self.name, r.error,
                        "will retry" if r.retryable else "not retryable, dropped", extra={"downstream": self.name})
        if not r.retryable:
            if left:
                self.fm.dropped.labels(self.name, "rejected").inc(left)
                self.queue.pop_through(batch[-1].seq)
            return 0.0
        if left:
            self.fm.retries.labels(self.name).inc()
        return r.retry_after if r.retry_after is not None else self.backoff()

    def _count_queue_full(self, items: int) -> None:
        if items:
            self.fm.dropped.labels(self.name, "queue_full").inc(items)

    # -- readiness ----------------------------------------------------------------------------
    def check(self) -> str:
        if self.failing_since is None:
            return "ok"
        for_s = time.time() - self.failing_since
        return (f"failing for {for_s:.0f}s ({self.last_error}); {len(self.queue)} requests, {self.queue.bytes} "
                "bytes queued; readiness is unaffected: data waits in the queue")


class Forwarder:
    """The forward stage: every downstream, fed from ingest and from finalization."""

    def __init__(self, cfg: Config, metrics: SelfMetrics) -> None:
        problems = loop_problems(cfg)
        if problems:
            raise ConfigError(problems)
        self.cfg = cfg
        self.fm = ForwardMetrics(metrics) if cfg.forward else None
        root = Path(cfg.store.log_dir) / "state" / "forward"
        self.downstreams = [Downstream(t, root, self.fm, fsync=cfg.store.fsync) for t in cfg.forward
                            ] if self.fm else []
        self.summaries = 0
        self.registry = metrics.registry
        wanted = set(cfg.metrics.otlp_push_downstreams)
        self.push_to = [d for d in self.downstreams if not wanted or d.name in wanted]
        self._pusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for d in self.downstreams:
            await d.start()
            log.info("forwarding to %s (%s %s)", d.name, d.target.protocol, d.target.endpoint,
                     extra={"downstream": d.name})
        if self.cfg.metrics.otlp_push_interval and self.push_to:
            self._pusher = asyncio.create_task(self._push_forever(), name="otel-patter-metrics-push")

    async def shutdown(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        for d in self.downstreams:
            await d.shutdown()

    # -- metrics push (metrics.otlp_push) ---------------------------------------------------------
    def push_metrics(self) -> int:
        """Enqueue the current `patter_*` values as one OTLP metrics request; the data points pushed."""
        from otel_patter.exporters.otlp_metrics import registry_to_otlp

        req = registry_to_otlp(self.registry, time.time_ns())
        points = sum(len(getattr(m, m.WhichOneof("data")).data_points)
                     for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
        if not points:
            return 0
        payload = req.SerializeToString()
        for d in self.push_to:
            try:
                d.enqueue("metrics", payload, points)
            except StoreError as e:  # cumulative values: the next push carries everything again
                log.warning("forward %s: metrics push enqueue failed (%s)", d.name, e.strerror,
                            extra={"downstream": d.name})
        return points

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.metrics.otlp_push_interval)
            try:
                self.push_metrics()
            except Exception:  # the pusher must survive anything
                log.exception("metrics push failed")

    # -- ingest ---------------------------------------------------------------------------------
    def consume(self, batch: TraceBatch) -> None:
        """Enqueue the sanitized request (rejected spans already removed). Raises StoreError."""
        if not self.downstreams:
            return
        items = sum(len(ss.spans) for rs in batch.request.resource_spans for ss in rs.scope_spans)
        if items:
            self._enqueue("traces", batch.request.SerializeToString(), items)

    def consume_signal(self, signal: str, request: Any, items: int) -> None:
        if self.downstreams and items:
            self._enqueue(signal, request.SerializeToString(), items)

    def _enqueue(self, signal: str, payload: bytes, items: int) -> None:
        for d in self.downstreams:
            d.enqueue(signal, payload, items)

    # -- finalization ---------------------------------------------------------------------------
    def on_final(self, state: CallState, envelope: dict[str, Any]) -> None:
        if not self.downstreams:
            return
        req = build_summary(envelope, outcome(state, envelope, self.cfg.metrics.tenant_attribute), time.time_ns())
        if req is None:
            return
        payload = req.SerializeToString()
        for d in self.downstreams:
            try:
                d.enqueue("traces", payload, 1)
            except StoreError as e:  # the call stays open and its finalization is retried
                log.warning("forward %s: summary enqueue failed (%s); finalization will be retried", d.name,
                            e.strerror, extra={"call_id": state.call_id, "downstream": d.name})
                raise
        self.summaries += 1

    def readiness(self) -> dict[str, str]:
        return {f"forward.{d.name}": d.check() for d in self.downstreams}


# -- loops back into us ------------------------------------------------------------------------------
_WILDCARD = ("0.0.0.0", "::", "")


def _listener(endpoint: str | None) -> tuple[str, int] | None:
    if not endpoint:
        return None
    host, _, port = endpoint.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        return None
    return (host.strip("[]").lower(), p) if p else None


def _addresses(host: str) -> set[str]:
    """What a host name means, as IP addresses (loopback names without asking DNS)."""
    h = host.strip("[]").lower()
    if h in ("localhost", "localhost.localdomain", "ip6-localhost") or h.endswith(".localhost"):
        return {"127.0.0.1", "::1"}
    try:
        return {str(ipaddress.ip_address(h.split("%", 1)[0]))}
    except ValueError:
        pass
    try:
        return {str(ipaddress.ip_address(info[4][0].split("%", 1)[0]))
                for info in socket.getaddrinfo(h, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError, ValueError):
        return set()


def _local_addresses() -> set[str]:
    out = {"127.0.0.1", "::1", "0.0.0.0", "::"}
    with contextlib.suppress(OSError, UnicodeError):
        out |= _addresses(socket.gethostname())
    return out


def _is_loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def loop_problems(cfg: Config) -> list[tuple[str, str]]:
    """A forward target that points at one of our own listeners (loopback, 0.0.0.0 and localhost alike)."""
    listeners = {name: _listener(ep) for name, ep in (
        ("receivers.otlp.grpc", cfg.receivers.otlp.grpc.endpoint),
        ("receivers.otlp.http", cfg.receivers.otlp.http.endpoint),
        ("admin", cfg.admin.endpoint))}
    problems: list[tuple[str, str]] = []
    local: set[str] | None = None
    for i, t in enumerate(cfg.forward):
        host, port = host_port(t.endpoint)
        for name, lst in listeners.items():
            if lst is None or lst[1] != port:
                continue
            target_addrs = _addresses(host)
            lhost = lst[0]
            if lhost in _WILDCARD:
                if local is None:
                    local = _local_addresses()
                hit = any(_is_loopback(a) or a in local for a in target_addrs)
            else:
                listen_addrs = _addresses(lhost)
                hit = bool(target_addrs & listen_addrs) or (
                    any(_is_loopback(a) for a in target_addrs) and any(_is_loopback(a) for a in listen_addrs))
            if hit:
                path = "OTEL_PATTER_FORWARD_ENDPOINT" if t.name == "env" else f"forward[{i}].endpoint"
                problems.append((path, f"{t.endpoint} is our own {name} listener ({lhost or '*'}:{port}); "
                                       "forwarding there would loop our output back into us"))
                break
    return problems
