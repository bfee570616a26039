"""OTLP/HTTP's fast path (receivers/http_fast.py) and its hand-off to aiohttp.

A plain keep-alive `POST /v1/traces` with a Content-Length body of at most 64 KiB (what the OTel exporters send for
a quiet call) is answered without aiohttp; anything else hands the connection to aiohttp with the bytes not
answered yet. Both paths answer a request the same way; these tests drive real sockets against the real service.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_patter.receivers.otlp_http import OtlpHttpReceiver
from tests.otlp import request, span
from tests.reliability.certs import make_pki
from tests.reliability.inservice import InService

READ_TIMEOUT = 1.0
SLACK = 4.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InService]:
    with InService(tmp_path_factory.mktemp("fast"), **{"receivers.otlp.read_timeout": f"{READ_TIMEOUT}s"}) as s:
        yield s


def _receiver(service: InService) -> OtlpHttpReceiver:
    assert service.service is not None and service.service.http is not None
    return service.service.http


def _turn(call_id: str, turn: int = 0) -> bytes:
    """One turn's LLM span as getpatter 0.7.0 sends it (the call id, usage, the turn index)."""
    return request([span("getpatter.llm", {"patter.call_id": call_id, "patter.llm.provider": "openai",
                                           "patter.llm.model": "gpt-4o-mini", "patter.cost.llm_input_tokens": 812,
                                           "patter.cost.llm_output_tokens": 64, "patter.turn.idx": turn})]
                   ).SerializeToString()


def _head(n: int, *extra: str, content_type: str = "application/x-protobuf") -> bytes:
    lines = ["POST /v1/traces HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}", f"Content-Length: {n}",
             *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(body: bytes) -> bytes:
    return (b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")


def _answer(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """The next answer on the connection: (status, lower-case headers, body); `buf` keeps what follows it."""
    sock.settimeout(10)
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed; got {bytes(buf)[:200]!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    status_line, *lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    size = int(headers.get("content-length", "0"))
    while len(buf) < end + 4 + size:
        buf += sock.recv(65536)
    body = bytes(buf[end + 4:end + 4 + size])
    del buf[:end + 4 + size]
    return int(status_line.split(" ")[1]), headers, body


def _one(service: InService, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.sendall(data)
        return _answer(sock, bytearray())


def _spans(service: InService, call_id: str) -> int:
    env = service.pipeline.rollup.get(call_id)
    return 0 if env is None else int(env["counts"]["spans"])


def test_requests_on_one_keep_alive_connection_stay_on_the_fast_path(service: InService) -> None:
    fast = _receiver(service).fast
    assert fast is not None
    conn = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=10)  # head and body: two sends
    try:
        for turn in range(3):
            conn.request("POST", "/v1/traces", _turn("CA-fast-keepalive", turn),
                         {"Content-Type": "application/x-protobuf"})
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b"")
        assert len(fast.connections) == 1  # never handed to aiohttp
    finally:
        conn.close()
    assert _spans(service, "CA-fast-keepalive") == 3


def test_the_answer_is_an_empty_export_response_with_its_length_type_and_date(service: InService) -> None:
    body = _turn("CA-fast-answer")
    status, headers, answer = _one(service, _head(len(body)) + body)
    assert (status, answer) == (200, b"")
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-length"] == "0"
    assert headers["date"].endswith(" GMT")


def test_a_json_request_gets_a_json_answer(service: InService) -> None:
    body = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",'
            b'"spanId":"eee19b7ec3c1b174","name":"getpatter.llm","startTimeUnixNano":"1795412722000000000",'
            b'"endTimeUnixNano":"1795412722500000000","attributes":[{"key":"patter.call_id",'
            b'"value":{"stringValue":"CA-fast-json"}}]}]}]}]}')
    status, headers, answer = _one(service, _head(len(body), content_type="application/json") + body)
    assert (status, headers["content-type"], answer) == (200, "application/json", b"{}")
    assert _spans(service, "CA-fast-json") == 1


def test_a_body_arriving_in_pieces_is_taken_once_it_is_whole(service: InService) -> None:
    body = _turn("CA-fast-pieces")
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.sendall(_head(len(body)))
        for i in range(0, len(body), 40):
            sock.sendall(body[i:i + 40])
            time.sleep(0.01)
        assert _answer(sock, bytearray())[0] == 200
    assert _spans(service, "CA-fast-pieces") == 1


def test_two_pipelined_requests_are_answered_in_order(service: InService) -> None:
    first, second = _turn("CA-fast-pipelined", 0), _turn("CA-fast-pipelined", 1)
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.sendall(_head(len(first)) + first + _head(len(second), content_type="text/plain") + second)
        buf = bytearray()
        assert _answer(sock, buf)[0] == 200
        assert _answer(sock, buf)[0] == 415
    assert _spans(service, "CA-fast-pipelined") == 1


def test_a_chunked_request_is_handed_to_aiohttp_which_answers_it(service: InService) -> None:
    status, _, answer = _one(service, _chunked(_turn("CA-fast-chunked")))
    assert (status, answer) == (200, b"")
    assert _spans(service, "CA-fast-chunked") == 1


def test_a_connection_handed_to_aiohttp_stays_there_and_keeps_being_answered(service: InService) -> None:
    fast = _receiver(service).fast
    assert fast is not None
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        buf = bytearray()
        sock.sendall(_chunked(_turn("CA-fast-handed", 0)))
        assert _answer(sock, buf)[0] == 200
        assert sock.getsockname() not in {c.transport.get_extra_info("peername") for c in fast.connections}
        body = _turn("CA-fast-handed", 1)
        sock.sendall(_head(len(body)) + body)  # plain, but this connection is aiohttp's now
        assert _answer(sock, buf)[0] == 200
    assert _spans(service, "CA-fast-handed") == 2


def test_a_client_that_reads_its_answers_late_is_not_read_from_meanwhile(service: InService) -> None:
    """Requests pipelined while the answers back up: the server stops reading the connection until the client
    reads (pause_writing), then answers the rest, in order."""
    fast = _receiver(service).fast
    assert fast is not None
    one = _turn("CA-fast-late-reader")
    request_bytes = _head(len(one)) + one
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        buf = bytearray()
        sock.sendall(request_bytes)
        assert _answer(sock, buf)[0] == 200
        (conn,) = [c for c in fast.connections if c.transport.get_extra_info("peername") == sock.getsockname()]
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn.transport.set_write_buffer_limits(high=2048)  # backs up after ~20 answers instead of megabytes
        sender = threading.Thread(target=sock.sendall, args=(request_bytes * 1000,), daemon=True)
        sender.start()
        deadline = time.monotonic() + SLACK
        while conn.transport.is_reading() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not conn.transport.is_reading()  # its answers are not read: neither are its requests
        statuses = [_answer(sock, buf)[0] for _ in range(1000)]
        sender.join(SLACK)
    assert statuses == [200] * 1000  # the same span each time: answered every time, counted once
    assert _spans(service, "CA-fast-late-reader") == 1


def test_expect_100_continue_is_answered_by_aiohttp(service: InService) -> None:
    body = _turn("CA-fast-expect")
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.sendall(_head(len(body), "Expect: 100-continue"))
        buf = bytearray()
        sock.settimeout(10)
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        assert bytes(buf).startswith(b"HTTP/1.1 100 Continue\r\n")
        del buf[:buf.index(b"\r\n\r\n") + 4]
        sock.sendall(body)
        assert _answer(sock, buf)[0] == 200
    assert _spans(service, "CA-fast-expect") == 1


def test_a_body_over_64_kib_goes_to_aiohttp_and_is_taken(service: InService) -> None:
    spans = [span("getpatter.tts", {"patter.call_id": "CA-fast-large", "patter.tts.provider": "elevenlabs",
                                    "patter.cost.tts_chars": 64, "patter.turn.idx": i}) for i in range(700)]
    body = request(spans).SerializeToString()
    assert len(body) > 64 << 10
    assert _one(service, _head(len(body)) + body)[0] == 200
    assert _spans(service, "CA-fast-large") == 700


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"POST /v1/other HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
     b"Content-Length: 0\r\n\r\n", 404),
    (b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
     b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n\x0a\x00", 400),
], ids=["GET", "other-path", "two-content-lengths"])
def test_what_the_fast_path_does_not_take_gets_aiohttps_answer(service: InService, data: bytes, status: int) -> None:
    assert _one(service, data)[0] == status


