"""A fast path for small, plain HTTP/1.1 requests, in front of aiohttp.

A quiet sidecar sends a request every 5 s of a call, a few KiB and ~9 spans each: aiohttp's request machinery
(request and response objects, a task a request, its header serializer) cost ~85 µs of server CPU of such a
request, as much as half the pipeline's work on it; answering here costs ~30 µs (issue 9: `cpu_ms_per_call`).

Only the plain case is taken here: `POST <route> HTTP/1.1` with ASCII headers (at most MAX_HEADERS), a Host, one
Content-Length of at most `max_body`, a Content-Type, no Transfer-Encoding, Expect or Upgrade, keep-alive, and a
route that does not refuse it from its head (`Route` returns None: a bad token, an unsupported type, the memory
limit). A head arriving in pieces is waited for until `idle_timeout` after the connection went idle (then closed,
as aiohttp's keep-alive timer does); a body until `idle_timeout` after its head (then 408, as the aiohttp handler
answers), held against the memory limit meanwhile. On anything else the connection is handed to aiohttp as it
is, with every byte not answered yet, and stays there: chunked or large bodies, malformed heads, other paths and
methods, early refusals get exactly aiohttp's handling, limits and answers.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol

log = logging.getLogger("otel_patter.receivers.http")

MAX_HEAD = 8192  # a longer head is aiohttp's to judge
MAX_HEADERS = 64  # more is aiohttp's to judge (it refuses over 128); a client sends ~8
# request line and headers: printable ASCII (tabs in values), token header names; anything else is handed off
_HEAD = re.compile(r"POST (/[!-~]*) HTTP/1\.1((?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*)+)")
_HAND_OFF_HEADERS = frozenset({"transfer-encoding", "expect", "upgrade"})


@dataclass(slots=True, frozen=True)
class Answer:
    """An HTTP answer both paths write (aiohttp's `web.Response`, or this module's bytes)."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] | None = None


# what aiohttp answers when a handler raises (web_protocol.handle_error), and then it closes the connection
SERVER_ERROR = Answer(500, b"500 Internal Server Error\n\nServer got itself in trouble", "text/plain; charset=utf-8",
                      {"Connection": "close"})


class Request(Protocol):
    """A request a route took from its head: what it reserved is given back by exactly one of the two."""

    def answer(self, body: bytes) -> Answer: ...

    def abandon(self) -> None: ...  # its body never came whole (timeout, connection lost, shutdown)


# (lower-case header name -> value, body size) -> the request, or None when it is refused from its head alone (then
# aiohttp answers it, before reading its body, as it always did)
Route = Callable[[dict[str, str], int], Request | None]


class FastHttp:
    """The protocol factory for one listener: `loop.create_server(fast_http, ...)`."""

    def __init__(self, routes: dict[str, Route], fallback: Callable[[], asyncio.Protocol], *, max_body: int,
                 idle_timeout: float) -> None:
        self.routes = routes
        self.fallback = fallback  # aiohttp's protocol factory (`web.Server`): who takes a connection handed off
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.connections: set[FastHttpProtocol] = set()  # still ours (not handed off)
        self._date_at = 0
        self._date = ""

    def __call__(self) -> FastHttpProtocol:
        return FastHttpProtocol(self)

    def date(self) -> str:
        now = int(time.time())
        if now != self._date_at:  # formatted once a second
            self._date_at, self._date = now, formatdate(now, usegmt=True)
        return self._date

    def receiving(self) -> int:
        """Connections whose request's body is still arriving (shutdown lets them finish, as aiohttp's)."""
        return sum(1 for conn in self.connections if conn._request is not None)

    def close_all(self) -> None:
        """Close every connection still ours (a body still arriving is cut: never acked, so its client retries);
        what was written is still sent."""
        for conn in list(self.connections):
            conn.transport.close()


def encode_answer(answer: Answer, date: str) -> bytes:
    head = (f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}\r\n"
            f"Content-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}\r\nDate: {date}\r\n")
    if answer.headers:
        head += "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
    return (head + "\r\n").encode("latin-1") + answer.body


