"""OTLP/HTTP receiver (:4318): POST /v1/traces, /v1/metrics, /v1/logs; protobuf or JSON; gzip.

Before a body is read: the bearer token (401), the content type (415), the declared size (413) and
the memory limit (503 + Retry-After) are checked. The body is read in chunks against the size limit,
the memory limit and a deadline (`receivers.otlp.read_timeout`): a client that sends its body byte by
byte, or stops, gets 408 and its connection is closed; so is one that never finishes its request head
(aiohttp's keep-alive timer, set to the same timeout). TLS (and mTLS) by config.

Connections start on `http_fast`, which answers small plain requests itself through the same `_Route` as the
aiohttp handler (the same checks from the head, holds, deadlines and answers), and hands a connection to aiohttp
for anything else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import ClientError, web
from aiohttp.http_exceptions import HttpProcessingError
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

from otel_patter.config import Endpoint, split_endpoint
from otel_patter.memlimit import Hold, MemoryLimiter
from otel_patter.receivers.decode import (
    JSON,
    PROTOBUF,
    InvalidArgument,
    Refusal,
    TooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    decompress,
    encode_response,
    parse,
    partial_success_response,
)
from otel_patter.receivers.http_fast import Answer, FastHttp, Route
from otel_patter.receivers.security import listener_auth, server_ssl_context

log = logging.getLogger("otel_patter.receivers.http")
# bodies up to this are answered by http_fast (a quiet call's are ~3 KiB; the SDK's 512-span batches ~140 KiB, where
# aiohttp's cost is under 1 % of the request's)
FAST_MAX_BODY = 64 << 10


def _media_type(content_type: str) -> str:
    """A Content-Type without its parameters, lower case (aiohttp's parsed type, or the fast path's header)."""
    return content_type.split(";")[0].strip().lower()


def _refusal_answer(r: Refusal, content_type: str) -> Answer:
    status = status_pb2.Status(code=r.grpc_code.value[0], message=r.message)
    ct = content_type if content_type in (PROTOBUF, JSON) else JSON
    headers = {}
    if r.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(r.retry_after)))
    if isinstance(r, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="otel-patter"'
    return Answer(r.http_status, encode_response(status, ct), ct, headers)


def _response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type,
                        headers=answer.headers)


class _BodyTimeout(Exception):
    """The body did not arrive within read_timeout."""


class OtlpHttpReceiver:
    def __init__(self, endpoint: str, pipeline: Any, max_request_bytes: int, *, listener: Endpoint | None = None,
                 read_timeout: float = 30.0) -> None:
        self.host, self.requested_port = split_endpoint(endpoint)
        self.pipeline = pipeline
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self.auth = listener_auth(listener)
        self.tls = listener.tls if listener is not None else None
        memory = getattr(pipeline, "memory", None)
        self.memory: MemoryLimiter = memory if isinstance(memory, MemoryLimiter) else MemoryLimiter(None)
        self.runner: web.AppRunner | None = None
        self.server: asyncio.Server | None = None
        self.fast: FastHttp | None = None
        self.port = 0
        self.in_flight = 0  # aiohttp's requests being handled, body maybe still arriving (http_fast: receiving())

    def _routes(self) -> dict[str, _Route]:
        p = self.pipeline
        return {path: _Route(self, req_t, resp_t, consume, signal) for path, req_t, resp_t, consume, signal in (
            ("/v1/traces", ExportTraceServiceRequest, ExportTraceServiceResponse, p.consume_traces, "traces"),
            ("/v1/metrics", ExportMetricsServiceRequest, ExportMetricsServiceResponse, p.consume_metrics,
             "metrics"),
            ("/v1/logs", ExportLogsServiceRequest, ExportLogsServiceResponse, p.consume_logs, "logs"),
        )}

    def app(self, routes: dict[str, _Route]) -> web.Application:
        # compressed bodies are bounded by the same limit; decompression is bounded separately
        app = web.Application(client_max_size=self.max_request_bytes)
        for path, route in routes.items():
            app.router.add_post(path, self._counted(self._handler(route)))
        return app

    def _counted(self, handler: Any) -> Any:
        async def counted(request: web.Request) -> web.StreamResponse:
            self.in_flight += 1
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1

        return counted

    def _handler(self, route: _Route) -> Any:
        async def handle(request: web.Request) -> web.Response:
            ct = _media_type(request.content_type)
            try:
                route.check(ct, request.headers.get("Authorization"))
                with self.memory.hold(route.signal) as hold:
                    # the body is passed on, not kept here: `process` drops it before consuming (up to 16 MiB)
                    answer = route.process(ct, request.headers.get("Content-Encoding"),
                                           await self._read_body(request, hold), hold)
            except Refusal as r:
                answer = _refusal_answer(r, ct)
            except _BodyTimeout:
                return await self._timed_out(request)
            return _response(answer)

        return handle

    def _fast_route(self, route: _Route) -> Route:
        """The same route for `http_fast`: what the aiohttp handler refuses before reading a body (token, content
        type, memory for the declared length) refuses the request here too, so aiohttp answers it as early."""
        def start(headers: dict[str, str], size: int) -> _FastRequest | None:
            ct = _media_type(headers["content-type"])
            try:
                route.check(ct, headers.get("authorization"))
            except Refusal:
                return None
            hold = self.memory.hold(route.signal).acquire()
            try:
                hold.add(size)  # as `_read_body` holds a declared length, while the body arrives
            except Refusal:
                hold.release()
                return None
            return _FastRequest(route, ct, headers.get("content-encoding"), hold)

        return start

    async def _read_body(self, request: web.Request, hold: Hold) -> bytes:
        """The whole body, within the size limit, the memory limit and read_timeout."""
        declared = request.content_length
        if declared is not None and declared > self.max_request_bytes:
            raise TooLarge(f"request body of {declared} bytes is over the {self.max_request_bytes} byte limit")
        if declared:
            hold.add(declared)  # refuse a flood before reading it
        content = request.content
        chunks: list[bytes] = []
        size = 0
        try:
            if content.is_eof():  # the whole body is already buffered (a small request): no timer and no awaits
                chunk = content.read_nowait()
                self._count_chunk(size, chunk, declared, hold)
                chunks.append(chunk)
            else:
                async with asyncio.timeout(self.read_timeout):
                    while chunk := await content.readany():
                        size = self._count_chunk(size, chunk, declared, hold)
                        chunks.append(chunk)
        except TimeoutError as e:
            raise _BodyTimeout from e
        except (ClientError, HttpProcessingError, ConnectionError) as e:  # the client went away mid-body
            raise InvalidArgument(f"incomplete request body: {type(e).__name__}") from e
        return b"".join(chunks)

    def _count_chunk(self, size: int, chunk: bytes, declared: int | None, hold: Hold) -> int:
        """The body's size with `chunk`, within the size limit (and held, when no length was declared)."""
        size += len(chunk)
        if size > self.max_request_bytes:
            raise TooLarge(f"request body is over the {self.max_request_bytes} byte limit")
        if declared is None:
            hold.add(len(chunk))
        return size

    async def _timed_out(self, request: web.Request) -> web.Response:
        """408, then close the connection at once (no lingering read of the rest of a slow body)."""
        resp = web.Response(status=408, text=f"request body not received within {self.read_timeout:g}s\n")
        resp.force_close()
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except (ConnectionError, ClientError):
            pass
        protocol = request.protocol
        if protocol is not None:
            protocol.force_close()
        return resp

    async def start(self) -> None:
        # we inflate ourselves (decode.decompress) so the decompressed size limit holds; keepalive_timeout
        # also bounds how long a new connection may take to send its request head (aiohttp starts that timer
        # when the connection is made and closes the connection if no complete request arrived by then)
        routes = self._routes()
        self.runner = web.AppRunner(self.app(routes), access_log=None, handle_signals=False, auto_decompress=False,
                                    keepalive_timeout=self.read_timeout)
        await self.runner.setup()
        assert self.runner.server is not None
        # connections start on the fast path and move to aiohttp for anything it does not take (http_fast)
        self.fast = FastHttp({path: self._fast_route(route) for path, route in routes.items()},
                             self.runner.server, max_body=min(FAST_MAX_BODY, self.max_request_bytes),
                             idle_timeout=self.read_timeout)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.fast, self.host, self.requested_port, backlog=128,
                                               reuse_address=True, ssl=server_ssl_context(self.tls))
        sockets = self.server.sockets or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("OTLP/HTTP listening on %s:%s%s%s", self.host, self.port, " (TLS)" if self.tls else "",
                 " (bearer token)" if self.auth.enabled else "")

    async def shutdown(self, grace: float = 60.0) -> None:
        """Close the listener, then let requests in flight finish for up to `grace` seconds (then cancel them:
        a cancelled request was never acked, so its client retries).

        The listening socket closes first and open connections stay up until no request is in flight:
        aiohttp's cleanup() stops reading from every connection at once, which would starve a request whose
        body is still arriving."""
        if self.runner is None:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        if self.server is not None:
            self.server.close()
        fast = self.fast
        while (self.in_flight or (fast is not None and fast.receiving())) and loop.time() < until:
            await asyncio.sleep(0.02)
        if fast is not None:
            fast.close_all()
        # aiohttp reads it in cleanup(); 0 would mean "no timeout" there, so keep it positive
        self.runner._shutdown_timeout = max(0.05, until - loop.time())
        await self.runner.cleanup()


