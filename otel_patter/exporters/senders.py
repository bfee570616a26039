"""Send already-serialized OTLP requests to one downstream: OTLP/gRPC (grpc.aio) or OTLP/HTTP (aiohttp).

Nothing is re-encoded: the bytes that were made durable in the queue are the bytes sent
(gRPC through a generic unary call whose request serializer is the identity). Only our
own config is read, never `OTEL_EXPORTER_OTLP_*` (that points at us), and no proxy
variables (`trust_env=False`).

Retry rules are the OTLP spec's (research/otel-anchors.md §7):
- gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS are
  retried; RESOURCE_EXHAUSTED only when the server sent RetryInfo; its delay is honoured.
- HTTP: 429, 502, 503, 504 are retried, honouring `Retry-After` (seconds or an HTTP date);
  every other 4xx/5xx is final. Connection failures and timeouts are retried.
A 2xx/OK answer may carry `partial_success`: its rejected items are final (never retried).
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otel_patter.config import ClientTlsConfig, ConfigError, ForwardTarget

GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
RESPONSES: dict[str, Any] = {
    "traces": ExportTraceServiceResponse,
    "metrics": ExportMetricsServiceResponse,
    "logs": ExportLogsServiceResponse,
}
REJECTED_FIELD = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}
GRPC_RETRYABLE = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                            grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})
HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0
MAX_MESSAGE = 2**31 - 1
GZIP_IN_THREAD_BYTES = 64 * 1024  # bigger bodies are compressed off the event loop: zlib releases the GIL, so
# a batch's 7 ms a MiB runs on the other core instead of holding up the acks of requests arriving meanwhile


@dataclass(slots=True)
class SendResult:
    ok: bool
    retryable: bool = False
    retry_after: float | None = None  # seconds the server asked us to wait
    rejected: int = 0  # items a successful answer said it dropped (partial_success)
    error: str = ""  # short, never a payload value: "UNAVAILABLE", "HTTP 503", "connection refused"
    too_large: bool = False  # refused for its size: HTTP 413, gRPC RESOURCE_EXHAUSTED "larger than max"
    timed_out: bool = False  # no answer within the timeout (it may still have arrived)


def host_port(endpoint: str) -> tuple[str, int]:
    """Host and port of a downstream URL (the scheme's port when none is given)."""
    u = urllib.parse.urlsplit(endpoint)
    host = u.hostname or ""
    return host, u.port or (443 if u.scheme == "https" else 80)


def _clamp(seconds: float) -> float:
    return max(0.0, min(MAX_RETRY_AFTER_S, seconds))


def _rejected(signal: str, body: bytes) -> tuple[int, str]:
    if not body:
        return 0, ""
    try:
        resp = RESPONSES[signal].FromString(body)
    except DecodeError:
        return 0, ""
    if not resp.HasField("partial_success"):
        return 0, ""
    return int(getattr(resp.partial_success, REJECTED_FIELD[signal])), resp.partial_success.error_message[:200]


def client_ssl_context(target: ForwardTarget) -> ssl.SSLContext:
    """The TLS context of a verified connection to `target`: its `tls.ca_file` (else the system's CAs) and our
    client certificate, when configured. A PEM file that does not load is a ConfigError naming the target."""
    tls = target.tls or ClientTlsConfig()
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError([(f"forward[{target.name}].tls", f"cannot load the PEM files: {e}")]) from None
    return ctx


def _pem(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class GrpcSender:
    def __init__(self, target: ForwardTarget) -> None:
        self.target = target
        host, port = host_port(target.endpoint)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}

    async def start(self) -> None:
        t = self.target
        opts = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.enable_http_proxy", 0),
                # reconnect on our retry schedule, not grpc's own (up to 120 s) after a downstream outage
                ("grpc.initial_reconnect_backoff_ms", max(50, int(t.retry_initial_interval * 1000))),
                ("grpc.min_reconnect_backoff_ms", max(50, int(t.retry_initial_interval * 1000))),
                ("grpc.max_reconnect_backoff_ms", max(100, int(t.retry_max_interval * 1000)))]
        compression = grpc.Compression.Gzip if self.target.compression == "gzip" else None
        if self.target.insecure:
            self.channel = grpc.aio.insecure_channel(self.address, options=opts, compression=compression)
        else:
            client_ssl_context(t)  # grpc reads the PEM files only when it connects: a bad one fails here, at start
            tls = t.tls or ClientTlsConfig()
            creds = grpc.ssl_channel_credentials(root_certificates=_pem(tls.ca_file), private_key=_pem(tls.key_file),
                                                 certificate_chain=_pem(tls.cert_file))
            self.channel = grpc.aio.secure_channel(self.address, creds, options=opts, compression=compression)
        for signal, method in GRPC_METHODS.items():
            self._calls[signal] = self.channel.unary_unary(
                method, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    async def send(self, signal: str, payload: bytes) -> SendResult:
        try:
            body = await self._calls[signal](payload, timeout=self.target.timeout,
                                             metadata=tuple(self.target.headers) or None)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                # the connection may have gone silent (no FIN, no RST: a dropped NAT or load balancer entry);
                # grpc would keep sending into it for good, so the next attempt gets a fresh one (as HTTP does)
                await self.close()
                await self.start()
            delay = self._retry_delay(e.trailing_metadata())
            throttled = code == grpc.StatusCode.RESOURCE_EXHAUSTED
            retryable = code in GRPC_RETRYABLE or (throttled and delay is not None)
            too_large = throttled and delay is None and "larger than max" in (e.details() or "").lower()
            return SendResult(False, retryable, delay, error=code.name, too_large=too_large,
                              timed_out=code == grpc.StatusCode.DEADLINE_EXCEEDED)
        rejected, message = _rejected(signal, body)
        return SendResult(True, rejected=rejected, error=message)

    @staticmethod
    def _retry_delay(metadata: Any) -> float | None:
        for key, value in metadata or ():
            try:
                if key == "google.rpc.retryinfo-bin":
                    info = error_details_pb2.RetryInfo.FromString(value)
                    return _clamp(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
                if key == "grpc-status-details-bin":
                    status = status_pb2.Status.FromString(value)
                    for detail in status.details:
                        info = error_details_pb2.RetryInfo()
                        if detail.Unpack(info):
                            return _clamp(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
            except (DecodeError, TypeError):
                continue
        return None

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(grace=None)


class HttpSender:
    def __init__(self, target: ForwardTarget) -> None:
        self.target = target
        u = urllib.parse.urlsplit(target.endpoint)
        path = u.path.rstrip("/")
        for sig in ("traces", "metrics", "logs"):
            if path.endswith(f"/v1/{sig}"):
                path = path[: -len(f"/v1/{sig}")]
        self.base = urllib.parse.urlunsplit((u.scheme, u.netloc, path, "", ""))
        self.session: aiohttp.ClientSession | None = None
        self.ssl: ssl.SSLContext | bool | None = None
        if u.scheme == "https" and target.insecure:
            self.ssl = False  # TLS without certificate verification, as asked by `insecure: true`
        elif u.scheme == "https" and target.tls is not None:
            self.ssl = client_ssl_context(target)  # a private CA and/or our client certificate

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.target.timeout),
                                             trust_env=False)

    def url(self, signal: str) -> str:
        return f"{self.base}/v1/{signal}"

    async def send(self, signal: str, payload: bytes) -> SendResult:
        assert self.session is not None
        headers = {"Content-Type": "application/x-protobuf", **dict(self.target.headers)}
        body = payload
        if self.target.compression == "gzip":
            body = (gzip.compress(payload, compresslevel=5) if len(payload) < GZIP_IN_THREAD_BYTES
                    else await asyncio.to_thread(gzip.compress, payload, 5))
            headers["Content-Encoding"] = "gzip"
        try:
            async with self.session.post(self.url(signal), data=body, headers=headers, ssl=self.ssl) as resp:
                data = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return SendResult(False, True, error=_short(e), timed_out=isinstance(e, TimeoutError))
        if 200 <= status < 300:
            rejected, message = _rejected(signal, data)
            return SendResult(True, rejected=rejected, error=message)
        retryable = status in HTTP_RETRYABLE
        return SendResult(False, retryable, _parse_retry_after(retry_after) if retryable else None,
                          error=f"HTTP {status}", too_large=status == 413)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _short(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(e, aiohttp.ClientConnectorError):
        return "connection refused" if isinstance(e.os_error, ConnectionRefusedError) else "cannot connect"
    return type(e).__name__


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return _clamp(float(value))
    except ValueError:
        pass
    try:
        return _clamp(parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def make_sender(target: ForwardTarget) -> GrpcSender | HttpSender:
    return GrpcSender(target) if target.protocol == "grpc" else HttpSender(target)
