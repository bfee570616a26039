"""Slow clients hold nothing past a timeout (`receivers.otlp.read_timeout`, `receivers.otlp.max_connection_age`).

What we set (otlp_http.py, otlp_grpc.py):
- OTLP/HTTP: the request head and the whole body must arrive within `read_timeout` (default 30 s); else 408 and
  the connection is closed. A connection that never completes its request head, or stays idle after a response,
  is closed after `read_timeout` too (aiohttp's keep-alive timer). The memory limiter's hold on a slow body is
  released at once. The admin port closes such connections after `read_timeout` as well (the SDK report
  listener after its own 5 s).
- OTLP/gRPC: a connection must finish its handshake within `read_timeout` (`grpc.server_handshake_timeout_ms`);
  every connection gets GOAWAY after `max_connection_age` (default 10 min) or that long idle
  (`grpc.max_connection_age_ms`, `grpc.max_connection_idle_ms`), and an RPC still open then (a client that
  started a call and never sent its message, with no deadline of its own) is cut `read_timeout` later
  (`grpc.max_connection_age_grace_ms`). The OTel exporters always set a deadline (10 s default).

Here read_timeout is 1 s and max_connection_age 2 s; the bounds asserted are generous (these are timeouts that
must fire, not speeds).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.otlp import request, span
from tests.reliability.inservice import InService
from tests.server import free_port

READ_TIMEOUT = 1.0
MAX_AGE = 2.0
SLACK = 4.0  # on a loaded 2-core CI machine


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InService]:
    with InService(tmp_path_factory.mktemp("slow"), **{
            "receivers.otlp.read_timeout": f"{READ_TIMEOUT}s", "receivers.otlp.max_connection_age": f"{MAX_AGE}s",
            "limits.memory_mib": 4096, "admin.endpoint": f"127.0.0.1:{free_port()}"}) as s:
        yield s


def _body(call_id: str) -> bytes:
    return request([span("getpatter.llm", {"patter.call_id": call_id})]).SerializeToString()


def _head(n: int) -> bytes:
    return (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {n}\r\n\r\n").encode()


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Read until the server closes the connection; (seconds it took, what it said)."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {seconds}s; got {got[:200]!r}") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - t0, got


def _wait_idle(service: InService) -> None:
    deadline = time.monotonic() + READ_TIMEOUT + SLACK
    while time.monotonic() < deadline:
        if service.service.http.in_flight == 0 and service.pipeline.memory.inflight == 0:  # type: ignore[union-attr]
            return
        time.sleep(0.05)
    raise AssertionError("a request is still held")


def _post_ok(service: InService, call_id: str) -> None:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=10)
    try:
        c.request("POST", "/v1/traces", _body(call_id), {"Content-Type": "application/x-protobuf"})
        assert c.getresponse().status == 200
    finally:
        c.close()


def test_a_body_sent_byte_by_byte_gets_408_and_the_connection_closed(service: InService) -> None:
    body = _body("CA-trickle")
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.sendall(_head(len(body)))
        t0 = time.monotonic()
        sent = 0
        with pytest.raises(OSError):
            for b in body:
                sock.sendall(bytes([b]))
                sent += 1
                time.sleep(0.2)
                if time.monotonic() - t0 > READ_TIMEOUT + SLACK:
                    break
            sock.recv(1)  # (if every byte went out) what the server says
            raise OSError("closed")
        took = time.monotonic() - t0
        assert sent < len(body) and took <= READ_TIMEOUT + SLACK, (sent, took)
    _wait_idle(service)
    assert service.pipeline.rollup.get("CA-trickle") is None  # nothing half-read was taken in


def test_a_body_that_never_finishes_gets_408_then_close(service: InService) -> None:
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.sendall(_head(10_000) + b"\x0a\x00")  # 2 of 10000 bytes, then silence
        took, said = _closed_within(sock, READ_TIMEOUT + SLACK)
    assert said.startswith(b"HTTP/1.1 408"), said[:100]
    assert took >= READ_TIMEOUT * 0.9
    _wait_idle(service)


@pytest.mark.parametrize("head", [b"", b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"],
                         ids=["nothing", "half-a-head"])
def test_a_connection_that_never_sends_its_request_head_is_closed(service: InService, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.sendall(head)
        took, _ = _closed_within(sock, READ_TIMEOUT + SLACK)
    assert took >= READ_TIMEOUT * 0.5


@pytest.mark.parametrize("head", [b"", b"GET /api/v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc"],
                         ids=["nothing", "half-a-head"])
def test_a_connection_to_the_admin_port_that_never_sends_its_request_head_is_closed(
        service: InService, head: bytes) -> None:
    assert service.service is not None and service.service.admin is not None
    with socket.create_connection(("127.0.0.1", service.service.admin.port)) as sock:
        sock.sendall(head)
        took, _ = _closed_within(sock, READ_TIMEOUT + SLACK)
    assert took >= READ_TIMEOUT * 0.5


def test_an_idle_keep_alive_connection_is_closed(service: InService) -> None:
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        body = _body("CA-keepalive")
        sock.sendall(_head(len(body)) + body)
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        took, _ = _closed_within(sock, READ_TIMEOUT + SLACK)
    assert took >= READ_TIMEOUT * 0.5


def test_many_stalled_clients_do_not_keep_others_out_and_all_are_let_go(service: InService) -> None:
    socks = []
    try:
        for i in range(64):
            s = socket.create_connection(("127.0.0.1", service.http_port))
            s.sendall(_head(100_000) + b"\x0a" if i % 2 else b"POST /v1/tr")
            socks.append(s)
        _post_ok(service, "CA-among-the-stalled")  # served while 64 connections stall
        deadline = time.monotonic() + READ_TIMEOUT + SLACK + 2
        for s in socks:
            _closed_within(s, max(0.1, deadline - time.monotonic()))
    finally:
        for s in socks:
            s.close()
    _wait_idle(service)
    assert service.pipeline.rollup.get("CA-among-the-stalled") is not None


def test_a_grpc_connection_that_never_says_hello_is_closed(service: InService) -> None:
    with socket.create_connection(("127.0.0.1", service.grpc_port)) as sock:
        took, _ = _closed_within(sock, READ_TIMEOUT + MAX_AGE + SLACK)
    assert took >= READ_TIMEOUT * 0.5


def test_a_grpc_call_that_never_sends_its_message_is_cut_after_max_connection_age(service: InService) -> None:
    """No deadline from the client: the call would be open forever; GOAWAY at max_connection_age and the grace
    after it end it, and the server holds nothing."""
    never = threading.Event()

    def messages() -> Iterator[bytes]:
        never.wait(60)
        yield b""

    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as ch:
        export = ch.stream_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                 request_serializer=None, response_deserializer=None)
        t0 = time.monotonic()
        future = export.future(messages())
        try:
            with pytest.raises(grpc.RpcError) as e:
                future.result(timeout=MAX_AGE + READ_TIMEOUT + SLACK + 5)
        finally:
            never.set()
        took = time.monotonic() - t0
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL), e
    assert took <= MAX_AGE + READ_TIMEOUT + SLACK + 5
    _wait_idle(service)
    _post_ok(service, "CA-after-the-stalled-rpc")
