"""OTLP/HTTP's fast path (receivers/http_fast.py) and its hand-off to aiohttp.

A plain keep-alive `POST /v1/traces` with a Content-Length body of at most 64 KiB (what the OTel exporters send for
a quiet call) is answered without aiohttp; anything else hands the connection to aiohttp with the bytes not
answered yet. Both paths answer a request the same way; these tests drive real sockets against the real service.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otel_patter.receivers.http_fast import FastHttp, FastHttpProtocol
from tests.otlp import request, span
from tests.reliability.certs import make_pki
from tests.reliability.inservice import InService

READ_TIMEOUT = 1.0
SLACK = 4.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InService]:
    with InService(tmp_path_factory.mktemp("fast"), **{"receivers.otlp.read_timeout": f"{READ_TIMEOUT}s"}) as s:
        yield s


def _fast(service: InService) -> FastHttp:
    """The OTLP/HTTP listener's fast path (its `connections` are those it has not handed to aiohttp)."""
    assert service.service is not None and service.service.http is not None
    fast = service.service.http.fast
    assert fast is not None
    return fast


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
    fast = _fast(service)
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


def test_a_head_read_alone_then_its_body_in_pieces_is_taken_whole(service: InService) -> None:
    """urllib3 (the OTel exporter's requests) sends a head and its body separately: a read may end at the head."""
    body = _turn("CA-fast-head-alone")
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_head(len(body)))
        time.sleep(0.2)  # read alone: nothing of its body yet
        sock.sendall(body[:10])
        time.sleep(0.2)
        sock.sendall(body[10:])
        buf = bytearray()
        assert _answer(sock, buf)[:3:2] == (200, b"")
        sock.sendall(_head(len(body)) + body)  # the same span again, on the same connection
        assert _answer(sock, buf)[0] == 200
        assert buf == b""  # nothing else was answered
    assert _spans(service, "CA-fast-head-alone") == 1


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
    fast = _fast(service)
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
    fast = _fast(service)
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
    (b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
     + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"Content-Length: 0\r\n\r\n", 400),
], ids=["GET", "other-path", "two-content-lengths", "no-host", "200-headers"])
def test_what_the_fast_path_does_not_take_gets_aiohttps_answer(service: InService, data: bytes, status: int) -> None:
    assert _one(service, data)[0] == status


def _both_paths(service: InService, body: bytes, content_type: str) -> tuple[tuple[int, dict[str, str], bytes], ...]:
    """The same request answered by the fast path, and chunked (so aiohttp answers it)."""
    fast = _one(service, _head(len(body), content_type=content_type) + body)
    chunked = (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    return fast, _one(service, chunked)


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"\xff\xff\xff", "application/x-protobuf", 400),  # malformed
    (b"{}", "text/plain", 415),
    (b"{}", "", 415),  # aiohttp reads an empty type as application/octet-stream: its message names that
    (b"{}", "protobuf", 415),
    (b"{}", "application/x-protobuf, application/json", 415),
], ids=["malformed", "text-plain", "empty-type", "bare-protobuf", "two-types"])
def test_a_refusal_is_the_same_answer_on_both_paths(service: InService, body: bytes, content_type: str,
                                                     status: int) -> None:
    fast, slow = _both_paths(service, body, content_type)
    assert fast[0] == slow[0] == status
    assert fast[2] == slow[2]
    assert fast[1]["content-type"] == slow[1]["content-type"]


def test_a_bug_in_a_handler_is_aiohttps_500_and_the_connection_ends(service: InService,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import otel_patter.receivers.otlp_http as otlp_http

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in parse")

    monkeypatch.setattr(otlp_http, "parse", broken)
    fast, slow = _both_paths(service, _turn("CA-fast-bug"), "application/x-protobuf")
    service.errors.clear()  # both logged the exception
    assert fast[0] == slow[0] == 500
    assert fast[2] == slow[2] == b"500 Internal Server Error\n\nServer got itself in trouble"
    assert (fast[1]["content-type"], fast[1]["connection"]) == (slow[1]["content-type"], slow[1]["connection"])


def test_a_head_arriving_in_pieces_stays_on_the_fast_path(service: InService) -> None:
    fast = _fast(service)
    body = _turn("CA-fast-head-pieces")
    data = _head(len(body)) + body
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 7):
            sock.sendall(data[i:i + 7])
            time.sleep(0.001)
        assert _answer(sock, bytearray())[0] == 200
        assert sock.getsockname() in {c.transport.get_extra_info("peername") for c in fast.connections}
    assert _spans(service, "CA-fast-head-pieces") == 1


