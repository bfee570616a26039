"""OTLP/gRPC receiver (:4317): traces, metrics and logs services of opentelemetry-proto."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from otel_patter.receivers.decode import Refusal, partial_success_response

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


class _Service:
    def __init__(self, consume: Any, response_type: Any, signal: str) -> None:
        self._consume = consume
        self._response_type = response_type
        self._signal = signal

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            result = self._consume(request, "grpc")
        except Refusal as r:
            await context.abort(r.grpc_code, r.message, trailing_metadata=_retry_metadata(r))
        return partial_success_response(self._response_type, self._signal, result)


class OtlpGrpcReceiver:
    def __init__(self, endpoint: str, pipeline: Any, max_request_bytes: int) -> None:
        self.endpoint = endpoint
        self.pipeline = pipeline
        self.max_request_bytes = max_request_bytes
        self.server: grpc.aio.Server | None = None
        self.port: int = 0

    async def start(self) -> None:
        opts = [("grpc.max_receive_message_length", self.max_request_bytes),
                ("grpc.max_send_message_length", 4 * 1024 * 1024)]
        self.server = grpc.aio.server(options=opts)
        p = self.pipeline
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _Service(p.consume_traces, trace_service_pb2.ExportTraceServiceResponse, "traces"), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _Service(p.consume_metrics, metrics_service_pb2.ExportMetricsServiceResponse, "metrics"),
            self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
            _Service(p.consume_logs, logs_service_pb2.ExportLogsServiceResponse, "logs"), self.server)
        self.port = self.server.add_insecure_port(self.endpoint)
        if not self.port:
            raise OSError(f"cannot bind OTLP/gRPC on {self.endpoint}")
        await self.server.start()
        log.info("OTLP/gRPC listening on %s", self.endpoint)

    async def shutdown(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=2.0)
