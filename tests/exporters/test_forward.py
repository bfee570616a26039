"""One downstream's sender against real OTLP servers: retry rules, backoff, headers, loop refusal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from otel_patter.config import ConfigError, ForwardTarget, load_config
from otel_patter.exporters.forward import Downstream, Forwarder, ForwardMetrics, loop_problems
from otel_patter.selfmetrics import SelfMetrics
from tests.exporters.downstreams import GrpcDownstream, HttpDownstream, drain, sample
from tests.otlp import recorded_call

FAST = {"retry_initial_interval": 0.05, "retry_max_interval": 0.2, "timeout": 5.0}
ONE = {**FAST, "batch_max_bytes": 0}  # one request a send, each answer about one (batches: test_forward_batch.py)


def bodies(n: int = 2) -> list[bytes]:
    return [r.SerializeToString() for r in recorded_call()[:n]]


def test_grpc_unavailable_is_retried_until_accepted(grpc_down: GrpcDownstream, tmp_path: Path) -> None:
    answers = [(grpc.StatusCode.UNAVAILABLE, None)] * 3
    grpc_down.fail = lambda signal, raw: answers.pop() if answers else None
    target = ForwardTarget("j", grpc_down.endpoint, "grpc", **FAST)
    m, _ = drain(target, tmp_path, bodies(1))
    assert [r.raw for r in grpc_down.received] == bodies(1)
    assert grpc_down.attempts == 4
    assert sample(m, "otel_patter_forward_retries_total", downstream="j") == 3
    assert sample(m, "otel_patter_forward_failed_total", downstream="j") == 3
    assert sample(m, "otel_patter_forward_sent_total", downstream="j") == 1


def test_grpc_invalid_argument_is_dropped_and_counted_not_retried(grpc_down: GrpcDownstream, tmp_path: Path) -> None:
    grpc_down.fail = lambda signal, raw: (grpc.StatusCode.INVALID_ARGUMENT, None) if grpc_down.attempts == 1 else None
    target = ForwardTarget("j", grpc_down.endpoint, "grpc", **ONE)
    m, _ = drain(target, tmp_path, bodies(2))
    assert [r.raw for r in grpc_down.received] == bodies(2)[1:]
    assert grpc_down.attempts == 2
    assert sample(m, "otel_patter_forward_dropped_total", downstream="j", reason="rejected") == 1
    assert sample(m, "otel_patter_forward_retries_total", downstream="j") == 0


def test_grpc_resource_exhausted_is_retried_only_with_retry_info(grpc_down: GrpcDownstream, tmp_path: Path) -> None:
    verdicts = {1: (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.5), 3: (grpc.StatusCode.RESOURCE_EXHAUSTED, None)}
    stamps: list[float] = []

    def fail(signal: str, raw: bytes) -> Any:
        stamps.append(time.monotonic())
        return verdicts.get(grpc_down.attempts)

    grpc_down.fail = fail
    target = ForwardTarget("j", grpc_down.endpoint, "grpc", **ONE)
    m, _ = drain(target, tmp_path, bodies(2))
    # first request: throttled with RetryInfo 0.5 s, then accepted; second: throttled without, dropped
    assert [r.raw for r in grpc_down.received] == bodies(2)[:1]
    assert stamps[1] - stamps[0] >= 0.5
    assert sample(m, "otel_patter_forward_retries_total", downstream="j") == 1
    assert sample(m, "otel_patter_forward_dropped_total", downstream="j", reason="rejected") == 1


def test_grpc_headers_arrive_as_metadata(grpc_down: GrpcDownstream, tmp_path: Path) -> None:
    target = ForwardTarget("hc", grpc_down.endpoint, "grpc", headers=(("x-honeycomb-team", "hc-key-123"),),
                           compression="gzip", **FAST)
    drain(target, tmp_path, bodies(1))
    (got,) = grpc_down.received
    assert got.headers["x-honeycomb-team"] == "hc-key-123"
    assert got.raw == bodies(1)[0]


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_http_retryable_statuses_honour_retry_after(http_down: HttpDownstream, tmp_path: Path, status: int) -> None:
    stamps: list[float] = []

    def fail(signal: str, raw: bytes) -> Any:
        stamps.append(time.monotonic())
        return (status, 1) if http_down.attempts == 1 else None

    http_down.fail = fail
    target = ForwardTarget("h", http_down.endpoint, "http", **FAST)
    m, _ = drain(target, tmp_path, bodies(1))
    assert [r.raw for r in http_down.received] == bodies(1)
    assert stamps[1] - stamps[0] >= 1.0  # Retry-After: 1, not the 50 ms backoff
    assert sample(m, "otel_patter_forward_retries_total", downstream="h") == 1


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500])
def test_http_other_errors_are_dropped_not_retried(http_down: HttpDownstream, tmp_path: Path, status: int) -> None:
    http_down.fail = lambda signal, raw: (status, None) if http_down.attempts == 1 else None
    target = ForwardTarget("h", http_down.endpoint, "http", **ONE)
    m, _ = drain(target, tmp_path, bodies(2))
    assert [r.raw for r in http_down.received] == bodies(2)[1:]
    assert sample(m, "otel_patter_forward_dropped_total", downstream="h", reason="rejected") == 1
    assert sample(m, "otel_patter_forward_retries_total", downstream="h") == 0


def test_http_posts_gzip_with_headers_to_v1_traces(http_down: HttpDownstream, tmp_path: Path) -> None:
    target = ForwardTarget("hc", http_down.endpoint + "/v1/traces", "http", compression="gzip",
                           headers=(("x-honeycomb-team", "hc-key-123"), ("x-honeycomb-dataset", "calls")), **FAST)
    drain(target, tmp_path, bodies(1))
    (got,) = http_down.received
    assert got.headers["x-honeycomb-team"] == "hc-key-123"
    assert got.headers["x-honeycomb-dataset"] == "calls"
    assert got.headers["content-encoding"] == "gzip"
    assert got.headers["content-type"] == "application/x-protobuf"
    assert got.raw == bodies(1)[0]


def test_backoff_doubles_from_the_initial_interval_up_to_the_max(tmp_path: Path) -> None:
    target = ForwardTarget("j", "http://127.0.0.1:9", "grpc", retry_initial_interval=1.0, retry_max_interval=30.0)
    d = Downstream(target, tmp_path, ForwardMetrics(SelfMetrics()), fsync=False)
    waits = []
    for failures in range(1, 9):
        d.failures = failures
        waits.append(d.backoff())
    for w, base in zip(waits, [1, 2, 4, 8, 16, 30, 30, 30], strict=True):
        assert base * 0.8 <= w <= base * 1.2


def test_readiness_reports_a_failing_downstream_without_being_unready(tmp_path: Path) -> None:
    target = ForwardTarget("jaeger", "http://127.0.0.1:9", "grpc", **FAST)  # port 9: nothing listens
    checks: dict[str, str] = {}

    def failing(d: Downstream) -> bool:
        checks["now"] = d.check()
        return d.failures >= 2

    m, _ = drain(target, tmp_path, bodies(1), until=failing)
    assert checks["now"].startswith("failing for ")
    assert "(UNAVAILABLE)" in checks["now"]
    assert "1 requests" in checks["now"] and "readiness is unaffected" in checks["now"]
    assert sample(m, "otel_patter_forward_queue_bytes", downstream="jaeger") > 0


# -- a downstream that is one of our own listeners ------------------------------------------------
def cfg(forward: list[dict[str, Any]], grpc_ep: str = "localhost:4317", http_ep: str = "localhost:4318",
        admin: str = "localhost:4319", tmp: Path | None = None) -> Any:
    return load_config(None, env={}, overrides={
        "receivers.otlp.grpc.endpoint": grpc_ep, "receivers.otlp.http.endpoint": http_ep, "admin.endpoint": admin,
        "forward": forward, "store.log_dir": str(tmp or "/nonexistent")})


@pytest.mark.parametrize(("listen", "target"), [
    ("localhost:4317", "http://127.0.0.1:4317"),
    ("127.0.0.1:4317", "http://localhost:4317"),
    ("0.0.0.0:4317", "http://127.0.0.1:4317"),
    ("0.0.0.0:4317", "http://localhost:4317"),
    ("localhost:4317", "http://0.0.0.0:4317"),
    ("[::1]:4317", "http://localhost:4317"),
    ("127.0.0.1:4317", "https://[::1]:4317"),
])
def test_a_forward_target_that_is_our_own_listener_is_refused(listen: str, target: str) -> None:
    problems = loop_problems(cfg([{"name": "self", "endpoint": target}], grpc_ep=listen))
    assert problems == [("forward[0].endpoint", f"{target} is our own receivers.otlp.grpc listener "
                                                f"({listen.rpartition(':')[0].strip('[]')}:4317); "
                                                "forwarding there would loop our output back into us")]


def test_our_http_and_admin_ports_are_checked_too() -> None:
    c = cfg([{"name": "a", "endpoint": "http://localhost:4318"}, {"name": "b", "endpoint": "http://127.0.0.1:4319"}])
    assert [p for p, _ in loop_problems(c)] == ["forward[0].endpoint", "forward[1].endpoint"]


def test_other_ports_and_hosts_are_fine() -> None:
    c = cfg([{"name": "a", "endpoint": "http://127.0.0.1:14317"}, {"name": "b", "endpoint": "http://192.0.2.7:4317"}],
            grpc_ep="127.0.0.1:4317")
    assert loop_problems(c) == []


def test_the_env_target_is_named_by_its_variable() -> None:
    c = load_config(None, env={"OTEL_PATTER_FORWARD_ENDPOINT": "http://localhost:4317"})
    with pytest.raises(ConfigError) as info:
        Forwarder(c, SelfMetrics())
    assert info.value.errors[0][0] == "OTEL_PATTER_FORWARD_ENDPOINT"


def test_serve_exits_2_with_a_clear_error_when_forwarding_to_itself(make_server) -> None:
    import subprocess
    import sys

    s = make_server()
    s.config_path.write_text(s.config_path.read_text() + f"forward:\n- name: me\n  endpoint: http://localhost:{s.grpc_port}\n")
    done = subprocess.run([sys.executable, "-m", "otel_patter.cli", "serve", "--config", str(s.config_path)],
                          env=s.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: forward[0].endpoint: http://localhost:{s.grpc_port} is our own "
                                   f"receivers.otlp.grpc listener (127.0.0.1:{s.grpc_port}); forwarding there "
                                   "would loop our output back into us")


@pytest.mark.parametrize(("answer", "sent", "dropped"), [(True, 5, 2), (False, 0, 7)])
def test_a_record_dropped_while_on_the_wire_counts_by_how_its_send_ended(tmp_path: Path, answer: bool, sent: int,
                                                                         dropped: int) -> None:
    from otel_patter.exporters.senders import SendResult

    m = SelfMetrics()
    target = ForwardTarget("j", "http://127.0.0.1:9", "grpc", queue_max_bytes=64 * 1024)
    d = Downstream(target, tmp_path, ForwardMetrics(m), fsync=False)
    d.queue.open()
    d.enqueue("traces", b"a" * 40_000, 5)
    head = d.queue.peek()
    d.inflight = {head.seq}  # the sender is waiting for the downstream's answer about `head`
    d.enqueue("traces", b"b" * 40_000, 2)  # no room: `head`, on the wire, is dropped
    assert sample(m, "otel_patter_forward_dropped_total", downstream="j", reason="queue_full") == 0  # not yet
    d.enqueue("traces", b"c" * 40_000, 3)  # and now `b`
    assert [e.items for e in d.queue.entries] == [3]
    assert sample(m, "otel_patter_forward_dropped_total", downstream="j", reason="queue_full") == 2
    d.inflight = set()
    d._settle([head], SendResult(answer, retryable=not answer), 40_000)
    assert sample(m, "otel_patter_forward_sent_total", downstream="j") == sent
    assert sample(m, "otel_patter_forward_dropped_total", downstream="j", reason="queue_full") == dropped
    assert [e.items for e in d.queue.entries] == [3]  # `c` is still queued either way


def test_a_queue_record_that_cannot_be_opened_for_a_moment_is_sent_once_it_can(
        grpc_down: GrpcDownstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # too many open files while the sender opens a segment: the bytes on disk are intact, so nothing is dropped
    import errno
    import os

    from otel_patter.exporters import queue as queue_mod

    real_open = os.open
    refusals = [OSError(errno.EMFILE, "Too many open files")] * 2

    def emfile_twice_for_readers(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if not flags & (os.O_WRONLY | os.O_RDWR) and refusals:
            raise refusals.pop()
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(queue_mod.os, "open", emfile_twice_for_readers)
    m, left = drain(ForwardTarget("j", grpc_down.endpoint, "grpc", **FAST), tmp_path, bodies(2))
    assert left == 0
    assert [r.raw for r in grpc_down.received] == [b"".join(bodies(2))]
    assert sample(m, "otel_patter_forward_dropped_total", downstream="j", reason="corrupt") == 0


def test_a_queue_record_cut_shorter_than_its_header_is_dropped_as_corrupt_and_the_sender_goes_on(
        grpc_down: GrpcDownstream, tmp_path: Path) -> None:
    import asyncio
    import os

    first, second = bodies(2)
    metrics = SelfMetrics()

    async def main() -> tuple[int, bool]:
        d = Downstream(ForwardTarget("j", grpc_down.endpoint, "grpc", **ONE), tmp_path, ForwardMetrics(metrics),
                       fsync=False)
        d.queue.open()
        d.enqueue("traces", first, 1)
        d.enqueue("traces", second, 1)
        head = d.queue.peek()
        assert head is not None
        os.truncate(d.queue._path(d.queue._tail), head.size + 5)  # the second keeps 5 of its header's 13 bytes
        await d.sender.start()
        d.task = asyncio.create_task(d._run())
        for _ in range(200):
            if not len(d.queue):
                break
            await asyncio.sleep(0.02)
        alive = not d.task.done()
        await d._stop()
        return len(d.queue), alive

    assert asyncio.run(main()) == (0, True)
    assert [r.raw for r in grpc_down.received] == [first]
    assert sample(metrics, "otel_patter_forward_dropped_total", downstream="j", reason="corrupt") == 1
