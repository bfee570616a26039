"""Downstream faults at the TCP level: a downstream that hangs (our timeout), resets the connection (RST) mid
request, closes mid-answer or answers garbage, then recovers. Every record arrives, in order (alone or in a batch),
exactly once per successful answer; retries are counted; the queue stays within its bound; nothing grows while it fails.

Status-level faults are in tests/exporters/test_forward.py (gRPC UNAVAILABLE retried, RESOURCE_EXHAUSTED retried
only with RetryInfo and after its delay, INVALID_ARGUMENT dropped; HTTP 429/502/503/504 retried honouring
Retry-After, 400/401/404/413/500 final, as the OTLP spec says; backoff doubling to its max) and in
tests/test_outputs_queue.py (a downstream down for a while with a real server: every span once in order; kill -9
while queued loses nothing; over the bound the oldest are dropped and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from otel_patter.config import ForwardTarget
from otel_patter.exporters.forward import Downstream, ForwardMetrics
from otel_patter.selfmetrics import SelfMetrics
from tests.exporters.downstreams import GrpcDownstream, HttpDownstream, drain, sample, split_bodies
from tests.otlp import request, span
from tests.reliability.harness import rss_kib
from tests.server import free_port

FAST = {"retry_initial_interval": 0.05, "retry_max_interval": 0.3}


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 in front of a real downstream. Each new connection takes the next fault from
    `faults` (then "pass"): "pass" relays; "hang" reads and never answers; "reset" reads a little, then RST;
    "half" relays the request but cuts the answer after a few bytes; "garbage" answers noise and closes;
    "stall" holds the bytes for `stall_s` seconds, then relays."""

    def __init__(self, upstream_port: int, faults: list[str], stall_s: float = 2.0) -> None:
        self.port = free_port()
        self.upstream = upstream_port
        self.faults = list(faults)
        self.stall_s = stall_s
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ChaosProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._socks.append(s)
        return s

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                mode = self.faults.pop(0) if self.faults else "pass"
                self.seen.append(mode)
            threading.Thread(target=self._serve, args=(self._track(client), mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        try:
            if mode == "hang":
                while not self._stop.is_set() and client.recv(65536):
                    pass
                return
            if mode == "reset":
                client.settimeout(5)
                with contextlib.suppress(OSError):
                    client.recv(64)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                return
            if mode == "garbage":
                client.settimeout(5)
                with contextlib.suppress(OSError):
                    client.recv(65536)
                    client.sendall(b"\x00\xffnot a protocol at all\r\n\r\n" * 4)
                client.close()
                return
            upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream)))
            if mode == "stall":
                self._stop.wait(self.stall_s)
            if mode == "blackhole":  # the first request gets through, then the connection goes silent (no FIN, no RST)
                threading.Thread(target=self._pipe, args=(client, upstream, None, 1), daemon=True).start()
                self._pipe(upstream, client, None, 1)
                while not self._stop.wait(0.2):
                    pass
                return
            cut = 20 if mode == "half" else None
            a = threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True)
            a.start()
            self._pipe(upstream, client, cut)
            if cut is not None:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                upstream.close()
        except OSError:
            with contextlib.suppress(OSError):
                client.close()

    def _pipe(self, src: socket.socket, dst: socket.socket, cut: int | None, for_s: float | None = None) -> None:
        sent = 0
        until = time.monotonic() + for_s if for_s is not None else None
        try:
            while not self._stop.is_set():
                if until is not None:
                    src.settimeout(max(0.01, until - time.monotonic()))
                    if time.monotonic() >= until:
                        return
                data = src.recv(65536)
                if not data:
                    break
                if cut is not None and sent + len(data) >= cut:
                    dst.sendall(data[: cut - sent])
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            if cut is None and until is None:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)


def _bodies(n: int, size: int = 0) -> list[bytes]:
    return [request([span("getpatter.llm", {"patter.call_id": f"CA-down-{i}", "pad": "x" * size})]
                    ).SerializeToString() for i in range(n)]


@pytest.mark.parametrize("faults", [["hang"], ["reset"], ["half"], ["garbage"], ["reset", "hang", "half", "reset"]],
                         ids=["timeout", "reset", "cut-answer", "garbage", "mixed"])
def test_http_downstream_timeouts_and_resets_are_retried_until_everything_arrives_once(
        http_down: HttpDownstream, tmp_path: Path, faults: list[str]) -> None:
    bodies = _bodies(5)
    with ChaosProxy(http_down.port, faults) as proxy:
        target = ForwardTarget("h", proxy.endpoint, "http", timeout=1.0, **FAST)
        m, left = drain(target, tmp_path, bodies, timeout=60.0, poll_s=0.05)
    assert left == 0
    sends = [split_bodies(r.raw, bodies) for r in http_down.received]
    got = [b for send in sends for b in send]
    assert [b for i, b in enumerate(got) if b not in got[:i]] == bodies  # every record, in order
    # once each, but for a send whose answer was cut on the way: it arrived, we could not know, we sent it again
    # (at-least-once, as the OTLP spec has it; the receiving side dedupes, as our own rollup does)
    assert max(got.count(b) for b in bodies) <= 1 + faults.count("half"), [len(s) for s in sends]
    assert sample(m, "otel_patter_forward_retries_total", downstream="h") >= 1
    assert sample(m, "otel_patter_forward_dropped_total", downstream="h", reason="rejected") == 0
    assert proxy.seen[: len(faults)] == faults


