"""Memory limit (`limits.memory_mib`): over it the receivers refuse with UNAVAILABLE / 503 + Retry-After, as
the collector's memory_limiter does, and a bounded flood of large concurrent requests keeps the server's peak
resident set (VmHWM) within the limit plus what one request costs to process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from otel_patter.config import ConfigError, load_config
from otel_patter.memlimit import EXPANSION, GRPC_EXPANSION, MIB, MemoryLimiter
from otel_patter.receivers.decode import Unavailable
from tests.otlp import post, request, span
from tests.reliability.conftest import LONG, pick
from tests.reliability.harness import peak_rss_kib, rss_kib, tracebacks
from tests.server import ServerProc

LIMIT_MIB = 96  # the server idles at about 60 MiB
MAX_REQUEST_MIB = 8
THREADS = pick(8, 16)
PER_THREAD = pick(5, 20)
# the limit, plus what one request let in alone costs to process
BOUND_MIB = {"http": LIMIT_MIB + EXPANSION * MAX_REQUEST_MIB, "grpc": LIMIT_MIB + GRPC_EXPANSION * MAX_REQUEST_MIB}


def _big_request() -> bytes:
    """About 7 MiB: prompts the PII stage drops whole, so processing is cheap and memory is the story."""
    spans = [span("getpatter.llm", {"patter.call_id": f"CA-flood-{i}", "gen_ai.prompt": "x" * 1_000_000})
             for i in range(7)]
    return request(spans).SerializeToString()


def _small() -> bytes:
    return request([span("getpatter.tool", {"patter.call_id": "CA-after-the-flood"})]).SerializeToString()


def _flood_http(s: ServerProc, body: bytes, codes: Counter[str], retry_after: list[str]) -> None:
    def worker() -> None:
        for _ in range(PER_THREAD):
            try:
                code, _, headers = post(s.http_endpoint + "/v1/traces", body, timeout=60)
            except OSError as e:  # a refused body's connection may be cut while it is still being sent
                codes[f"conn:{type(e).__name__}"] += 1
                continue
            codes[str(code)] += 1
            if code == 503:
                retry_after.append(headers.get("Retry-After", ""))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def _flood_grpc(s: ServerProc, body: bytes, codes: Counter[str], retry_info: list[bool]) -> None:
    req = request([])
    req.ParseFromString(body)

    def worker() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}",
                                   options=[("grpc.max_send_message_length", 64 * MIB)]) as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)
            for _ in range(PER_THREAD):
                try:
                    stub.Export(req, timeout=60)
                    codes["OK"] += 1
                except grpc.RpcError as e:
                    codes[e.code().name] += 1
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        retry_info.append(any(k == "google.rpc.retryinfo-bin" for k, _ in e.trailing_metadata() or ()))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def _accepts_again(s: ServerProc) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if post(s.http_endpoint + "/v1/traces", _small())[0] == 200:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_flood_of_large_requests_is_refused_and_rss_stays_bounded(tmp_path: Path, transport: str) -> None:
    s = ServerProc(tmp_path, {"limits": {"memory_mib": LIMIT_MIB},
                              "receivers": {"otlp": {"max_request_bytes": f"{MAX_REQUEST_MIB}MiB"}}}).start()
    assert s.proc is not None
    idle_mib = rss_kib(s.proc.pid) / 1024
    ready = s.get("/readyz")[1]
    assert ready["checks"]["memory"].startswith("ok (")
    body = _big_request()
    codes: Counter[str] = Counter()
    retry: list = []
    if transport == "http":
        _flood_http(s, body, codes, retry)
        answered = {k for k in codes if not k.startswith("conn:")}
        assert answered <= {"200", "503"}, codes
        assert codes["503"] > 0 and codes["200"] > 0, codes
        assert all(r.isdigit() and int(r) >= 1 for r in retry), retry
    else:
        _flood_grpc(s, body, codes, retry)
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        assert codes["UNAVAILABLE"] > 0 and codes["OK"] > 0, codes
        assert all(retry), "every UNAVAILABLE carries RetryInfo"
    peak_mib = peak_rss_kib(s.proc.pid) / 1024
    assert peak_mib <= BOUND_MIB[transport], f"peak RSS {peak_mib:.0f} MiB over {BOUND_MIB[transport]} MiB ({codes})"
    assert _accepts_again(s), "after the flood, a small request is accepted again"
    metrics = s.get("/metrics")[1].decode()
    assert 'reason="memory"' in metrics
    assert not tracebacks(s.logs())
    print(f"\nmemory limit {transport}: idle {idle_mib:.0f} MiB, limit {LIMIT_MIB} MiB, {THREADS}x{PER_THREAD} "
          f"requests of {len(body) / MIB:.1f} MiB: {dict(codes)}; peak RSS {peak_mib:.0f} MiB "
          f"(bound {BOUND_MIB[transport]} MiB)")
    s.stop()


@pytest.mark.skipif(not LONG, reason="long mode: the same flood without a limit, for comparison")
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_without_a_limit_the_same_flood_goes_higher(tmp_path: Path, transport: str) -> None:
    s = ServerProc(tmp_path, {"receivers": {"otlp": {"max_request_bytes": f"{MAX_REQUEST_MIB}MiB"}}}).start()
    assert s.proc is not None
    codes: Counter[str] = Counter()
    (_flood_http if transport == "http" else _flood_grpc)(s, _big_request(), codes, [])
    peak_mib = peak_rss_kib(s.proc.pid) / 1024
    print(f"\nno memory limit {transport}: {dict(codes)}; peak RSS {peak_mib:.0f} MiB")
    s.stop()


class FakeProcess:
    """A clock and an RSS the test moves, counting the limiter's RSS reads."""

    def __init__(self, rss_mib: int) -> None:
        self.now = 0.0
        self.rss = rss_mib * MIB
        self.reads = 0

    def read(self) -> int:
        self.reads += 1
        return self.rss

    def limiter(self, limit_mib: int, **kw: Any) -> MemoryLimiter:
        return MemoryLimiter(limit_mib, clock=lambda: self.now, rss=self.read, **kw)


