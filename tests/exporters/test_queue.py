"""The persistent forward queue: FIFO on disk, bounded, torn tails cut, failures refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from otel_patter.exporters import queue as queue_mod
from otel_patter.exporters.queue import HEADER, PersistentQueue
from otel_patter.store.envelope_store import StoreError
from tests.otlp import recorded_call


def payloads(n: int) -> list[bytes]:
    """n distinct real trace requests (the recorded call's 4 POSTs, re-addressed per copy)."""
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        out.extend(r.SerializeToString() for r in recorded_call(f"CA-q-{i:04d}", id_salt=str(i).encode()))
        i += 1
    return out[:n]


def opened(path: Path, max_bytes: int = 1 << 20, **kw: object) -> PersistentQueue:
    q = PersistentQueue(path, max_bytes, **kw)  # type: ignore[arg-type]
    q.open()
    return q


def drain(q: PersistentQueue) -> list[bytes]:
    out = []
    while (e := q.peek()) is not None:
        out.append(q.read(e))
        assert q.pop(e.seq)
    return out


def test_records_come_back_in_order_with_their_signal_and_item_count(tmp_path: Path) -> None:
    q = opened(tmp_path / "q")
    data = payloads(3)
    q.append("traces", data[0], 10)
    q.append("metrics", data[1], 7)
    q.append("logs", data[2], 2)
    e = q.peek()
    assert (e.signal, e.items) == ("traces", 10)
    assert q.bytes == sum(len(d) + HEADER.size for d in data)
    got = []
    while (e := q.peek()) is not None:
        got.append((e.signal, e.items, q.read(e)))
        q.pop(e.seq)
    assert got == [("traces", 10, data[0]), ("metrics", 7, data[1]), ("logs", 2, data[2])]
    assert q.bytes == 0


def test_a_reopened_queue_resumes_after_the_last_acknowledged_record(tmp_path: Path) -> None:
    data = payloads(5)
    q = opened(tmp_path / "q")
    for d in data:
        q.append("traces", d, 1)
    for _ in range(2):
        e = q.peek()
        q.pop(e.seq)
    q.close()  # no clean shutdown needed: appends and the ack are on disk already
    again = opened(tmp_path / "q")
    assert again.recovered_records == 3
    assert drain(again) == data[2:]


def test_a_torn_last_record_is_cut_and_everything_before_it_survives(tmp_path: Path) -> None:
    data = payloads(3)
    q = opened(tmp_path / "q")
    for d in data:
        q.append("traces", d, 1)
    q.close()
    (seg,) = sorted((tmp_path / "q").glob("seg-*.q"))
    full = seg.stat().st_size
    os.truncate(seg, full - 5)  # kill -9 in the middle of the third append
    again = opened(tmp_path / "q")
    assert again.cut_bytes == len(data[2]) + HEADER.size - 5
    assert seg.stat().st_size == full - len(data[2]) - HEADER.size
    assert drain(again) == data[:2]
    again.append("traces", data[2], 1)  # appends go on after the cut
    assert drain(again) == [data[2]]


def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    data = payloads(2)
    q = opened(tmp_path / "q")
    for d in data:
        q.append("traces", d, 1)
    q.close()
    (seg,) = sorted((tmp_path / "q").glob("seg-*.q"))
    raw = bytearray(seg.read_bytes())
    raw[len(data[0]) + 2 * HEADER.size + 40] ^= 0xFF  # inside the second payload
    seg.write_bytes(bytes(raw))
    assert drain(opened(tmp_path / "q")) == data[:1]


def test_when_full_the_oldest_records_are_dropped_and_returned(tmp_path: Path) -> None:
    data = payloads(8)
    size = max(len(d) for d in data) + HEADER.size
    q = opened(tmp_path / "q", max_bytes=max(64 * 1024, 3 * size))
    bound = q.max_bytes
    dropped = []
    for i, d in enumerate(data):
        dropped += [e.items for e in q.append("traces", d, i + 1)]
        assert q.bytes <= bound
    kept = drain(q)
    assert kept == data[len(dropped):]
    assert dropped == list(range(1, len(dropped) + 1))  # oldest first
    assert sum(len(d) + HEADER.size for d in kept) <= bound


def test_a_record_larger_than_the_bound_is_refused_whole(tmp_path: Path) -> None:
    q = opened(tmp_path / "q", max_bytes=64 * 1024)
    q.append("traces", b"x" * 100, 1)
    (e,) = q.append("traces", b"y" * (64 * 1024), 42)
    assert (e.seq, e.items) == (0, 42)
    assert drain(q) == [b"x" * 100]


def test_segments_rotate_and_acknowledged_ones_are_deleted(tmp_path: Path) -> None:
    q = opened(tmp_path / "q", max_bytes=1 << 20, segment_bytes=4096)
    blobs = [bytes([i]) * 1500 for i in range(10)]
    for b in blobs:
        q.append("traces", b, 1)
    assert len(list((tmp_path / "q").glob("seg-*.q"))) == 5
    assert drain(q) == blobs
    assert len(list((tmp_path / "q").glob("seg-*.q"))) == 1  # the one appended to
    q.close()
    again = opened(tmp_path / "q", segment_bytes=4096)
    assert again.recovered_records == 0


def test_a_failed_append_raises_store_error_and_leaves_the_queue_readable(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    q = opened(tmp_path / "q")
    q.append("traces", b"first", 1)
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:7]))  # part of the record reached the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(queue_mod.os, "write", half_then_enospc)
    with pytest.raises(StoreError) as info:
        q.append("traces", b"second", 1)
    assert info.value.strerror == "disk full"
    monkeypatch.setattr(queue_mod.os, "write", real_write)
    q.append("traces", b"third", 1)
    q.close()
    assert drain(opened(tmp_path / "q")) == [b"first", b"third"]


def test_a_failed_append_into_a_full_queue_drops_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the new record is refused (its client retries it), so the oldest ones it would have pushed out stay queued
    q = opened(tmp_path / "q", max_bytes=64 * 1024)
    for blob in (b"a" * 20_000, b"b" * 20_000, b"c" * 20_000):
        assert q.append("traces", blob, 2) == []
    real_write = os.write
    segment = q._fd

    def enospc_on_the_segment(fd: int, data: bytes) -> int:
        if fd == segment:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(queue_mod.os, "write", enospc_on_the_segment)
    with pytest.raises(StoreError):
        q.append("traces", b"d" * 20_000, 2)
    monkeypatch.setattr(queue_mod.os, "write", real_write)
    assert [e.items for e in q.entries] == [2, 2, 2]
    q.close()
    assert drain(opened(tmp_path / "q", max_bytes=64 * 1024)) == [b"a" * 20_000, b"b" * 20_000, b"c" * 20_000]


def test_a_record_cut_shorter_than_its_header_reads_as_corrupt(tmp_path: Path) -> None:
    q = opened(tmp_path / "q")
    q.append("traces", b"first", 1)
    q.append("traces", b"second" * 10, 1)
    (seg,) = sorted((tmp_path / "q").glob("seg-*.q"))
    os.truncate(seg, HEADER.size + len(b"first") + 5)  # the second record keeps 5 of its header's 13 bytes
    q.pop(q.peek().seq)  # type: ignore[union-attr]
    with pytest.raises(queue_mod.CorruptRecord):
        q.read(q.peek())  # type: ignore[arg-type]