class FastHttpProtocol(asyncio.Protocol):
    __slots__ = ("_deadline", "_idle_since", "_loop", "_need", "_paused", "_request", "_rest", "_scanned", "_timer",
                 "owner", "transport")

    def __init__(self, owner: FastHttp) -> None:
        self.owner = owner
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # received, not answered: a head or a body still arriving, or requests while writing is paused
        self._rest = bytearray()
        self._need = 0  # how long `_rest` must be before it is worth reading again
        self._scanned = 0  # how much of a head in `_rest` has been searched for its end
        self._request: Request | None = None  # a request whose body is arriving (`_need` bytes)
        self._deadline = 0.0  # when that body must be whole
        self._idle_since = 0.0  # connected, or the last answer: a next head must be whole `idle_timeout` after
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.owner.connections.add(self)
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self.owner.idle_timeout, self._check_timers)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.owner.connections.discard(self)
        if self._request is not None:
            self._request, request = None, self._request
            request.abandon()

    def pause_writing(self) -> None:  # a client not reading its answers: stop reading its requests
        self._paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self._idle_since = self._loop.time()
        if self._timer is None and not self.transport.is_closing():  # stopped while paused
            self._timer = self._loop.call_later(self.owner.idle_timeout, self._check_timers)
        self.transport.resume_reading()
        if self._rest:
            self.data_received(b"")

    def _check_timers(self) -> None:
        """One timer a connection, re-armed for what is left instead of reset on every read: a body not whole by
        its deadline gets 408 (as the aiohttp handler answers); a connection with no whole head `idle_timeout`
        after it went idle is closed (aiohttp's keep-alive timer)."""
        now = self._loop.time()
        if self._request is not None:
            left = self._deadline - now
            if left <= 0:
                self._timer = None
                self._request, request = None, self._request
                request.abandon()
                timeout = self.owner.idle_timeout
                self._write(Answer(408, f"request body not received within {timeout:g}s\n".encode(),
                                   "text/plain; charset=utf-8", {"Connection": "close"}))
                self.transport.close()
                return
        else:
            left = self._idle_since + self.owner.idle_timeout - now
        if self._paused:  # waiting for the client to read its answers (aiohttp has no timeout for it either)
            self._timer = None  # resume_writing arms it again
        elif left > 0:
            self._timer = self._loop.call_later(left, self._check_timers)
        else:
            self._timer = None
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        rest = self._rest
        if rest or self._request is not None:  # a head or body still arriving (its first read may hold none of it)
            rest += data  # a bytearray: what arrives in many small reads is copied once, not once a read
            if len(rest) < self._need or self._paused:
                return
            buf = bytes(rest)
            rest.clear()
        else:
            buf = data
        pos = 0
        if self._request is not None:  # its body is whole now
            self._request, request = None, self._request
            pos = self._need
            if not self._answer(request, buf[:pos]):
                return
        while pos < len(buf):
            if self._paused:
                rest += buf[pos:]
                self._need = 0
                return
            if self.transport.is_closing():
                return
            taken = self._take(buf, pos)
            if taken == _WAIT:
                return
            if taken == _HAND_OFF:
                self._hand_off(buf[pos:])
                return
            pos = taken

    def _take(self, buf: bytes, pos: int) -> int:
        """Answer the plain request at `pos`: where it ends; _WAIT when its head or body is still arriving (kept in
        `_rest`); _HAND_OFF when it is not one (aiohttp's to answer)."""
        end = buf.find(b"\r\n\r\n", pos + self._scanned, pos + MAX_HEAD)
        if end < 0:
            if len(buf) - pos >= MAX_HEAD:
                return _HAND_OFF
            self._rest += buf[pos:]
            self._need = len(self._rest) + 1
            self._scanned = max(0, len(self._rest) - 3)
            return _WAIT
        self._scanned = 0
        try:
            m = _HEAD.fullmatch(buf[pos:end].decode("ascii"))
        except UnicodeDecodeError:
            return _HAND_OFF
        if m is None:
            return _HAND_OFF
        route = self.owner.routes.get(m.group(1))
        if route is None:
            return _HAND_OFF
        lines = m.group(2).split("\r\n")
        if len(lines) > MAX_HEADERS + 1:
            return _HAND_OFF
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.lower()
            if key in headers or key in _HAND_OFF_HEADERS:  # a repeated header: aiohttp's rules
                return _HAND_OFF
            headers[key] = value.strip(" \t")
        length = headers.get("content-length", "")
        connection = headers.get("connection")
        if (not length.isdigit() or len(length) > 9 or "content-type" not in headers or "host" not in headers
                or (connection is not None and connection.lower() != "keep-alive")):
            return _HAND_OFF
        size = int(length)
        if size > self.owner.max_body:
            return _HAND_OFF
        request = route(headers, size)
        if request is None:  # refused from its head: aiohttp answers it as early
            return _HAND_OFF
        start = end + 4
        if len(buf) < start + size:  # its body is still arriving: wait for it (held by the route meanwhile)
            self._request = request
            self._need = size
            self._rest += buf[start:]
            self._deadline = self._loop.time() + self.owner.idle_timeout
            return _WAIT
        return start + size if self._answer(request, buf[start:start + size]) else _WAIT

    def _answer(self, request: Request, body: bytes) -> bool:
        """Answer a request whose body is whole; False when the connection ends with it."""
        try:
            answer = request.answer(body)
        except Exception:  # a bug, never the client's fault: what aiohttp answers then, and the connection ends
            log.exception("OTLP/HTTP request failed")
            self._write(SERVER_ERROR)
            self.transport.close()
            return False
        self._write(answer)
        return True

    def _write(self, answer: Answer) -> None:
        self.transport.write(encode_answer(answer, self.owner.date()))
        self._idle_since = self._loop.time()

    def _hand_off(self, buf: bytes) -> None:
        """Give the connection to aiohttp, with the bytes not answered; it stays there."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.owner.connections.discard(self)
        self._rest.clear()
        self._need = self._scanned = 0
        protocol = self.owner.fallback()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if buf:
            protocol.data_received(buf)


_WAIT = -1
_HAND_OFF = -2