def test_the_limiter_reads_rss_at_most_every_100ms_and_refuses_over_it() -> None:
    p = FakeProcess(50)
    refused: list[str] = []
    lim = p.limiter(100, on_refuse=refused.append)
    for _ in range(100):
        lim.check("traces")
    assert p.reads == 1
    p.rss = 150 * MIB
    lim.check("traces")  # the cached reading is still fresh
    p.now += 0.1
    with pytest.raises(Unavailable) as e:
        lim.check("traces")
    assert e.value.retry_after and e.value.retry_after >= 1
    assert refused == ["traces"]
    p.rss = 50 * MIB
    p.now += 2.0
    with lim.hold("traces") as h1:
        h1.add(10 * MIB)  # 30 MiB held
        with lim.hold("logs") as h2, pytest.raises(Unavailable):
            h2.add(10 * MIB)  # 50 + 30 + 30 > 100, and not alone
    assert lim.inflight == 0 and lim.holders == 0
    with lim.hold("traces") as h:
        h.add(40 * MIB)  # alone and under the limit: one request always gets through
    assert lim.inflight == 0


def test_after_a_large_request_is_answered_the_next_check_reads_rss_afresh() -> None:
    p = FakeProcess(60)
    lim = p.limiter(96)
    with lim.hold("traces") as h:
        h.add(7 * MIB, expansion=5)  # 60 + 35 <= 96
        p.rss = 100 * MIB  # processing it: the allocator keeps what it took after the request is answered
    assert p.reads == 1
    with lim.hold("traces") as h, pytest.raises(Unavailable):  # 100 MiB in use now, not the 60 read before
        h.add(7 * MIB, expansion=5)
    assert p.reads >= 2


def test_a_grpc_request_with_its_message_in_hand_goes_through_past_others_reservations() -> None:
    p = FakeProcess(60)
    lim = p.limiter(96)
    with contextlib.ExitStack() as stack:
        holds = [stack.enter_context(lim.hold("traces")) for _ in range(4)]
        for h in holds:
            h.add(MAX_REQUEST_MIB * MIB, expansion=1)  # reserved before each message is read: 60 + 32 <= 96
        with pytest.raises(Unavailable):
            holds[1].resize(7 * MIB, GRPC_EXPANSION)  # as one of several: 60 + 32 + 27 > 96
        holds[0].resize(7 * MIB, GRPC_EXPANSION, alone=True)  # processing runs alone, RSS is under the limit
        assert holds[0].bytes == 7 * MIB * GRPC_EXPANSION


def test_a_small_request_answered_leaves_the_cached_rss_reading_in_place() -> None:
    p = FakeProcess(60)
    lim = p.limiter(96)
    with lim.hold("traces") as h:
        h.add(100_000)  # a 6.5-span request costs RSS reads at most every 100 ms
    lim.check("traces", 100_000)
    assert p.reads == 1


@pytest.mark.parametrize(("value", "ok"), [(256, True), ("512", True), (None, True), (0, False), (16, False),
                                           (-1, False), ("lots", False), (True, False), (2**40, False)])
def test_memory_mib_is_validated(value: object, ok: bool) -> None:
    overrides = {"limits": {"memory_mib": value}}
    if ok:
        cfg = load_config(None, env={}, overrides=overrides)
        assert cfg.limits.memory_mib == (int(value) if value is not None else None)  # type: ignore[call-overload]
    else:
        with pytest.raises(ConfigError, match=r"limits\.memory_mib"):
            load_config(None, env={}, overrides=overrides)