class _Route:
    """One OTLP path: what both the aiohttp handler and the fast path do with a request to it."""

    def __init__(self, receiver: OtlpHttpReceiver, req_t: Any, resp_t: Any, consume: Any, signal: str) -> None:
        self.receiver = receiver
        self.req_t = req_t
        self.resp_t = resp_t
        self.consume = consume
        self.signal = signal
        # the answer to a request that lost nothing (nearly every one), encoded once per content type
        self.ok = {ct: Answer(200, encode_response(resp_t(), ct), ct) for ct in (PROTOBUF, JSON)}

    def check(self, ct: str, authorization: str | None) -> None:
        """What is refused before the body is read: the bearer token, then the content type."""
        self.receiver.auth.check(authorization)
        if ct not in (PROTOBUF, JSON):
            raise UnsupportedMediaType(
                f"unsupported Content-Type {ct!r}: use application/x-protobuf or application/json")

    def process(self, ct: str, encoding: str | None, raw: bytes, hold: Hold) -> Answer:
        """Inflate, parse and consume a body read whole (its bytes held in `hold`)."""
        body = decompress(raw, encoding, self.receiver.max_request_bytes)
        hold.add(len(body) - len(raw))  # what inflating added
        msg = parse(body, ct, self.req_t)
        del raw, body
        result = self.consume(msg, "http/protobuf" if ct == PROTOBUF else "http/json")
        if not result.rejected and not result.message:  # partial_success_response: an empty response
            return self.ok[ct]
        return Answer(200, encode_response(partial_success_response(self.resp_t, self.signal, result), ct), ct)


class _FastRequest:
    """A request `http_fast` took from its head: its memory hold lasts until it is answered or abandoned."""

    __slots__ = ("ct", "encoding", "hold", "route")

    def __init__(self, route: _Route, ct: str, encoding: str | None, hold: Hold) -> None:
        self.route = route
        self.ct = ct
        self.encoding = encoding
        self.hold = hold

    def answer(self, body: bytes) -> Answer:
        try:
            return self.route.process(self.ct, self.encoding, body, self.hold)
        except Refusal as r:
            return _refusal_answer(r, self.ct)
        finally:
            self.hold.release()

    def abandon(self) -> None:
        self.hold.release()