@pytest.mark.parametrize("faults", [["reset"], ["garbage"], ["stall"], ["reset", "stall", "garbage"]],
                         ids=["reset", "garbage", "stall-past-the-timeout", "mixed"])
def test_grpc_downstream_resets_and_stalls_are_retried_until_everything_arrives(
        grpc_down: GrpcDownstream, tmp_path: Path, faults: list[str]) -> None:
    bodies = _bodies(5)
    with ChaosProxy(grpc_down.port, faults, stall_s=2.5) as proxy:
        target = ForwardTarget("g", proxy.endpoint, "grpc", timeout=1.0, **FAST)
        m, left = drain(target, tmp_path, bodies, timeout=60.0, poll_s=0.05)
    assert left == 0
    got = [b for r in grpc_down.received for b in split_bodies(r.raw, bodies)]
    # a stalled request may be delivered late, after we gave up on it and sent it again (at least once)
    assert [b for i, b in enumerate(got) if b not in got[:i]] == bodies
    assert sample(m, "otel_patter_forward_retries_total", downstream="g") >= 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_connection_that_goes_silent_is_replaced(grpc_down: GrpcDownstream, http_down: HttpDownstream,
                                                   tmp_path: Path, protocol: str) -> None:
    """The first request gets through, then the connection goes silent (no FIN, no RST: a dropped NAT entry).
    After a timeout the sender must open a new connection. (gRPC kept using the dead one, retrying into it for
    good, until the sender reconnected on DEADLINE_EXCEEDED.)"""
    down = grpc_down if protocol == "grpc" else http_down
    bodies = _bodies(5)
    metrics = SelfMetrics()
    with ChaosProxy(down.port, ["blackhole"]) as proxy:
        target = ForwardTarget("s", proxy.endpoint, protocol, timeout=1.0, **FAST)

        async def main() -> int:
            d = Downstream(target, tmp_path, ForwardMetrics(metrics), fsync=False)
            await d.start()
            try:
                d.enqueue("traces", bodies[0], 1)
                deadline = time.monotonic() + 10
                while len(d.queue) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(1.5)  # the proxy stops relaying on that connection
                for b in bodies[1:]:
                    d.enqueue("traces", b, 1)
                deadline = time.monotonic() + 30
                while len(d.queue) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                return len(d.queue)
            finally:
                await d.shutdown()

        left = asyncio.run(main())
    assert left == 0, (proxy.seen, sample(metrics, "otel_patter_forward_retries_total", downstream="s"))
    got = [b for r in down.received for b in split_bodies(r.raw, bodies)]
    assert [b for i, b in enumerate(got) if b not in got[:i]] == bodies
    assert proxy.seen[0] == "blackhole" and len(proxy.seen) >= 2


def test_a_hanging_downstream_keeps_the_queue_in_its_bound_and_memory_flat(http_down: HttpDownstream,
                                                                           tmp_path: Path) -> None:
    """Every connection hangs: each send times out, the queue takes 3x its bound of new data, drops the oldest,
    and neither the queue nor the process grows past its bound."""
    bound = 256 * 1024
    bodies = _bodies(120, size=6000)  # ~720 KiB
    with ChaosProxy(http_down.port, ["hang"] * 10_000) as proxy:
        target = ForwardTarget("h", proxy.endpoint, "http", timeout=0.3, queue_max_bytes=bound, **FAST)
        metrics = SelfMetrics()
        rss: list[int] = []

        async def main() -> tuple[int, int]:
            d = Downstream(target, tmp_path, ForwardMetrics(metrics), fsync=False)
            await d.start()
            try:
                for i in range(3):
                    for b in bodies:
                        d.enqueue("traces", b, 1)
                    for _ in range(10):
                        await asyncio.sleep(0.1)
                        rss.append(rss_kib(_pid()))
                    assert d.queue.bytes <= bound, (i, d.queue.bytes)
                return d.queue.bytes, len(d.queue)
            finally:
                await d.shutdown()

        queued_bytes, queued = asyncio.run(main())
    assert queued_bytes <= bound and queued > 0
    dropped = sample(metrics, "otel_patter_forward_dropped_total", downstream="h", reason="queue_full")
    assert dropped >= 3 * len(bodies) - queued - 1
    assert not http_down.received
    assert len(proxy.seen) >= 2  # it did try, and retried
    assert max(rss) - min(rss) < 64 * 1024, (min(rss), max(rss))  # KiB: no growth with the data it cannot send


def _pid() -> int:
    import os

    return os.getpid()
