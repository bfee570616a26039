"""OTLP/HTTP receiver (:4318): POST /v1/traces, /v1/metrics, /v1/logs; protobuf or JSON; gzip."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel_patter.receivers.decode import (
    JSON,
    PROTOBUF,
    Refusal,
    TooLarge,
    UnsupportedMediaType,
    decompress,
    encode_response,
    parse,
    partial_success_response,
)

log = logging.getLogger("otel_patter.receivers.http")

def _content_type(request: web.Request) -> str:
    return request.content_type.split(";")[0].strip().lower()


def _error(r: Refusal, content_type: str) -> web.Response:
    status = status_pb2.Status(code=r.grpc_code.value[0], message=r.message)
    ct = content_type if content_type in (PROTOBUF, JSON) else JSON
    headers = {}
    if r.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(r.retry_after)))
    return web.Response(status=r.http_status, body=encode_response(status, ct), content_type=ct, headers=headers)


class OtlpHttpReceiver:
    def __init__(self, endpoint: str, pipeline: Any, max_request_bytes: int) -> None:
        self.host, _, port = endpoint.rpartition(":")
        self.host = self.host.strip("[]") or "localhost"
        self.requested_port = int(port)
        self.pipeline = pipeline
        self.max_request_bytes = max_request_bytes
        self.runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        # compressed bodies are bounded by the same limit; decompression is bounded separately
        app = web.Application(client_max_size=self.max_request_bytes)
        p = self.pipeline
        for path, req_t, resp_t, consume, signal in (
            ("/v1/traces", ExportTraceServiceRequest, ExportTraceServiceResponse, p.consume_traces, "traces"),
            ("/v1/metrics", ExportMetricsServiceRequest, ExportMetricsServiceResponse, p.consume_metrics,
             "metrics"),
            ("/v1/logs", ExportLogsServiceRequest, ExportLogsServiceResponse, p.consume_logs, "logs"),
        ):
            app.router.add_post(path, self._handler(req_t, resp_t, consume, signal))
        return app

    def _handler(self, req_t: Any, resp_t: Any, consume: Any, signal: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            ct = _content_type(request)
            try:
                if ct not in (PROTOBUF, JSON):
                    raise UnsupportedMediaType(
                        f"unsupported Content-Type {ct!r}: use application/x-protobuf or application/json")
                try:
                    raw = await request.read()
                except web.HTTPRequestEntityTooLarge as e:
                    raise TooLarge(f"request body is over the {self.max_request_bytes} byte limit") from e
                body = decompress(raw, request.headers.get("Content-Encoding"), self.max_request_bytes)
                msg = parse(body, ct, req_t)
                transport = "http/protobuf" if ct == PROTOBUF else "http/json"
                result = consume(msg, transport)
            except Refusal as r:
                return _error(r, ct)
            return web.Response(body=encode_response(partial_success_response(resp_t, signal, result), ct),
                                content_type=ct)

        return handle

    async def start(self) -> None:
        # we inflate ourselves (decode.decompress) so the decompressed size limit holds
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, auto_decompress=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.requested_port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("OTLP/HTTP listening on %s:%s", self.host, self.port)

    async def shutdown(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
