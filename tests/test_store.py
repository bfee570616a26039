"""The store: SDK-compatible names, atomic private files, retention that spares what is not ours."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from otel_patter.store.envelope_store import EnvelopeStore
from otel_patter.store.paths import call_dir_name, relative_call_dir, safe_path_segment


@pytest.mark.parametrize(("call_id", "expected"), [
    ("CA0123456789abcdef0123456789abcdef", "CA0123456789abcdef0123456789abcdef"),
    ("../../etc/pass wd", "_.._etc_pass_wd"),
    ("..", "unknown"),
    ("a" * 80, "a" * 64),
    ("call\x00\x1fid", "callid"),
])
def test_safe_path_segment_is_the_sdk_rule(call_id: str, expected: str) -> None:
    from getpatter.utils.log_sanitize import safe_path_segment as sdk_rule

    assert safe_path_segment(call_id) == sdk_rule(call_id, max_len=64) == expected


def test_a_changed_id_gets_a_hash_suffix_so_two_ids_never_share_a_directory() -> None:
    assert call_dir_name("a/b") != call_dir_name("a_b")
    assert call_dir_name("a_b") == "a_b"
    assert call_dir_name("a/b").startswith("a_b-") and len(call_dir_name("a/b")) == 3 + 9


def test_directory_is_the_utc_start_date() -> None:
    # 2026-11-23T23:59:59.5Z is still the 23rd in UTC whatever the local zone
    assert relative_call_dir("CAx", 1_795_478_399_500_000_000) == "calls/2026/11/23/CAx"


def test_envelope_beside_an_sdk_metadata_never_overwrites_it(tmp_path: Path) -> None:
    store = EnvelopeStore(tmp_path)
    d = tmp_path / "calls/2026/11/23/CAx"
    d.mkdir(parents=True)
    sdk_meta = {"schema_version": "1.0", "call_id": "CAx", "status": "completed"}
    (d / "metadata.json").write_text(json.dumps(sdk_meta))
    written = store.write_envelope("calls/2026/11/23/CAx", {"writer": "otel-patter", "call_id": "CAx"})
    assert Path(written).name == "otel-patter.json"
    assert json.loads((d / "metadata.json").read_text()) == sdk_meta
    assert store.read_envelope("calls/2026/11/23/CAx") == {"writer": "otel-patter", "call_id": "CAx"}


def test_retention_removes_old_days_of_our_calls_only(tmp_path: Path) -> None:
    store = EnvelopeStore(tmp_path, retention_days=30)
    ours = tmp_path / "calls/2020/01/02/CAours"
    theirs = tmp_path / "calls/2020/01/02/CAtheirs"
    recent = tmp_path / "calls/2026/11/22/CArecent"
    for d in (ours, theirs, recent):
        d.mkdir(parents=True)
    store.write_envelope("calls/2020/01/02/CAours", {"writer": "otel-patter"})
    (theirs / "metadata.json").write_text('{"call_id": "CAtheirs"}')
    store.write_envelope("calls/2026/11/22/CArecent", {"writer": "otel-patter"})
    removed = store.sweep_retention(now=time.mktime((2026, 11, 23, 12, 0, 0, 0, 0, 0)))
    assert removed == ["calls/2020/01/02/CAours"]
    assert theirs.exists() and recent.exists() and not ours.exists()


def test_zero_retention_keeps_everything(tmp_path: Path) -> None:
    store = EnvelopeStore(tmp_path, retention_days=0)
    (tmp_path / "calls/2000/01/01/CAold").mkdir(parents=True)
    assert store.sweep_retention() == []
    assert (tmp_path / "calls/2000/01/01/CAold").exists()


def test_a_torn_last_wal_line_is_skipped(tmp_path: Path) -> None:
    store = EnvelopeStore(tmp_path)
    store.append_wal("calls/2026/11/23/CAx", ['{"type":"span","n":1}'])
    with open(tmp_path / "calls/2026/11/23/CAx/spans.jsonl", "ab") as fh:
        fh.write(b'{"type":"span","n":2')  # kill -9 in the middle of a write
    assert [line["n"] for line in store.read_wal("calls/2026/11/23/CAx")] == [1]


def test_an_append_after_a_torn_last_wal_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    # the next process appends the span a client sent again: glued onto the torn line, both were unreadable and the
    # acknowledged one was lost (the long crash test found it, 1 run in 5)
    EnvelopeStore(tmp_path).append_wal("calls/2026/11/23/CAx", ['{"type":"span","n":1}'])
    with open(tmp_path / "calls/2026/11/23/CAx/spans.jsonl", "ab") as fh:
        fh.write(b'{"type":"span","n":2')  # kill -9 in the middle of a write
    after_restart = EnvelopeStore(tmp_path)
    after_restart.append_wal("calls/2026/11/23/CAx", ['{"type":"span","n":2}'])
    assert [line["n"] for line in after_restart.read_wal("calls/2026/11/23/CAx")] == [1, 2]


def test_an_index_entry_after_a_torn_last_index_line_is_kept(tmp_path: Path) -> None:
    store = EnvelopeStore(tmp_path)
    asyncio.run(store.start())  # makes state/
    store.append_index([{"id": "CAa", "dir": "calls/2026/11/23/CAa", "open": True, "revision": 1}])
    with open(store.index_path, "ab") as fh:
        fh.write(b'{"id": "CAb", "dir": "calls/20')  # kill -9 in the middle of a write
    after_restart = EnvelopeStore(tmp_path)
    after_restart.append_index([{"id": "CAc", "dir": "calls/2026/11/23/CAc", "open": True, "revision": 1}])
    assert sorted(after_restart.read_index()) == ["CAa", "CAc"]


def test_files_are_0600_and_directories_0700(tmp_path: Path) -> None:
    os.umask(0o022)
    store = EnvelopeStore(tmp_path / "log")
    store.append_wal("calls/2026/11/23/CAx", ['{"type":"span"}'])
    store.write_envelope("calls/2026/11/23/CAx", {"writer": "otel-patter"})
    d = tmp_path / "log/calls/2026/11/23/CAx"
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "spans.jsonl").stat().st_mode & 0o777 == 0o600
    assert (d / "metadata.json").stat().st_mode & 0o777 == 0o600


def test_wal_lines_are_the_wal_line_of_each_span_record_byte_for_byte() -> None:
    """The batched WAL writer (hot path: one orjson call a span, the resource encoded once) writes exactly the
    documented line of each record, which restart replay reads back into the same record."""
    from otel_patter.spans import SpanRecord

    resource = {"service.name": "patter-agent", "telemetry.sdk.language": "python", "patter.side": "uut"}
    records = [
        SpanRecord("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "", "getpatter.tts", 1,
                   1795478000_000000000, 1795478000_350000000, 0, "", {"patter.cost.tts_chars": 42,
                   "patter.tts.provider": "elevenlabs", "patter.call_id": "CA0123456789abcdef0123456789abcdef"},
                   [], resource, "getpatter", side="uut"),
        SpanRecord("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7", "b7ad6b7169203331", "getpatter.llm", 1,
                   1795478000_100000000, 1795478000_900000000, 2, "timeout\u2028", {"patter.llm.iteration": 0},
                   [{"name": "llm.first_token", "time_ns": 1795478000_200000000, "attrs": {"x": [1, 2.5, True]}}],
                   resource, "getpatter", side="driver"),
    ]
    ts = 1795478000.25
    lines = EnvelopeStore.wal_lines(records, ts)
    assert lines == "".join(EnvelopeStore.wal_line(r.to_json(), r.side, ts) + "\n" for r in records).encode()
    pending = EnvelopeStore.wal_lines(records, ts, pending=True)
    assert pending == "".join(EnvelopeStore.wal_line(r.to_json(), None, ts) + "\n" for r in records).encode()
    replayed = [SpanRecord.from_json(json.loads(line)["data"]) for line in lines.split(b"\n")[:-1]]
    assert replayed == [SpanRecord.from_json(r.to_json()) for r in records]
    assert [(r.attrs, r.events, r.status_message) for r in replayed] == \
        [(r.attrs, r.events, r.status_message) for r in records]
