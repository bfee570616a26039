"""OTLP/gRPC receiver (:4317): traces, metrics and logs services of opentelemetry-proto.

Each `Export` is registered as a stream-unary method (the same bytes on the wire as unary, so every
OTLP client works): its handler runs as soon as the call starts, before the request message is read,
so the bearer token and the memory limit are checked before a large message is taken in, and a refused
call never reads its message at all. The message is then read once (a second one, which no unary client
sends, is ignored, as grpc's unary methods do) as bytes and decoded here, so a malformed one is
INVALID_ARGUMENT (grpc's own deserialization would answer INTERNAL).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otel_patter.config import Endpoint
from otel_patter.memlimit import GRPC_EXPANSION, MemoryLimiter
from otel_patter.receivers.decode import PROTOBUF, InvalidArgument, Refusal, parse, partial_success_response
from otel_patter.receivers.security import ListenerAuth, grpc_server_credentials, listener_auth

log = logging.getLogger("otel_patter.receivers.grpc")


def _retry_metadata(r: Refusal) -> tuple[tuple[str, bytes], ...]:
    """RetryInfo both where the Python exporter looks and in the rich status (as the collector)."""
    if r.retry_after is None:
        return ()
    info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=int(r.retry_after),
                                                            nanos=int((r.retry_after % 1) * 1e9)))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=r.message)
    status.details.add().Pack(info)
    return (("google.rpc.retryinfo-bin", info.SerializeToString()),
            ("grpc-status-details-bin", status.SerializeToString()))


SERVICES = (  # (signal, service, request type, response type, pipeline method)
    ("traces", "opentelemetry.proto.collector.trace.v1.TraceService", trace_service_pb2.ExportTraceServiceRequest,
     trace_service_pb2.ExportTraceServiceResponse, "consume_traces"),
    ("metrics", "opentelemetry.proto.collector.metrics.v1.MetricsService",
     metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse,
     "consume_metrics"),
    ("logs", "opentelemetry.proto.collector.logs.v1.LogsService", logs_service_pb2.ExportLogsServiceRequest,
     logs_service_pb2.ExportLogsServiceResponse, "consume_logs"),
)


class _Service:
    def __init__(self, consume: Any, request_type: Any, response_type: Any, signal: str, max_request_bytes: int,
                 auth: ListenerAuth | None = None, memory: MemoryLimiter | None = None) -> None:
        self._consume = consume
        self._request_type = request_type
        self._response_type = response_type
        self._signal = signal
        self._max = max_request_bytes
        self._auth = auth or ListenerAuth(None)
        self._memory = memory or MemoryLimiter(None)

    async def Export(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._auth.check_grpc(context)
            with self._memory.hold(self._signal) as hold:
                hold.add(self._max, expansion=1)  # before the message is taken in: it may be this large
                # one read, as grpc's own unary path does: waiting for end-of-stream costs one more completion
                raw = await context.read()
                if raw is grpc.aio.EOF:
                    raise InvalidArgument("no request message")
                # now its real size, and what processing it costs. Processing runs to the end without yielding,
                # so no other request processes meanwhile: the others hold reservations for messages they have
                # not read, and this one goes through while RSS is under the limit (else a flood of reservations
                # could refuse every request at this step, and none would get through)
                hold.resize(len(raw), GRPC_EXPANSION, alone=True)
                request = parse(raw, PROTOBUF, self._request_type)
                del raw
                result = self._consume(request, "grpc")
        except Refusal as r:
            await context.abort(r.grpc_code, r.message, trailing_metadata=_retry_metadata(r))
        return partial_success_response(self._response_type, self._signal, result)

    def handler(self) -> grpc.RpcMethodHandler:
        return grpc.stream_unary_rpc_method_handler(self.Export, request_deserializer=bytes,
                                                    response_serializer=self._response_type.SerializeToString)


class OtlpGrpcReceiver:
    def __init__(self, endpoint: str, pipeline: Any, max_request_bytes: int, *, listener: Endpoint | None = None,
                 read_timeout: float = 30.0, max_connection_age: float = 600.0) -> None:
        self.endpoint = endpoint
        self.pipeline = pipeline
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self.max_connection_age = max_connection_age
        self.auth = listener_auth(listener)
        self.tls = listener.tls if listener is not None else None
        memory = getattr(pipeline, "memory", None)
        self.memory = memory if isinstance(memory, MemoryLimiter) else MemoryLimiter(None)
        self.server: grpc.aio.Server | None = None
        self.port: int = 0

    def options(self) -> list[tuple[str, int]]:
        """Slow or stalled clients hold nothing for long: a connection must finish its handshake within
        read_timeout; after max_connection_age (or that long idle) it gets GOAWAY, and RPCs still in flight
        then get read_timeout more before the connection is closed."""
        age_ms = int(self.max_connection_age * 1000)
        return [("grpc.max_receive_message_length", self.max_request_bytes),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.server_handshake_timeout_ms", int(self.read_timeout * 1000)),
                ("grpc.max_connection_idle_ms", age_ms),
                ("grpc.max_connection_age_ms", age_ms),
                ("grpc.max_connection_age_grace_ms", int(self.read_timeout * 1000)),
                # under a memory limit, stream windows stay small (no BDP growth): a call's message is not taken
                # in before its handler has admitted it, so a refused flood is never held in memory
                ("grpc.http2.bdp_probe", 0 if self.memory.enabled else 1)]

    async def start(self) -> None:
        self.server = grpc.aio.server(options=self.options())
        self.server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(service, {"Export": _Service(
                getattr(self.pipeline, method), req_t, resp_t, signal, self.max_request_bytes, self.auth,
                self.memory).handler()})
            for signal, service, req_t, resp_t, method in SERVICES))
        if self.tls is not None:
            self.port = self.server.add_secure_port(self.endpoint, grpc_server_credentials(self.tls))
        else:
            self.port = self.server.add_insecure_port(self.endpoint)
        if not self.port:
            raise OSError(f"cannot bind OTLP/gRPC on {self.endpoint}")
        await self.server.start()
        log.info("OTLP/gRPC listening on %s%s%s", self.endpoint, " (TLS)" if self.tls else "",
                 " (bearer token)" if self.auth.enabled else "")

    async def shutdown(self, grace: float = 2.0) -> None:
        """Stop accepting at once; RPCs in flight get `grace` seconds to finish, then are cancelled (never acked)."""
        if self.server is not None:
            await self.server.stop(grace=grace)
