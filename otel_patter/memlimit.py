"""Soft memory limit (config `limits.memory_mib`), as the collector's memory_limiter does it.

Over the limit the receivers refuse with UNAVAILABLE / 503 + Retry-After (a retryable refusal, so
clients keep the data and send it again later) instead of growing until the kernel kills us.

- The resident set size is read from `/proc/self/statm` at most every `check_interval` (100 ms):
  cheap enough for every request.
- Request bodies are accounted while they are read and processed (`Hold`), with an allowance for
  what decoding makes of them, so a flood of large concurrent requests is refused before it is read,
  not after. One request always gets through when it is the only one in flight and the process is
  under the limit (else a request larger than the headroom would be refused forever): the bound is
  the limit plus what one request costs to process.
- Over the limit, a garbage collection and `malloc_trim` give memory back to the system (at most once
  a second), then the limit is checked again.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import time
from collections.abc import Callable

from otel_patter.receivers.decode import Unavailable

MIB = 1024 * 1024
CHECK_INTERVAL_S = 0.1
RELIEF_INTERVAL_S = 1.0
RETRY_AFTER_S = 2.0
RESAMPLE_BYTES = MIB  # a request that held this much (with its expansion) makes the next check read RSS afresh
EXPANSION = 3  # memory a body costs while it is decoded and processed, per byte of (decompressed) body
# over gRPC more: grpc core's copy of the message, Python's bytes of it, the parsed request (measured: 4.2x the
# message's size at peak for a 6.7 MiB request, against 2x over HTTP; tests/reliability/test_memory_limit.py)
GRPC_EXPANSION = 5
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryLimiter:
    def __init__(self, limit_mib: int | None, *, check_interval: float = CHECK_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, rss: Callable[[], int] = read_rss,
                 on_refuse: Callable[[str], None] | None = None) -> None:
        self.limit = limit_mib * MIB if limit_mib else None
        self.check_interval = check_interval
        self.clock = clock
        self._read_rss = rss
        self.on_refuse = on_refuse
        self.inflight = 0  # bytes held by requests being read or processed (with the EXPANSION allowance)
        self.holders = 0  # requests holding some
        self.refused = 0
        self._rss = 0
        self._checked = -1e18
        self._relieved = -1e18

    @property
    def enabled(self) -> bool:
        return self.limit is not None

    def rss(self) -> int:
        now = self.clock()
        if now - self._checked >= self.check_interval:
            self._rss = self._read_rss()
            self._checked = now
        return self._rss

    def forget_rss(self) -> None:
        """The next check reads RSS afresh instead of the cached reading."""
        self._checked = -1e18

    def _fits(self, extra: int, alone: bool) -> bool:
        assert self.limit is not None
        rss = self.rss()
        if rss + self.inflight + extra <= self.limit:
            return True
        return alone and rss <= self.limit

    def _relieve(self) -> None:
        now = self.clock()
        if now - self._relieved < RELIEF_INTERVAL_S:
            return
        self._relieved = now
        gc.collect()
        _malloc_trim()
        self.forget_rss()

    def _refuse(self, signal: str) -> Unavailable:
        self.refused += 1
        if self.on_refuse is not None:
            self.on_refuse(signal)
        assert self.limit is not None
        return Unavailable(f"memory limit: {self._rss // MIB} MiB in use of limits.memory_mib="
                           f"{self.limit // MIB}; retry later", retry_after=RETRY_AFTER_S)

    def check(self, signal: str, extra: int = 0, alone: bool = True) -> None:
        """Raise Unavailable when `extra` more bytes would not fit under the limit."""
        if self.limit is None or self._fits(extra, alone):
            return
        self._relieve()
        if not self._fits(extra, alone):
            raise self._refuse(signal)

    def hold(self, signal: str) -> Hold:
        return Hold(self, signal)

    def status(self) -> str:
        if self.limit is None:
            return "ok"
        rss = self.rss()
        state = "ok" if rss <= self.limit else "over the limit: refusing"
        return f"{state} ({rss // MIB} MiB of {self.limit // MIB} MiB)"


class Hold:
    """Bytes one request holds while it is read and processed; released when the request is answered."""

    def __init__(self, limiter: MemoryLimiter, signal: str) -> None:
        self.limiter = limiter
        self.signal = signal
        self.bytes = 0

    def acquire(self) -> Hold:
        """Start holding (`with` does it; a request held across reads calls it, then `release`, itself)."""
        self.limiter.holders += 1
        return self

    def __enter__(self) -> Hold:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()

    def release(self) -> None:
        """Give back what was held, once."""
        lim = self.limiter
        lim.holders -= 1
        lim.inflight -= self.bytes
        if self.bytes >= RESAMPLE_BYTES:  # what it took is in RSS now (if not given back): the next check reads it
            lim.forget_rss()
        self.bytes = 0

    def add(self, n: int, expansion: int = EXPANSION, *, alone: bool | None = None) -> None:
        """Account for `n` more body bytes (raises Unavailable over the limit; nothing more is held then).
        `alone` (default: no other request holds bytes) lets it through over the limit while RSS is under it."""
        lim = self.limiter
        if lim.limit is None or n <= 0:
            return
        cost = n * expansion
        lim.check(self.signal, cost, alone=lim.holders <= 1 if alone is None else alone)
        lim.inflight += cost
        self.bytes += cost

    def resize(self, n: int, expansion: int = EXPANSION, *, alone: bool | None = None) -> None:
        """Hold what a body of `n` bytes costs instead of an earlier estimate (checked when that is more)."""
        lim = self.limiter
        if lim.limit is None:
            return
        cost = max(0, n) * expansion
        if cost > self.bytes:
            self.add(cost - self.bytes, expansion=1, alone=alone)
        else:
            lim.inflight -= self.bytes - cost
            self.bytes = cost
