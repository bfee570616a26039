"""Graceful shutdown of `serve` (SIGTERM/SIGINT): the `shutdown_timeout` key, and the Service's stop sequence
in-process: stop accepting, drain in-flight requests, drain forward queues, flush, within the budget.
(The SIGTERM-under-load run of a real subprocess is in test_deploy_subprocess.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otel_patter.config import ConfigError, load_config
from otel_patter.service import Service
from tests.otlp import request, span
from tests.server import free_port


# -- config -------------------------------------------------------------------------------------------
def _cfg(tmp_path: Path, text: str) -> Any:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return load_config(str(f), env={})


def test_shutdown_timeout_defaults_to_10s(tmp_path: Path) -> None:
    assert load_config(None, env={}).shutdown_timeout == 10.0
    assert _cfg(tmp_path, "shutdown_timeout: 20s\n").shutdown_timeout == 20.0
    assert _cfg(tmp_path, "shutdown_timeout: 1500ms\n").shutdown_timeout == 1.5
    assert _cfg(tmp_path, "shutdown_timeout: 3\n").shutdown_timeout == 3.0


@pytest.mark.parametrize(("value", "message"), [
    ("0s", "must be longer than 0"),
    ("-1s", "expected a duration"),
    ("2h", "at most 1h"),
    ("soon", "expected a duration"),
    ("true", "expected a duration"),
])
def test_shutdown_timeout_is_validated(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, f"shutdown_timeout: {value}\n")
    assert str(e.value).startswith("shutdown_timeout: ") and message in str(e.value)


def test_check_config_prints_shutdown_timeout(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("shutdown_timeout: 20s\n")
    r = subprocess.run([sys.executable, "-m", "otel_patter.cli", "check-config", "--config", str(f)],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "shutdown_timeout: 20s" in r.stdout


# -- the stop sequence, in-process ----------------------------------------------------------------------
def _service(tmp_path: Path, **extra: Any) -> tuple[Service, dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    overrides = {"store.log_dir": str(tmp_path / "log"),
                 "receivers.otlp.grpc.endpoint": f"127.0.0.1:{ports['grpc']}",
                 "receivers.otlp.http.endpoint": f"127.0.0.1:{ports['http']}",
                 "admin.endpoint": f"127.0.0.1:{ports['admin']}", **extra}
    return Service(load_config(None, env={}, overrides=overrides)), ports


def _wal_span_ids(log_dir: Path) -> set[str]:
    out = set()
    for f in log_dir.rglob("spans.jsonl"):
        for line in f.read_text().splitlines():
            out.add(json.loads(line)["data"]["span_id"])
    return out


async def _http(port: int, raw: bytes, read: bool = True) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    return reader, writer


async def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    reader, writer = await _http(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _post_head(port: int, length: int, connection: str = "close") -> bytes:
    return (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {length}\r\nConnection: {connection}\r\n\r\n").encode()


@pytest.mark.parametrize("connection", ["close", "keep-alive"], ids=["aiohttp", "fast-path"])
def test_shutdown_drains_a_request_in_flight(tmp_path: Path, connection: str) -> None:
    """A request whose body is still arriving when shutdown starts is answered 200 and its spans are in the
    WAL; meanwhile the listener refuses new connections and /readyz says draining (/healthz stays 200). Either
    path of OTLP/HTTP (a keep-alive request is read by receivers/http_fast.py; `Connection: close` by aiohttp)."""
    svc, ports = _service(tmp_path)
    spans = [span("getpatter.tts", {"patter.call.id": "CAdrain", "getpatter.tts.text_len": 5}) for _ in range(3)]
    body = request(spans).SerializeToString()

    async def scenario() -> None:
        await svc.start()
        reader, writer = await _http(ports["http"], _post_head(ports["http"], len(body), connection) + body[:10])
        await asyncio.sleep(0.2)  # the handler is waiting for the rest of the body
        stopping = asyncio.create_task(svc.shutdown(timeout=6))
        await asyncio.sleep(0.3)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", ports["http"])
        code, ready = await _get(ports["admin"], "/readyz")
        assert code == 503 and ready["checks"]["shutdown"] == "draining"
        assert (await _get(ports["admin"], "/healthz"))[0] == 200
        assert not stopping.done()
        writer.write(body[10:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        writer.close()
        assert await asyncio.wait_for(stopping, 10) is True

    asyncio.run(scenario())
    assert {s.span_id.hex() for s in spans} <= _wal_span_ids(tmp_path / "log")


@pytest.mark.parametrize("connection", ["close", "keep-alive"], ids=["aiohttp", "fast-path"])
def test_shutdown_cuts_a_stalled_request_at_its_grace_without_acking(tmp_path: Path, connection: str) -> None:
    """A client that stalls mid-body cannot hold the process: it is cut after half the budget, never acked."""
    svc, ports = _service(tmp_path)
    spans = [span("getpatter.tts", {"patter.call.id": "CAstall"})]
    body = request(spans).SerializeToString()

    async def scenario() -> float:
        await svc.start()
        reader, writer = await _http(ports["http"], _post_head(ports["http"], len(body), connection) + body[:5])
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        assert await svc.shutdown(timeout=2) is True
        took = time.monotonic() - t0
        answer = await asyncio.wait_for(reader.read(), 5)
        assert not answer.startswith(b"HTTP/1.1 200")
        writer.close()
        return took

    took = asyncio.run(scenario())
    assert took < 2.5, took
    assert not ({s.span_id.hex() for s in spans} & _wal_span_ids(tmp_path / "log"))


class _SlowCapture:
    """OTLP/gRPC trace receiver that takes `delay` seconds per request."""

    def __init__(self, delay: float) -> None:
        self.span_ids: list[str] = []
        outer = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, req: Any, context: Any) -> ExportTraceServiceResponse:
                time.sleep(delay)
                outer.span_ids += [sp.span_id.hex() for rs in req.resource_spans for ss in rs.scope_spans
                                   for sp in ss.spans]
                return ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")


def test_shutdown_drains_forward_queues_to_a_live_downstream(tmp_path: Path) -> None:
    """Spans acked just before SIGTERM still reach a slow but live downstream before the process exits."""
    cap = _SlowCapture(delay=0.3)
    cap.server.start()
    try:
        svc, _ = _service(tmp_path, forward=[{"name": "slow", "endpoint": f"http://127.0.0.1:{cap.port}",
                                               "protocol": "grpc", "timeout": "5s"}])
        sent: set[str] = set()

        async def scenario() -> float:
            await svc.start()
            for i in range(6):
                spans = [span("getpatter.tts", {"patter.call.id": f"CAq{i}"})]
                sent.update(sp.span_id.hex() for sp in spans)
                assert svc.pipeline.consume_traces(request(spans), "test").rejected == 0
            t0 = time.monotonic()
            await svc.shutdown(timeout=8)
            return time.monotonic() - t0

        took = asyncio.run(scenario())
        assert sent <= set(cap.span_ids), f"{len(sent - set(cap.span_ids))} spans left in the queue"
        assert took < 8
    finally:
        cap.server.stop(None)


def test_shutdown_does_not_wait_for_a_dead_downstream(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    svc, _ = _service(tmp_path, forward=[{"name": "dead", "endpoint": f"http://127.0.0.1:{dead}",
                                          "protocol": "grpc", "timeout": "1s"}])

    async def scenario() -> float:
        await svc.start()
        assert svc.pipeline.consume_traces(request([span("getpatter.tts", {"patter.call.id": "CAd"})]),
                                           "test").rejected == 0
        await asyncio.sleep(1.5)  # the first attempt fails: the downstream is known to be failing
        t0 = time.monotonic()
        await svc.shutdown(timeout=8)
        return time.monotonic() - t0

    assert asyncio.run(scenario()) < 2.0
    # what was not sent stays in the on-disk queue for the next start
    queued = list((tmp_path / "log" / "state" / "forward" / "dead").rglob("*"))
    assert any(p.is_file() and p.stat().st_size > 0 for p in queued)
