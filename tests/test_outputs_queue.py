"""The forward queue with a real `otel-patter serve`: a downstream down for a while, then back.

Within the queue bound every span arrives once and in order per call; over the bound the
oldest are dropped and the drop counter equals what was lost; kill -9 of otel-patter while
data is queued loses nothing. Ingest never waits for the dead downstream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.exporters.downstreams import GrpcDownstream, HttpDownstream
from tests.otlp import post, recorded_call
from tests.server import ServerProc

FAST_RETRY = {"retry_initial_interval": "100ms", "retry_max_interval": "300ms"}
CALLS = [f"CA-queue-{i:02d}" for i in range(4)]


@pytest.fixture
def down_grpc() -> Iterator[GrpcDownstream]:
    d = GrpcDownstream()  # not started: the downstream is down
    yield d
    d.stop()


def calls() -> dict[str, list[ExportTraceServiceRequest]]:
    return {cid: recorded_call(cid, id_salt=cid.encode()) for cid in CALLS}


def interleaved(by_call: dict[str, list[ExportTraceServiceRequest]]) -> list[ExportTraceServiceRequest]:
    """The calls' requests as concurrent calls send them: batch 1 of each call, then batch 2, ..."""
    return [by_call[cid][k] for k in range(4) for cid in by_call]


def span_ids(reqs: list[ExportTraceServiceRequest]) -> list[bytes]:
    return [s.span_id for r in reqs for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


def send(s: ServerProc, reqs: list[ExportTraceServiceRequest]) -> float:
    """POST every request; the slowest answer in seconds."""
    slowest = 0.0
    for r in reqs:
        t = time.monotonic()
        code, body, _ = post(s.http_endpoint + "/v1/traces", r.SerializeToString())
        slowest = max(slowest, time.monotonic() - t)
        assert code == 200, body
    return slowest


def metric(s: ServerProc, name: str, **labels: str) -> float:
    text = s.get("/metrics")[1].decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return 0.0


def forward_to(d: GrpcDownstream | HttpDownstream, protocol: str, **extra: object) -> dict:
    return {"forward": [{"name": "down", "endpoint": d.endpoint, "protocol": protocol, **FAST_RETRY, **extra}]}


def assert_once_in_order(got: list[bytes], by_call: dict[str, list[ExportTraceServiceRequest]]) -> None:
    assert len(got) == len(set(got)), "a span arrived twice"
    for reqs in by_call.values():
        mine = span_ids(reqs)
        assert [sid for sid in got if sid in set(mine)] == mine


def test_a_downstream_down_for_a_while_gets_every_span_once_in_order(make_server, down_grpc: GrpcDownstream) -> None:
    s = make_server(forward_to(down_grpc, "grpc")).start()
    by_call = calls()
    slowest = send(s, interleaved(by_call))
    assert slowest < 1.0  # ingest does not wait for the dead downstream
    for cid in CALLS:
        s.wait_final(cid)
    code, ready = s.get("/readyz")
    assert code == 200 and ready["ready"] is True
    assert ready["checks"]["forward.down"].startswith("failing for ")
    assert "readiness is unaffected" in ready["checks"]["forward.down"]
    assert metric(s, "otel_patter_forward_queue_bytes", downstream="down") > 0
    assert metric(s, "otel_patter_forward_retries_total", downstream="down") >= 1
    down_grpc.start()
    received = down_grpc.wait_spans(4 * 37 + 4)
    got = [sp.span_id for _, sp in received if sp.name != "patter.call.summary"]
    assert_once_in_order(got, by_call)
    assert sorted(sp.name for _, sp in received if sp.name == "patter.call.summary") == ["patter.call.summary"] * 4
    down_grpc.wait(lambda: metric(s, "otel_patter_forward_queue_bytes", downstream="down") == 0)
    assert metric(s, "otel_patter_forward_sent_total", downstream="down") == 4 * 37 + 4
    assert metric(s, "otel_patter_forward_dropped_total", downstream="down", reason="queue_full") == 0
    assert s.get("/readyz")[1]["checks"]["forward.down"] == "ok"


def test_kill9_while_queued_loses_nothing(make_server, tmp_path: Path) -> None:
    down = HttpDownstream()
    try:
        s = make_server(forward_to(down, "http")).start()
        by_call = calls()
        reqs = interleaved(by_call)
        send(s, reqs[:9])
        s.kill9()
        assert len(list((s.log_dir / "state" / "forward" / "down").glob("seg-*.q"))) == 1
        s.start()
        send(s, reqs[9:])
        for cid in CALLS:
            s.wait_final(cid)
        down.start()
        received = down.wait_spans(4 * 37 + 4)
        time.sleep(0.5)  # anything sent twice would show up now
        assert len(down.spans()) == 4 * 37 + 4
        assert_once_in_order([sp.span_id for _, sp in received if sp.name != "patter.call.summary"], by_call)
    finally:
        down.stop()


def test_over_the_bound_the_oldest_are_dropped_and_counted(make_server, down_grpc: GrpcDownstream) -> None:
    # no call finalizes during the test, so only the spans we send go through the queue
    s = make_server({**forward_to(down_grpc, "grpc", queue_max_bytes="64KiB"),
                     "rollup": {"idle_timeout": "10m", "final_grace": "10m"}}).start()
    reqs = [r for i in range(14) for r in recorded_call(f"CA-bound-{i}", id_salt=bytes([i]))]
    total_bytes = sum(len(r.SerializeToString()) for r in reqs)
    assert total_bytes > 2 * 64 * 1024
    send(s, reqs)
    assert metric(s, "otel_patter_forward_queue_bytes", downstream="down") <= 64 * 1024
    dropped = metric(s, "otel_patter_forward_dropped_total", downstream="down", reason="queue_full")
    assert dropped > 0
    down_grpc.start()
    sent = span_ids(reqs)
    down_grpc.wait(lambda: metric(s, "otel_patter_forward_queue_bytes", downstream="down") == 0)
    time.sleep(0.3)  # the last answer is counted
    dropped = metric(s, "otel_patter_forward_dropped_total", downstream="down", reason="queue_full")
    got = [sp.span_id for _, sp in down_grpc.spans()]
    assert len(got) + dropped == len(sent)  # the drop counter is exactly what was lost
    assert got == sent[len(sent) - len(got):]  # the newest survived, in order
    assert metric(s, "otel_patter_forward_sent_total", downstream="down") == len(got)