@pytest.mark.parametrize(("body", "content_type"), [
    (b"\xff\xff\xff", "application/x-protobuf"),  # malformed: 400
    (b"{}", "text/plain"),  # unsupported: 415
], ids=["malformed", "unsupported-type"])
def test_a_refusal_is_the_same_answer_on_both_paths(service: InService, body: bytes, content_type: str) -> None:
    fast = _one(service, _head(len(body), content_type=content_type) + body)
    chunked = (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    slow = _one(service, chunked)
    assert fast[0] == slow[0] and fast[0] in (400, 415)
    assert fast[2] == slow[2]
    assert fast[1]["content-type"] == slow[1]["content-type"]


def test_shutdown_closes_an_idle_fast_path_connection_at_once(tmp_path: Path) -> None:
    with InService(tmp_path) as s:
        sock = socket.create_connection(("127.0.0.1", s.http_port))
        body = _turn("CA-fast-shutdown")
        sock.sendall(_head(len(body)) + body)
        assert _answer(sock, bytearray())[0] == 200
    try:
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed by the server, not left open
    finally:
        sock.close()


def test_over_tls_a_connection_starts_fast_and_is_handed_off_intact(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with InService(tmp_path / "log", **{"receivers.otlp.http.tls": pki.tls_config(mtls=False)}) as s:
        ctx = pki.client_context(cert=None)
        with socket.create_connection(("127.0.0.1", s.http_port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            buf = bytearray()
            body = _turn("CA-fast-tls", 0)
            sock.sendall(_head(len(body)) + body)
            assert _answer(sock, buf)[0] == 200
            sock.sendall(_chunked(_turn("CA-fast-tls", 1)))  # aiohttp's from here on, on the same TLS session
            assert _answer(sock, buf)[0] == 200
            body = _turn("CA-fast-tls", 2)
            sock.sendall(_head(len(body)) + body)
            assert _answer(sock, buf)[0] == 200
        assert _spans(s, "CA-fast-tls") == 3
