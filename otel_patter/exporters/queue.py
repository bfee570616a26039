"""A bounded persistent FIFO of serialized OTLP requests, one per downstream.

Layout under `<log_dir>/state/forward/<name>/`:

    seg-<16 digits>.q   segment files, appended to in order; a new one past `segment_bytes`
    ack                 "<segment> <offset>\\n": where the oldest record not yet sent (or dropped) starts

A record is a 13-byte header then the request bytes exactly as they will be sent:

    >I length of the payload | >I CRC-32 of (kind, items, payload) | >B kind | >I items | payload

`kind` is the signal (1 traces, 2 metrics, 3 logs); `items` counts its spans, data points or
log records, so drops are counted in the unit users lose. On open, records are scanned from
the ack position; a torn or corrupt tail (kill -9 in the middle of an append) is cut off,
so everything whose append returned survives a restart. Appends are `os.write` on an
O_APPEND descriptor (flushed to the OS: a process crash loses nothing; `fsync` by config
for power loss), and a failed append raises `StoreError` so the ingest path refuses the
request instead of acknowledging it.

Bound: the bytes of records not yet acknowledged stay at most `max_bytes`. An append that
would pass it drops the oldest records first and returns them so the caller counts them;
a record larger than the whole bound is refused the same way. Segments wholly before the
ack position are deleted.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from otel_patter.store.envelope_store import StoreError
from otel_patter.store.paths import makedirs_private

log = logging.getLogger("otel_patter.exporters.queue")

HEADER = struct.Struct(">IIBI")
KINDS = {"traces": 1, "metrics": 2, "logs": 3}
SIGNALS = {v: k for k, v in KINDS.items()}
MAX_RECORD = 1 << 31
_SEGMENT = re.compile(r"seg-(\d{16})\.q")
DIR_MODE = 0o700
FILE_MODE = 0o600


@dataclass(slots=True, frozen=True)
class Entry:
    seq: int  # position in this process's FIFO (not persisted)
    segment: int
    offset: int
    size: int  # header + payload
    kind: int
    items: int

    @property
    def signal(self) -> str:
        return SIGNALS.get(self.kind, "traces")


class CorruptRecord(OSError):
    """A queued record whose bytes on disk are not what was appended: dropped, never retried."""


def _crc(kind: int, items: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack(">BI", kind, items))) & 0xFFFFFFFF


class PersistentQueue:
    def __init__(self, directory: Path, max_bytes: int, *, fsync: bool = False,
                 segment_bytes: int | None = None) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes or min(16 * 1024 * 1024, max(64 * 1024, max_bytes // 8))
        self.entries: deque[Entry] = deque()
        self.bytes = 0  # header + payload of every record not yet acknowledged
        self._seq = 0
        self._tail = 0  # segment appended to
        self._tail_size = 0
        self._oldest = 0  # lowest segment number that may still exist
        self._fd: int | None = None
        self._read_fds: dict[int, int] = {}
        self.recovered_records = 0
        self.cut_bytes = 0  # torn or corrupt bytes cut off at open

    # -- open / close ------------------------------------------------------------------------
    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.iterdir():
            m = _SEGMENT.fullmatch(p.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def _path(self, seg: int) -> Path:
        return self.dir / f"seg-{seg:016d}.q"

    def _read_ack(self) -> tuple[int, int] | None:
        try:
            seg, off = (self.dir / "ack").read_text().split()
            return int(seg), int(off)
        except (FileNotFoundError, ValueError):
            return None

    def open(self) -> None:
        """Create the directory, rebuild the FIFO from disk, cut a torn tail. Raises StoreError."""
        try:
            makedirs_private(self.dir, DIR_MODE)
            segments = self._segments()
            ack = self._read_ack()
            head_seg, head_off = ack if ack is not None else (segments[0] if segments else 1, 0)
            for seg in segments:
                if seg < head_seg:
                    os.unlink(self._path(seg))
            segments = [s for s in segments if s >= head_seg]
            for seg in segments:
                self._scan(seg, head_off if seg == head_seg else 0, last=seg == segments[-1])
            self._tail = segments[-1] if segments else head_seg
            self._oldest = segments[0] if segments else head_seg
            self._tail_size = self._size(self._tail)
            self._open_tail()
        except OSError as e:
            raise StoreError(e.errno, f"forward queue {self.dir}: {e.strerror or e}") from e
        self.recovered_records = len(self.entries)

    @staticmethod
    def _file_size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def _size(self, seg: int) -> int:
        return self._file_size(self._path(seg))

    def _scan(self, seg: int, start: int, *, last: bool) -> None:
        path = self._path(seg)
        with open(path, "rb") as fh:
            data = fh.read()
        off = start
        while off + HEADER.size <= len(data):
            length, crc, kind, items = HEADER.unpack_from(data, off)
            end = off + HEADER.size + length
            if end > len(data) or kind not in SIGNALS or _crc(kind, items, data[off + HEADER.size:end]) != crc:
                break
            self._push(seg, off, end - off, kind, items)
            off = end
        if off < len(data):
            self.cut_bytes += len(data) - off
            if last:
                log.warning("forward queue: cut %d torn bytes at the end of %s", len(data) - off, path.name)
                os.truncate(path, off)
            else:
                log.warning("forward queue: %d corrupt bytes skipped in %s", len(data) - off, path.name)

    def _push(self, seg: int, off: int, size: int, kind: int, items: int) -> Entry:
        self._seq += 1
        e = Entry(self._seq, seg, off, size, kind, items)
        self.entries.append(e)
        self.bytes += size
        return e

    def _open_tail(self) -> None:
        self._fd = os.open(self._path(self._tail), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                           | os.O_CLOEXEC, FILE_MODE)

    def close(self) -> None:
        for fd in [self._fd, *self._read_fds.values()]:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = None
        self._read_fds.clear()

    # -- append (ingest path) ----------------------------------------------------------------
    def append(self, signal: str, payload: bytes, items: int) -> list[Entry]:
        """Make one request durable; return the entries dropped to make room (oldest first).

        A payload larger than the whole bound is not written: it comes back as the only
        dropped entry (seq 0). Raises StoreError when the write fails.
        """
        kind = KINDS[signal]
        size = HEADER.size + len(payload)
        if size > self.max_bytes or len(payload) >= MAX_RECORD:
            return [Entry(0, 0, 0, size, kind, items)]
        ndrop, room = 0, self.max_bytes - self.bytes
        while ndrop < len(self.entries) and size > room:  # to drop, once the new record is written
            room += self.entries[ndrop].size
            ndrop += 1
        if self._fd is None or (self._tail_size > 0 and self._tail_size + size > self.segment_bytes):
            self._rotate()
        record = HEADER.pack(len(payload), _crc(kind, items, payload), kind, items) + payload
        assert self._fd is not None
        try:
            view = memoryview(record)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:
            self._undo_partial()
            raise StoreError(e.errno, {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system"}
                             .get(e.errno or 0, e.strerror or str(e))) from e
        dropped = [self.entries.popleft() for _ in range(ndrop)]
        self.bytes -= sum(e.size for e in dropped)
        self._push(self._tail, self._tail_size, size, kind, items)
        self._tail_size += size
        if dropped:
            self._advance()
        return dropped

    def _undo_partial(self) -> None:
        """A failed append may have written part of the record: cut it so later records stay readable."""
        try:
            if self._fd is not None and os.fstat(self._fd).st_size != self._tail_size:
                os.ftruncate(self._fd, self._tail_size)
        except OSError:
            self._rotate_quietly()

    def _rotate_quietly(self) -> None:
        try:
            self._rotate()
        except OSError:
            self._fd = None  # the next append tries again

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tail_size > 0 or self._size(self._tail) > 0:
            self._tail += 1
        self._tail_size = 0
        try:
            self._open_tail()
        except OSError as e:
            raise StoreError(e.errno, e.strerror or str(e)) from e

    # -- consume (sender) ------------------------------------------------------------------------
    def peek(self) -> Entry | None:
        return self.entries[0] if self.entries else None

    def head_batch(self, max_payload_bytes: int) -> list[Entry]:
        """The head record and the ones right after it of the same signal while their payloads together stay within
        `max_payload_bytes` (the head alone when it is bigger, or the bound is 0); empty when the queue is."""
        if not self.entries:
            return []
        head = self.entries[0]
        batch = [head]
        total = head.size - HEADER.size
        for e in itertools.islice(self.entries, 1, None):
            total += e.size - HEADER.size
            if e.kind != head.kind or total > max_payload_bytes:
                break
            batch.append(e)
        return batch

    def read(self, e: Entry) -> bytes:
        fd = self._read_fds.get(e.segment)
        if fd is None:
            for seg in [s for s in self._read_fds if s < e.segment]:
                os.close(self._read_fds.pop(seg))
            fd = os.open(self._path(e.segment), os.O_RDONLY | os.O_CLOEXEC)
            self._read_fds[e.segment] = fd
        raw = os.pread(fd, e.size, e.offset)
        if len(raw) < HEADER.size:
            raise CorruptRecord(errno.EIO, "queue record cut short")
        length, crc, kind, items = HEADER.unpack_from(raw, 0)
        payload = raw[HEADER.size:]
        if len(payload) != length or _crc(kind, items, payload) != crc:
            raise CorruptRecord(errno.EIO, "queue record does not match its checksum")
        return payload

    def pop(self, seq: int) -> bool:
        """Acknowledge the head record (sent, or refused for good). False when it was dropped meanwhile."""
        if not self.entries or self.entries[0].seq != seq:
            return False
        return self.pop_through(seq) == 1

    def pop_through(self, seq: int) -> int:
        """Acknowledge every record up to `seq` still queued (a batch sent, or refused for good); how many."""
        n = 0
        while self.entries and self.entries[0].seq <= seq:
            self.bytes -= self.entries.popleft().size
            n += 1
        if n:
            self._advance()
        return n

    def _advance(self) -> None:
        """Persist the ack position and delete segments wholly before it (best effort: worst case resend)."""
        if self.entries:
            seg, off = self.entries[0].segment, self.entries[0].offset
        else:
            seg, off = self._tail, self._tail_size
        tmp = self.dir / "ack.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            try:
                os.write(fd, f"{seg} {off}\n".encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / "ack")
        except OSError as e:
            log.warning("forward queue: cannot persist the ack position (%s); records may be resent",
                        e.strerror or e)
            return
        for s in [s for s in self._read_fds if s < seg]:
            os.close(self._read_fds.pop(s))
        while self._oldest < seg:
            try:
                os.unlink(self._path(self._oldest))
            except FileNotFoundError:
                pass
            except OSError:
                break
            self._oldest += 1

    def __len__(self) -> int:
        return len(self.entries)
