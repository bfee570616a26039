"""Real OTLP downstreams for forwarding tests, bound to 127.0.0.1.

`GrpcDownstream`: a grpcio server built from opentelemetry-proto's service definitions
(TraceService, MetricsService, LogsService). `HttpDownstream`: an aiohttp server with
POST /v1/traces, /v1/metrics, /v1/logs (protobuf, gzip). Both record every request with
its headers, can answer with a chosen failure, and can be stopped and started again on
the same port (the downstream "down for a while"). `drain` runs one downstream's sender over
queued requests; `sample` reads a self-metric.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from otel_patter.config import ForwardTarget, TlsConfig
from otel_patter.exporters.forward import Downstream, ForwardMetrics
from otel_patter.receivers.security import server_ssl_context
from otel_patter.selfmetrics import SelfMetrics
from tests.reliability.certs import Pki
from tests.server import free_port

REQUESTS = {"traces": trace_service_pb2.ExportTraceServiceRequest,
            "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
            "logs": logs_service_pb2.ExportLogsServiceRequest}
RESPONSES = {"traces": trace_service_pb2.ExportTraceServiceResponse,
             "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
             "logs": logs_service_pb2.ExportLogsServiceResponse}


@dataclass
class Received:
    signal: str
    request: Any
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Base:
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    # (signal, request bytes) -> None to accept, or a failure to answer: grpc.StatusCode / HTTP status, optional
    # retry seconds
    fail: Callable[[str, bytes], tuple[Any, float | None] | None] | None = None
    max_receive: int = 64 << 20  # a bigger request is refused before it is recorded (gRPC RESOURCE_EXHAUSTED, 413)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # TLS with the test PKI's server certificate; `client_ca`: clients must show a certificate that CA signed
    pki: Pki | None = None
    client_ca: bool = False

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.pki is not None else 'http'}://127.0.0.1:{self.port}"

    def _record(self, signal: str, request: Any, headers: dict[str, str],
                raw: bytes) -> tuple[Any, float | None] | None:
        with self.lock:
            self.attempts += 1
            verdict = self.fail(signal, raw) if self.fail else None
            if verdict is None:
                self.received.append(Received(signal, request, headers, raw))
            return verdict

    # -- views --------------------------------------------------------------------------------
    def spans(self, signal: str = "traces") -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received, in arrival order."""
        from otel_patter.spans import attrs_dict

        out = []
        with self.lock:
            got = list(self.received)
        for r in got:
            if r.signal != signal:
                continue
            for rs in r.request.resource_spans:
                res = attrs_dict(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend((res, s) for s in ss.spans)
        return out

    def wait_spans(self, n: int, timeout: float = 30.0) -> list[tuple[dict[str, Any], Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.spans()
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{type(self).__name__} got {len(self.spans())} spans, wanted {n}")

    def wait(self, pred: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError("condition not met in time")


class _Servicer:
    def __init__(self, owner: GrpcDownstream, signal: str) -> None:
        self.owner = owner
        self.signal = signal

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        verdict = self.owner._record(self.signal, request, headers, request.SerializeToString())
        if verdict is not None:
            code, retry = verdict
            if retry is not None:
                info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=int(retry),
                                                                        nanos=int(retry % 1 * 1e9)))
                st = status_pb2.Status(code=code.value[0], message="try later")
                st.details.add().Pack(info)
                context.set_trailing_metadata((("grpc-status-details-bin", st.SerializeToString()),))
            context.abort(code, "refused by test downstream")
        return RESPONSES[self.signal]()


class GrpcDownstream(Base):
    server: grpc.Server | None = None

    def start(self) -> GrpcDownstream:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", self.max_receive)],
                             compression=None)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self, "traces"), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Servicer(self, "metrics"), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Servicer(self, "logs"), server)
        deadline = time.monotonic() + 10
        pki = self.pki
        creds = None if pki is None else grpc.ssl_server_credentials(
            [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
            root_certificates=pki.ca.read_bytes() if self.client_ca else None, require_client_auth=self.client_ca)
        while not (server.add_insecure_port(f"127.0.0.1:{self.port}") if creds is None
                   else server.add_secure_port(f"127.0.0.1:{self.port}", creds)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot bind 127.0.0.1:{self.port}")
            time.sleep(0.1)
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait(5)
            self.server = None


class HttpDownstream(Base):
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        signal = request.path.rsplit("/", 1)[-1]
        raw = await request.read()
        body = gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
        msg = REQUESTS[signal].FromString(body)
        headers = {k.lower(): v for k, v in request.headers.items()}
        verdict = self._record(signal, msg, headers, body)
        if verdict is not None:
            status, retry = verdict
            extra = {"Retry-After": str(int(retry))} if retry is not None else {}
            st = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="refused by test downstream")
            return web.Response(status=status, body=st.SerializeToString(), content_type="application/x-protobuf",
                                headers=extra)
        return web.Response(body=RESPONSES[signal]().SerializeToString(), content_type="application/x-protobuf")

    def start(self) -> HttpDownstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            app = web.Application(client_max_size=self.max_receive)
            for sig in REQUESTS:
                app.router.add_post(f"/v1/{sig}", self._handle)
            self.runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
            loop.run_until_complete(self.runner.setup())
            ctx = None if self.pki is None else server_ssl_context(TlsConfig(**self.pki.tls_config(self.client_ca)))
            site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=ctx)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.runner.cleanup())
            loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("HTTP downstream did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None and self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop = None
            self.thread = None


def drain(target: ForwardTarget, root: Path, requests: list[bytes], until: Callable[[Downstream], bool] | None = None,
          timeout: float = 20.0, poll_s: float = 0.02, signals: list[str] | None = None) -> tuple[SelfMetrics, int]:
    """Enqueue `requests` (1 item each; traces unless `signals` names each one's) before the sender's first look,
    and run it until `until(downstream)` holds (default: its queue is empty) or `timeout`: its metrics and the
    records left in its queue."""
    metrics = SelfMetrics()
    done = until or (lambda d: not len(d.queue))

    async def main() -> int:
        d = Downstream(target, root, ForwardMetrics(metrics), fsync=False)
        await d.start()
        try:
            for signal, body in zip(signals or ["traces"] * len(requests), requests, strict=True):
                d.enqueue(signal, body, 1)
            deadline = time.monotonic() + timeout
            while not done(d) and time.monotonic() < deadline:
                await asyncio.sleep(poll_s)
            return len(d.queue)
        finally:
            await d.shutdown()

    return metrics, asyncio.run(main())


def split_bodies(raw: bytes, bodies: list[bytes]) -> list[bytes]:
    """The enqueued requests a received one is made of (a batch is their concatenation, in order)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        b = next((b for b in bodies if raw.startswith(b, pos)), None)
        if b is None:
            raise AssertionError(f"received bytes at {pos} are not one of the enqueued requests")
        out.append(b)
        pos += len(b)
    return out


def sample(m: SelfMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0