@pytest.mark.parametrize("seed", range(25))
def test_pipelined_requests_of_both_paths_cut_anywhere_are_each_answered_once_in_order(service: InService,
                                                                                        seed: int) -> None:
    """Plain, chunked, query-string and refused requests in one stream, sent in pieces of 1 byte to 5 KB: the
    fast path answers until one is not plain, aiohttp from there, with every byte."""
    rnd = random.Random(seed)
    call_id = f"CA-fast-mix-{seed}"
    data, expected = b"", []
    for turn in range(rnd.randint(2, 8)):
        body = _turn(call_id, turn)
        kind = rnd.choice(["plain", "plain", "chunked", "query", "unsupported"])
        if kind == "plain":
            data += _head(len(body)) + body
        elif kind == "chunked":
            data += _chunked(body)
        elif kind == "query":
            data += _head(len(body)).replace(b"/v1/traces ", b"/v1/traces?x=1 ") + body
        else:
            data += _head(len(body), content_type="text/plain") + body
        expected.append(415 if kind == "unsupported" else 200)
    with socket.create_connection(("127.0.0.1", service.http_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pos = 0
        while pos < len(data):
            step = rnd.choice([1, 1, 2, 7, 50, 300, 5000])
            sock.sendall(data[pos:pos + step])
            pos += step
        buf = bytearray()
        assert [_answer(sock, buf)[0] for _ in expected] == expected
    assert _spans(service, call_id) == expected.count(200)


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


def _never_finished(s: InService, *extra: str) -> bytes:
    """The answer to a request whose body never comes whole (read_timeout is 30 s there: an answer within
    seconds was given from the head)."""
    body = _turn("CA-fast-early")
    with socket.create_connection(("127.0.0.1", s.http_port)) as sock:
        sock.sendall(_head(len(body), *extra) + body[:5])
        sock.settimeout(SLACK)
        return sock.recv(65536)


def test_a_bad_token_is_refused_from_the_head_without_waiting_for_the_body(tmp_path: Path) -> None:
    with InService(tmp_path, **{"receivers.otlp.http.auth_token": "otlp-token-0123456789abcdef"}) as s:
        said = _never_finished(s, "Authorization: Bearer wrong-token-0123456789")
    assert said.startswith(b"HTTP/1.1 401 "), said[:100]
    assert b'WWW-Authenticate: Bearer realm="otel-patter"' in said


def test_over_the_memory_limit_a_body_is_refused_from_its_head(tmp_path: Path) -> None:
    with InService(tmp_path, **{"limits.memory_mib": 32}) as s:
        said = _never_finished(s)
    assert said.startswith(b"HTTP/1.1 503 "), said[:100]
    assert b"Retry-After: " in said


def _holds(s: InService) -> tuple[int, int]:
    """The memory limiter's (bytes held, requests holding), read on the service's event loop."""
    async def read() -> tuple[int, int]:
        return s.pipeline.memory.inflight, s.pipeline.memory.holders

    return s.call(read())  # type: ignore[no-any-return]


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SLACK
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_a_body_arriving_is_held_against_the_memory_limit_until_answered_or_abandoned(tmp_path: Path) -> None:
    with InService(tmp_path, **{"limits.memory_mib": 4096}) as s:
        body = _turn("CA-fast-held")
        with socket.create_connection(("127.0.0.1", s.http_port)) as sock:
            sock.sendall(_head(len(body)) + body[:10])
            _until(lambda: _holds(s)[1] == 1)
            assert _holds(s)[0] > 0
            sock.sendall(body[10:])
            assert _answer(sock, bytearray())[0] == 200
            assert _holds(s) == (0, 0)
            sock.sendall(_head(len(body)) + body[:10])
            _until(lambda: _holds(s)[1] == 1)
        _until(lambda: _holds(s) == (0, 0))  # the connection went away mid-body: given back


def test_a_body_never_whole_gets_408_and_its_hold_back(tmp_path: Path) -> None:
    with InService(tmp_path, **{"receivers.otlp.read_timeout": "1s", "limits.memory_mib": 4096}) as s, \
            socket.create_connection(("127.0.0.1", s.http_port)) as sock:
        body = _turn("CA-fast-408")
        sock.sendall(_head(len(body)) + body[:5])
        status, headers, _ = _answer(sock, bytearray())
        assert (status, headers["connection"]) == (408, "close")
        sock.settimeout(SLACK)
        assert sock.recv(100) == b""
        _until(lambda: _holds(s) == (0, 0))


def test_shutdown_during_a_body_arriving_gives_its_hold_back_once(tmp_path: Path) -> None:
    with InService(tmp_path, **{"limits.memory_mib": 4096, "shutdown_timeout": "2s"}) as s:
        sock = socket.create_connection(("127.0.0.1", s.http_port))
        body = _turn("CA-fast-shutdown-held")
        sock.sendall(_head(len(body)) + body[:5])
        _until(lambda: _holds(s)[1] == 1)
        memory = s.pipeline.memory
    try:
        assert (memory.inflight, memory.holders) == (0, 0)  # not negative: released once
        sock.settimeout(SLACK)
        assert sock.recv(100) == b""
    finally:
        sock.close()


def test_a_keep_alive_client_sending_every_few_seconds_is_never_cut(tmp_path: Path) -> None:
    """As the SDK sends a quiet call (a batch every 5 s, read_timeout 30 s), scaled down: a request every 0.75 x
    read_timeout, heads and bodies in pieces or whole, on one connection."""
    with InService(tmp_path, **{"receivers.otlp.read_timeout": "1s"}) as s, \
            socket.create_connection(("127.0.0.1", s.http_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        for turn in range(4):
            time.sleep(0.75)
            body = _turn("CA-fast-every-few-seconds", turn)
            data = _head(len(body)) + body
            cut = (0, 20, len(data) - len(body) + 7)[turn % 3]  # whole; head in pieces; body in pieces
            if cut:
                sock.sendall(data[:cut])
                time.sleep(0.1)
            sock.sendall(data[cut:])
            assert _answer(sock, buf)[0] == 200
        assert _spans(s, "CA-fast-every-few-seconds") == 4


def test_a_connection_waiting_for_its_client_to_read_keeps_no_timer_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fired = [0]
    check = FastHttpProtocol._check_timers

    def counted(self: FastHttpProtocol) -> None:
        fired[0] += 1
        check(self)

    monkeypatch.setattr(FastHttpProtocol, "_check_timers", counted)
    plain = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
    with InService(tmp_path, **{"receivers.otlp.read_timeout": "0.5s"}) as s:
        def paused() -> bool:
            fast = _fast(s)
            return any(not c.transport.is_reading() for c in fast.connections)

        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", s.http_port))
            sock.setblocking(False)
            deadline = time.monotonic() + 20
            while not paused():  # requests it never reads the answers of, until the server stops reading
                assert time.monotonic() < deadline, "never paused"
                with contextlib.suppress(BlockingIOError):
                    sock.send(plain * 1000)
                time.sleep(0.02)
            before = fired[0]
            time.sleep(2.0)  # four read_timeouts
            assert paused()
            assert fired[0] - before <= 1  # no polling while it waits (it polled every 0.1 s)


def test_a_head_must_be_whole_read_timeout_after_connecting_however_late_it_starts(tmp_path: Path) -> None:
    with InService(tmp_path, **{"receivers.otlp.read_timeout": "2s"}) as s, \
            socket.create_connection(("127.0.0.1", s.http_port)) as sock:
        t0 = time.monotonic()
        time.sleep(1.5)
        sock.sendall(b"P")  # a head that never completes, started late
        sock.settimeout(10)
        assert sock.recv(100) == b""
        closed_after = time.monotonic() - t0
    assert closed_after < 3.0  # 2 s after connecting; a timer restarted by the late byte would say 3.5


def test_aiohttps_handler_does_not_keep_a_large_body_alive_while_it_is_consumed(tmp_path: Path) -> None:
    spans = [span("getpatter.tts", {"patter.call.id": "CA-fast-freed", "patter.turn.idx": i, "pad": "x" * 2000})
             for i in range(1500)]
    body = request(spans).SerializeToString()
    holders: list[str] = []
    with InService(tmp_path) as s:
        consume = s.pipeline.consume_traces
        route = _fast(s).routes["/v1/traces"].__closure__
        traces = next(c.cell_contents for c in route or () if type(c.cell_contents).__name__ == "_Route")

        def spy(msg, transport):  # type: ignore[no-untyped-def]
            frame = sys._getframe(1)
            while frame is not None:
                holders.extend(f"{frame.f_code.co_name}:{k}" for k, v in frame.f_locals.items()
                               if isinstance(v, bytes | bytearray) and len(v) >= len(body))
                frame = frame.f_back
            return consume(msg, transport)

        traces.consume = spy
        assert _one(s, _head(len(body)) + body)[0] == 200  # over 64 KiB: aiohttp's
    assert holders == []
