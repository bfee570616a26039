"""A fast path for small, plain HTTP/1.1 requests, in front of aiohttp.

A quiet sidecar sends a request every 5 s of a call, a few KiB and ~9 spans each: aiohttp's request machinery
(request and response objects, a task a request, its header serializer) cost ~85 µs of server CPU of such a
request, as much as half the pipeline's work on it; answering here costs ~30 µs (issue 9: `cpu_ms_per_call`).

Only the plain case is taken here: a `POST <route> HTTP/1.1` whose head arrived whole, ASCII headers, one
Content-Length of at most `max_body`, a Content-Type, no Transfer-Encoding, Expect or Upgrade, keep-alive. Its
body is waited for (Python's http.client sends it after the head) until `idle_timeout` (then 408, as aiohttp's
handler answers). On anything else the connection is handed to aiohttp as it is, with every byte not answered
yet, and stays there: chunked or large bodies, heads arriving in pieces, malformed heads, other paths and methods
get exactly aiohttp's handling, limits and answers.
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

log = logging.getLogger("otel_patter.receivers.http")

MAX_HEAD = 8192  # a longer head is aiohttp's to judge
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


# (content type without parameters, lower-case header name -> value, body) -> the answer
Handler = Callable[[str, dict[str, str], bytes], Answer]


class FastHttp:
    """The protocol factory for one listener: `loop.create_server(fast_http, ...)`."""

    def __init__(self, routes: dict[str, Handler], fallback: Callable[[], asyncio.Protocol], *, max_body: int,
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
        return sum(1 for conn in self.connections if conn._need)

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
    __slots__ = ("_deadline", "_idle", "_last_active", "_need", "_paused", "_rest", "owner", "transport")

    def __init__(self, owner: FastHttp) -> None:
        self.owner = owner
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._rest = bytearray()  # received, not answered: a body still arriving, or requests while writing is paused
        self._need = 0  # the bytes `_rest` must hold before the request at its start is complete
        self._deadline: float | None = None  # when a body still arriving must be complete (read_timeout)
        self._paused = False
        self._last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections.add(self)
        loop = asyncio.get_running_loop()
        self._last_active = loop.time()
        self._idle = loop.call_later(self.owner.idle_timeout, self._check_timers)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.owner.connections.discard(self)

    def pause_writing(self) -> None:  # a client not reading its answers: stop reading its requests
        self._paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self.transport.resume_reading()
        if self._rest:
            self.data_received(b"")

    def _stop_timer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _check_timers(self) -> None:
        """Close a connection idle for `idle_timeout` (as aiohttp's keep-alive timeout does), and answer 408 to a
        body not complete by its deadline (as the aiohttp handler does). One timer a connection, re-armed for what
        is left instead of reset on every read."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._deadline is not None:
            left = self._deadline - now
            if left <= 0:
                self._idle = None
                timeout = self.owner.idle_timeout
                self.transport.write(encode_answer(
                    Answer(408, f"request body not received within {timeout:g}s\n".encode(),
                           "text/plain; charset=utf-8", {"Connection": "close"}), self.owner.date()))
                self.transport.close()
                return
        else:
            left = self._last_active + self.owner.idle_timeout - now
        if left > 0 or self._paused:
            self._idle = loop.call_later(max(left, 0.1), self._check_timers)
        else:
            self._idle = None
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._last_active = loop.time()
        rest = self._rest
        if rest:
            rest += data  # a bytearray: a body arriving in many small reads is copied once, not once a read
            if len(rest) < self._need or self._paused:
                return
            buf = bytes(rest)
            rest.clear()
        else:
            buf = data
        self._need = 0
        self._deadline = None
        while buf:
            if self._paused:
                rest += buf
                return
            if self.transport.is_closing():
                return
            taken = self._answer_one(buf)
            if taken == 0:
                self._hand_off(buf)
                return
            if taken < 0:  # its body is still arriving: wait for it (until read_timeout)
                rest += buf
                self._need = -taken
                self._deadline = self._last_active + self.owner.idle_timeout
                return
            buf = buf[taken:]

    def _answer_one(self, buf: bytes) -> int:
        """Answer the plain request at the start of `buf`: the bytes it took; -n when it is one but needs `n`
        bytes in all (its body still arriving); 0 when it is not one (aiohttp's to answer)."""
        end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            return 0
        try:
            m = _HEAD.fullmatch(buf[:end].decode("ascii"))
        except UnicodeDecodeError:
            return 0
        if m is None:
            return 0
        handler = self.owner.routes.get(m.group(1))
        if handler is None:
            return 0
        headers: dict[str, str] = {}
        for line in m.group(2).split("\r\n")[1:]:
            name, _, value = line.partition(":")
            key = name.lower()
            if key in headers or key in _HAND_OFF_HEADERS:  # a repeated header: aiohttp's rules
                return 0
            headers[key] = value.strip(" \t")
        length = headers.get("content-length", "")
        connection = headers.get("connection")
        ctype = headers.get("content-type")
        if (not length.isdigit() or len(length) > 9 or ctype is None
                or (connection is not None and connection.lower() != "keep-alive")):
            return 0
        size = int(length)
        if size > self.owner.max_body:
            return 0
        start = end + 4
        if len(buf) < start + size:
            return -(start + size)
        body = buf[start:start + size]
        try:
            answer = handler(ctype.split(";")[0].strip().lower(), headers, body)
        except Exception:  # a bug, never the client's fault: 500, and this connection ends
            log.exception("OTLP/HTTP request failed")
            self.transport.write(encode_answer(Answer(500, b"500 Internal Server Error\n", "text/plain"),
                                               self.owner.date()))
            self.transport.close()
            return start + size
        self.transport.write(encode_answer(answer, self.owner.date()))
        return start + size

    def _hand_off(self, buf: bytes) -> None:
        """Give the connection to aiohttp, with the bytes not answered; it stays there."""
        self._stop_timer()
        self.owner.connections.discard(self)
        if self.transport.is_closing():
            return
        protocol = self.owner.fallback()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if buf:
            protocol.data_received(buf)
