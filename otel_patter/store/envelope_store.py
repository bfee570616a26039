"""The on-disk store: SDK-compatible call directories, write-ahead logs, index, pending log.

Layout under `log_dir` (research §3, DESIGN.md "Envelope store"):

    calls/YYYY/MM/DD/<dir>/metadata.json   envelope (atomic tmp + fsync + rename, 0600)
    calls/YYYY/MM/DD/<dir>/spans.jsonl     append-only WAL of sanitized spans
    state/index.jsonl                      call id -> dir, open/final + revision (append-only)
    state/pending.jsonl                    spans still waiting for a call id
    state/final-traces[.1].jsonl           trace ids of the latest final calls (append-only, rotated)

Every write goes through `FileOps`, the fault seam tests use to inject ENOSPC/EROFS.
Nothing here follows a symlink out of `log_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from otel_patter.processors.envelope import WRITER
from otel_patter.store.paths import inside, makedirs_private

if TYPE_CHECKING:
    from otel_patter.spans import SpanRecord

log = logging.getLogger("otel_patter.store")

SCHEMA_VERSION = "1.0"
DIR_MODE = 0o700
FILE_MODE = 0o600
OURS_MARKER = b'"writer": "otel-patter"'
PROBE_BYTES = 4096  # what `probe` writes to see whether a failing disk takes writes again
# the trace ids of the latest final calls kept across a restart: 4-8 MiB in two files, ~115k-230k ids (rollup's
# trace map holds 200k)
FINAL_TRACES_KEEP_BYTES = 4 << 20
_CALL_RELDIR = re.compile(r"calls/\d{4}/\d{2}/\d{2}/[A-Za-z0-9._-]+")  # what paths.relative_call_dir makes


_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)  # what Path.exists() reads as "not there"


class StoreError(OSError):
    """A write failed; the request that needed it must be refused (UNAVAILABLE), not acked."""


class FileOps:
    """The only place that touches the disk for writes (a seam for fault injection)."""

    def __init__(self, fsync: bool) -> None:
        self.fsync = fsync

    def _write_all(self, fd: int, data: bytes) -> None:
        """Write every byte (a full disk first shortens a write, then fails the next one)."""
        if not data:
            return
        n = os.write(fd, data)
        if n == len(data):  # the common case: one write took it all (no memoryview)
            return
        view = memoryview(data)[n:]
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def append(self, path: str | Path, data: bytes) -> None:
        """Append whole lines or nothing, never glued onto half a line (which would make a reader skip both, and
        so lose the acknowledged one): a failed append is cut back to where it started, and a file that does not
        end its last line (a kill -9 cut a write short; a cut-back failed) gets that line ended first, so readers
        skip it alone as one bad line."""
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data
            try:
                self._write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # then the next append ends the torn line (above)
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def write_atomic(self, path: str | Path, data: bytes) -> None:
        head, _, name = os.fspath(path).rpartition("/")  # strings: Path.with_name costs ~5 µs a write
        tmp = f"{head}/.tmp.{os.getpid()}.{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                self._write_all(fd, data)
                if self.fsync:  # tmp + rename is atomic either way; durable across power loss by config,
                    os.fsync(fd)  # like the WAL these files are rebuilt from (a fsync blocks ~1 ms)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # never leave a half-written temp file behind on a full disk
            raise

    def rename(self, src: str | Path, dst: str | Path) -> None:
        os.replace(src, dst)

    def mkdirs(self, path: str | Path) -> None:
        makedirs_private(path, DIR_MODE)


def iso_now(t: float | None = None) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` (milliseconds truncated): isoformat, 40 % cheaper than strftime."""
    return datetime.fromtimestamp(time.time() if t is None else t, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    """An envelope file's bytes: `json.dumps(indent=2)` + newline, byte for byte, written by orjson (10x)."""
    try:
        return orjson.dumps(envelope, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # a non-str key or an unusual type: the json module's rules
        return (json.dumps(envelope, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


# what json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False) builds on every call
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(obj: Any) -> str:
    return _encode(obj)


_wal_ts: list[Any] = [None, ""]  # (arrival time, its ISO form) of the last `wal_lines`


class EnvelopeStore:
    def __init__(self, root: Path, *, fsync: bool = False, retention_days: int = 30,
                 ops: FileOps | None = None) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.index_path = self.state_dir / "index.jsonl"
        self.pending_path = self.state_dir / "pending.jsonl"
        self.final_traces_path = self.state_dir / "final-traces.jsonl"
        self.older_final_traces_path = self.state_dir / "final-traces.1.jsonl"  # the one before the last rotation
        self._final_traces_bytes: int | None = None  # its size, read once, then counted
        self.retention_days = retention_days
        self.ops = ops or FileOps(fsync)
        self.error: str | None = None  # last write failure, for /readyz
        self.errors_total = 0
        self._known_dirs: set[str] = set()
        self._root_s = os.fspath(root)  # WAL paths are joined as strings: a Path join per append costs ~5 µs
        self._days: dict[str, tuple[int, int]] = {}  # day directories checked inside log_dir (dev, inode)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.ops.mkdirs(self.root)
        self.ops.mkdirs(self.root / "calls")
        self.ops.mkdirs(self.state_dir)
        self._refuse_planted_symlinks()

    def _refuse_planted_symlinks(self) -> None:
        """`calls/`, `state/` and the forward queues' directories must be real directories: one planted as a
        symlink would send the index, the pending log or queued data out of log_dir (log_dir itself may be a
        symlink: the operator chose it). Call and day directories are checked as they are made."""
        forward = self.state_dir / "forward"
        candidates = [self.root / "calls", self.state_dir, forward]
        if forward.is_dir() and not forward.is_symlink():
            candidates += sorted(forward.iterdir())
        for p in candidates:
            if p.is_symlink():
                raise StoreError(errno.ELOOP, f"{p} is a symbolic link; otel-patter writes only to real directories "
                                              "under log_dir (remove it)")

    async def shutdown(self) -> None:
        return None

    # -- writes (each raises StoreError) --------------------------------------------------
    def _guard(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` with an OSError turned into a StoreError (and `error` set, which readiness reports)."""
        try:
            result = fn(*args)
        except OSError as e:
            self.errors_total += 1
            self.error = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
                          errno.EDQUOT: "disk quota exceeded"}.get(e.errno or 0, e.strerror or str(e))
            raise StoreError(e.errno, self.error) from e
        self.error = None
        return result

    def ensure_call_dir(self, reldir: str) -> None:
        if reldir not in self._known_dirs:
            if not self._new_dir_in_checked_day(reldir):
                path = self.root / reldir
                # checked before creating anything (a planted symlink on the way must not make us mkdir outside
                # log_dir) and after (nothing replaced a component meanwhile)
                if not inside(self.root, path):
                    raise StoreError(errno.EPERM, f"call directory escapes log_dir: {reldir}")
                self._guard(self.ops.mkdirs, path)
                if not inside(self.root, path):
                    raise StoreError(errno.EPERM, f"call directory escapes log_dir: {reldir}")
                self._remember_day(reldir)
            self._known_dirs.add(reldir)

    def _remember_day(self, reldir: str) -> None:
        """A day directory `ensure_call_dir` checked (resolved inside log_dir), by identity."""
        if _CALL_RELDIR.fullmatch(reldir) is not None:
            day = reldir.rpartition("/")[0]
            with contextlib.suppress(OSError):
                st = os.lstat(self.root / day)
                self._days[day] = (st.st_dev, st.st_ino)

    def _new_dir_in_checked_day(self, reldir: str) -> bool:
        """The fast path of `ensure_call_dir` for a new call in a day directory already checked and still
        the same one (a single new path component, no resolve of the whole chain): True when the call
        directory is now a real directory there; False sends the caller through the full checks. Paths are
        strings here (a new call per few spans under load: pathlib joins cost ~5 µs each)."""
        day, _, name = reldir.rpartition("/")
        if _CALL_RELDIR.fullmatch(reldir) is None or name in (".", ".."):
            return False
        ident = self._days.get(day)
        if ident is None:
            return False
        try:
            st = os.lstat(f"{self._root_s}/{day}")
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != ident:
            return False
        path = f"{self._root_s}/{reldir}"
        self._guard(self.ops.mkdirs, path)  # mkdir never follows a symlink planted as the call directory
        try:
            return stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return False

    def probe(self) -> bool:
        """After a write failure, whether the disk takes writes again (a small file in `state/`, then removed).
        Clears `error` on success, so readiness comes back without waiting for a client to try."""
        target = self.state_dir / ".probe"
        try:
            self._guard(self.ops.write_atomic, target, b"\0" * PROBE_BYTES)
        except StoreError:
            return False
        with contextlib.suppress(OSError):
            os.unlink(target)
        return True

    def _call_dir(self, reldir: str) -> str:
        """A call's directory, made (and checked) the first time, as a string: a Path join costs ~5 µs and the
        WAL and envelope writes ask for it per call per request."""
        if reldir not in self._known_dirs:
            self.ensure_call_dir(reldir)
        return f"{self._root_s}/{reldir}"

    def append_wal(self, reldir: str, lines: list[str]) -> None:
        self._guard(self.ops.append, self._call_dir(reldir) + "/spans.jsonl", ("\n".join(lines) + "\n").encode())

    def append_wal_bytes(self, reldir: str, data: bytes) -> None:
        """Append complete lines (`wal_lines`) to a call's WAL."""
        self._guard(self.ops.append, self._call_dir(reldir) + "/spans.jsonl", data)

    def append_index(self, entries: list[dict[str, Any]]) -> None:
        if entries:
            self._guard(self.ops.append, self.index_path, "".join(dumps(e) + "\n" for e in entries).encode())

    def append_pending_bytes(self, data: bytes) -> None:
        if data:
            self._guard(self.ops.append, self.pending_path, data)

    def rewrite_pending(self, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode() if lines else b""
        self._guard(self.ops.write_atomic, self.pending_path, data)

    def append_final_traces(self, call_id: str, trace_ids: list[str]) -> None:
        """Remember a final call's trace ids: rollup's trace map (how a span without a call id finds its call) is
        memory, and after a restart a late span of a final call must still reopen it. Past
        FINAL_TRACES_KEEP_BYTES the file becomes `final-traces.1.jsonl` (replacing the one before): the latest
        ids are kept with one rename, never a copy on the event loop."""
        data = orjson.dumps({"id": call_id, "traces": trace_ids}, option=orjson.OPT_APPEND_NEWLINE)
        path = self.final_traces_path
        self._guard(self.ops.append, path, data)
        size = self._final_traces_bytes
        if size is None:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = len(data)
        else:
            size += len(data)
        self._final_traces_bytes = size
        if size > FINAL_TRACES_KEEP_BYTES:
            try:
                self.ops.rename(path, self.older_final_traces_path)
                self._final_traces_bytes = 0
            except OSError as e:  # best effort: the next append tries again
                log.warning("could not rotate %s: %s", path, e.strerror or e)

    def read_final_traces(self) -> Iterator[tuple[str, list[str]]]:
        """(call id, its trace ids) of the final calls `append_final_traces` remembered, oldest first."""
        for path in (self.older_final_traces_path, self.final_traces_path):
            for e in self._read_jsonl(path):
                cid, traces = e.get("id"), e.get("traces")
                if isinstance(cid, str) and isinstance(traces, list):
                    yield cid, [t for t in traces if isinstance(t, str)]

    def write_envelope(self, reldir: str, envelope: dict[str, Any]) -> str:
        """Write metadata.json, or otel-patter.json beside one the SDK (or anyone) wrote; the path written."""
        d = self._call_dir(reldir)
        target = f"{d}/metadata.json"
        if self._guard(self._taken, target):  # a stat failing (EACCES, EIO) is a store error like a failed write
            target = f"{d}/otel-patter.json"
        self._guard(self.ops.write_atomic, target, envelope_bytes(envelope))
        return target

    def _taken(self, path: str) -> bool:
        """A file is at `path` and it is not ours (the SDK's metadata.json)."""
        try:
            os.stat(path)  # none yet: Path.exists, without its cost
        except OSError as e:
            if e.errno in _ABSENT:
                return False
            raise
        return not self._is_ours(path)

    @staticmethod
    def _is_ours(path: str | Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # os-level: a buffered open() costs ~10 µs more
        except OSError:
            return False
        try:
            return OURS_MARKER in os.read(fd, 4096)
        except OSError:
            return False
        finally:
            os.close(fd)

    # -- reads ------------------------------------------------------------------------------
    @staticmethod
    def wal_line(record_json: dict[str, Any], side: str | None, ts: float) -> str:
        return dumps({"schema_version": SCHEMA_VERSION, "ts": iso_now(ts), "type": "span", "side": side,
                      "data": record_json})

    @staticmethod
    def wal_lines(records: Iterable[SpanRecord], ts: float, *, pending: bool = False,
                  resources: dict[int, Any] | None = None) -> bytes:
        """`wal_line(record.to_json(), side)` of each record at one arrival time (side null when `pending`), as
        the bytes to append: the same line, written by orjson (10x json) in one call per line (no concatenation
        of heads). `resources` caches each shared resource dict's encoding (by id, for one request only)."""
        last_ts, iso = _wal_ts
        if ts != last_ts:  # one request appends to many calls at one arrival time: its timestamp is made once
            iso = iso_now(ts)
            _wal_ts[:] = [ts, iso]
        if resources is None:
            resources = {}
        enc = orjson.dumps
        nl = orjson.OPT_APPEND_NEWLINE
        out: list[bytes] = []
        append = out.append
        for r in records:
            res = r.resource
            frag = resources.get(id(res))
            if frag is None:  # the records of a request share one resource dict: encoded once, spliced as is
                frag = resources[id(res)] = orjson.Fragment(enc(res))
            append(enc({"schema_version": SCHEMA_VERSION, "ts": iso, "type": "span",
                        "side": None if pending else r.side, "data": r.to_json(frag)},
                       option=nl))
        return b"".join(out)

    @staticmethod
    def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
        """Complete lines only: a torn last line (kill -9 mid-write) is skipped."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()  # one read and split: a restart replays 10k calls' WALs (issue 9)
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        lines.pop()  # what follows the last newline: nothing, or a torn line
        loads = orjson.loads  # 4x json; JSONDecodeError is a ValueError
        for raw in lines:
            try:
                obj = loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj

    def read_wal(self, reldir: str) -> Iterator[dict[str, Any]]:
        return self._read_jsonl(self.root / reldir / "spans.jsonl")

    def read_index(self) -> dict[str, dict[str, Any]]:
        """Fold the index log: call id -> {"dir", "open", "revision", "reason"}."""
        out: dict[str, dict[str, Any]] = {}
        for e in self._read_jsonl(self.index_path):
            cid = e.get("id")
            if not isinstance(cid, str):
                continue
            cur = out.setdefault(cid, {"dir": None, "open": True, "revision": 1, "reason": None})
            for k in ("dir", "open", "revision", "reason"):
                if k in e:
                    cur[k] = e[k]
        return {k: v for k, v in out.items() if isinstance(v["dir"], str)}

    def compact_index(self, index: dict[str, dict[str, Any]]) -> None:
        lines = [dumps({"id": cid, **v}) for cid, v in index.items()]
        self._guard(self.ops.write_atomic, self.index_path, ("\n".join(lines) + "\n").encode() if lines else b"")

    def read_pending(self) -> Iterator[dict[str, Any]]:
        return self._read_jsonl(self.pending_path)

    def read_envelope(self, reldir: str) -> dict[str, Any] | None:
        d = self.root / reldir
        for name in ("otel-patter.json", "metadata.json"):
            p = d / name
            if p.exists() and self._is_ours(p):
                try:
                    obj = json.loads(p.read_bytes())
                except ValueError:
                    return None
                return obj if isinstance(obj, dict) else None
        return None

    # -- retention ---------------------------------------------------------------------------
    def sweep_retention(self, now: float | None = None) -> list[str]:
        """Delete day directories older than the cutoff that hold only our calls (SDK rule: UTC midnight)."""
        if self.retention_days <= 0:
            return []
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        removed: list[str] = []
        calls = self.root / "calls"
        for day in sorted(calls.glob("[0-9]*/[0-9]*/[0-9]*")):
            try:
                y, m, d = (int(p) for p in day.relative_to(calls).parts)
                midnight = datetime(y, m, d, tzinfo=UTC).timestamp()
            except ValueError:
                continue
            if midnight >= cutoff or day.is_symlink():
                continue
            for call_dir in day.iterdir():
                if call_dir.is_dir() and not call_dir.is_symlink() and self._only_ours(call_dir):
                    shutil.rmtree(call_dir, ignore_errors=True)
                    removed.append(str(call_dir.relative_to(self.root)))
            for p in (day, day.parent, day.parent.parent):
                try:
                    p.rmdir()
                except OSError:
                    break
        return removed

    def _only_ours(self, call_dir: Path) -> bool:
        meta = call_dir / "metadata.json"
        return not meta.exists() or self._is_ours(meta)


__all__ = ["WRITER", "EnvelopeStore", "FileOps", "StoreError", "parse_iso"]
