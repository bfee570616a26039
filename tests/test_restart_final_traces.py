"""A span that carries no call id finds its call through its trace, also when the call was final before a
restart: the trace ids of final calls are kept on disk (`state/final-traces.jsonl`), so a late child span
reopens its call after a restart exactly as it does without one."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from otel_patter.store import envelope_store
from otel_patter.store.envelope_store import EnvelopeStore
from tests.inproc import InProcess
from tests.otlp import RECORDED_CALL_ID, recorded_call, request, span


def _first_trace(ip: InProcess) -> bytes:
    rollup = ip.pipeline.rollup
    return bytes.fromhex(next(rollup.store.read_wal(rollup.index[RECORDED_CALL_ID]["dir"]))["data"]["trace_id"])


def _late_child(trace: bytes):  # type: ignore[no-untyped-def]
    """A 0.7.0 child span that arrives after its call was final: no call id of its own, a TTS cost."""
    return span("patter.billable", {"patter.cost.tts_chars": 120, "patter.tts.provider": "elevenlabs"},
                trace=trace, span_id=bytes.fromhex("5a7e0c11d0000001"))


def _final_call(log_dir: Path) -> InProcess:
    ip = InProcess(log_dir)
    for req in recorded_call():
        ip.pipeline.consume_traces(req, "grpc")
    ip.final(RECORDED_CALL_ID)
    return ip


def test_a_late_child_of_a_final_call_reopens_it_after_a_restart_as_without_one(tmp_path: Path) -> None:
    uninterrupted = _final_call(tmp_path / "uninterrupted")
    uninterrupted.pipeline.consume_traces(request([_late_child(_first_trace(uninterrupted))]), "grpc")
    expected = uninterrupted.final(RECORDED_CALL_ID)

    trace = _first_trace(_final_call(tmp_path / "restarted"))
    restarted = InProcess(tmp_path / "restarted")
    restarted.pipeline.consume_traces(request([_late_child(trace)]), "grpc")
    assert restarted.pipeline.rollup.pending == {}
    got = restarted.final(RECORDED_CALL_ID)

    assert (got["revision"], got["counts"]["spans"]) == (2, 38)
    assert got["usage"]["tts"] == expected["usage"]["tts"]
    assert got["cost"] == expected["cost"]
    assert got["counts"] == expected["counts"]


def test_a_final_call_leaves_each_of_its_trace_ids_once_on_disk(tmp_path: Path) -> None:
    ip = _final_call(tmp_path / "log")
    lines = (tmp_path / "log" / "state" / "final-traces.jsonl").read_bytes().splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    wal_traces = {r["data"]["trace_id"] for r in ip.pipeline.rollup.store.read_wal(
        ip.pipeline.rollup.index[RECORDED_CALL_ID]["dir"])}
    assert line["id"] == RECORDED_CALL_ID
    assert sorted(line["traces"]) == sorted(wal_traces)
    assert len(line["traces"]) == len(wal_traces)


def test_past_its_size_the_final_traces_file_rotates_and_a_restart_reads_both_files_oldest_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope_store, "FINAL_TRACES_KEEP_BYTES", 1000)
    store = EnvelopeStore(tmp_path)
    (tmp_path / "state").mkdir()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    for i in range(40):  # 64 bytes a line: the 16th line passes 1000 bytes, then the 32nd
        store.append_final_traces(f"call-{i:03d}", [trace])
    assert [cid for cid, _ in store.read_final_traces()] == [f"call-{i:03d}" for i in range(16, 40)]
    assert (tmp_path / "state" / "final-traces.1.jsonl").stat().st_size == 16 * 64
    assert store.final_traces_path.stat().st_size == 8 * 64


def test_a_trace_two_calls_share_stays_with_the_one_that_learned_it_first_across_a_restart(
        tmp_path: Path) -> None:
    shared = bytes.fromhex("c0ffee" + "11" * 13)

    def billable(call_id: str, span_id: str):  # type: ignore[no-untyped-def]
        return span("patter.billable", {"patter.call_id": call_id, "patter.cost.tts_chars": 10,
                                        "patter.tts.provider": "elevenlabs"}, trace=shared,
                    span_id=bytes.fromhex(span_id))

    def two_calls(log_dir: Path) -> InProcess:
        ip = InProcess(log_dir)
        ip.pipeline.consume_traces(request([billable("CA-first", "a000000000000001")]), "grpc")
        ip.pipeline.consume_traces(request([billable("CA-second", "b000000000000001")]), "grpc")
        ip.final("CA-second")
        return ip

    def spans_after_a_late_child(ip: InProcess) -> dict[str, int]:
        ip.pipeline.consume_traces(request([_late_child(shared)]), "grpc")
        return {c: ip.pipeline.rollup.get(c)["counts"]["spans"] for c in ("CA-first", "CA-second")}

    assert spans_after_a_late_child(two_calls(tmp_path / "uninterrupted")) == {"CA-first": 2, "CA-second": 1}
    two_calls(tmp_path / "restarted")
    assert spans_after_a_late_child(InProcess(tmp_path / "restarted")) == {"CA-first": 2, "CA-second": 1}


def test_a_span_that_waited_for_a_final_calls_trace_counts_in_a_query_during_recovery(tmp_path: Path) -> None:
    before = _final_call(tmp_path / "log")
    trace = _first_trace(before)
    before.pipeline.rollup.trace_calls.clear()  # the map forgot the trace (200k newer ones): the child waits
    before.pipeline.consume_traces(request([_late_child(trace)]), "grpc")
    assert trace.hex() in before.pipeline.rollup.pending

    restarted = InProcess(tmp_path / "log", recover=False)
    during = restarted.pipeline.rollup.get(RECORDED_CALL_ID)
    assert (during["revision"], during["counts"]["spans"]) == (2, 38)
    assert restarted.pipeline.rollup.recover_step() is True
    assert restarted.pipeline.rollup.get(RECORDED_CALL_ID) == during


def test_traces_of_a_call_the_index_does_not_know_are_not_learned_after_a_restart(tmp_path: Path) -> None:
    _final_call(tmp_path / "log")
    store = EnvelopeStore(tmp_path / "log")
    store.append_final_traces("call-removed-by-retention", ["0af7651916cd43dd8448eb211c80319c"])
    rollup = InProcess(tmp_path / "log").pipeline.rollup
    assert rollup._trace_call("0af7651916cd43dd8448eb211c80319c") is None
