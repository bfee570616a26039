"""After a restart the service is ready before its open calls are replayed: they load in the background,
a call a request touches loads first, and every answer equals the one a full replay would give."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inproc import InProcess
from tests.otlp import RECORDED_CALL_ID, recorded_call, request, span

CALLS = [f"{RECORDED_CALL_ID}-{i}" for i in range(3)]


def _batches(call_id: str) -> list:
    return recorded_call(call_id, id_salt=call_id.encode())


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Three calls whose first three requests (27 of 37 spans) were acknowledged before the process died."""
    before = InProcess(tmp_path / "log")
    for cid in CALLS:
        for req in _batches(cid)[:3]:
            before.pipeline.consume_traces(req, "grpc")
    return tmp_path / "log"


def _envelope_after_full_replay(log_dir: Path, call_id: str, tmp_path: Path) -> dict:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(log_dir, copy)
    return InProcess(copy).pipeline.rollup.get(call_id)


def _first_trace(rollup, call_id: str) -> bytes:  # type: ignore[no-untyped-def]
    return bytes.fromhex(next(rollup.store.read_wal(rollup.index[call_id]["dir"]))["data"]["trace_id"])


def _child(trace: bytes):  # type: ignore[no-untyped-def]
    """A 0.7.0 child span: no call id of its own, attributed by its trace."""
    return span("patter.billable", {"patter.cost.tts_chars": 120, "patter.tts.provider": "elevenlabs",
                                    "patter.call_id": ""}, trace=trace)


def _restart_with_a_waiting_child(log_dir: Path, call_id: str) -> InProcess:
    """Restarted, nothing replayed yet, and a child span of `call_id`'s first trace waiting in pending."""
    restarted = InProcess(log_dir, recover=False)
    rollup = restarted.pipeline.rollup
    restarted.pipeline.consume_traces(request([_child(_first_trace(rollup, call_id))]), "grpc")
    return restarted


def test_restart_starts_with_every_open_call_still_on_disk_and_counted_as_open(log_dir: Path) -> None:
    rollup = InProcess(log_dir, recover=False).pipeline.rollup
    assert rollup.calls == {}
    assert rollup.calls_loading == 3
    assert rollup.open_calls() == 3


def test_a_step_with_no_time_left_replays_nothing_and_the_last_step_replays_everything(log_dir: Path) -> None:
    rollup = InProcess(log_dir, recover=False).pipeline.rollup
    assert rollup.recover_step(budget_s=0.0) is False
    assert rollup.calls_loading == 3
    assert rollup.recover_step() is True
    assert rollup.calls_loading == 0
    assert rollup.recovering is False
    assert sorted(rollup.calls) == CALLS
    assert [len(rollup.calls[c].seen) for c in CALLS] == [27, 27, 27]


def test_a_query_during_recovery_replays_that_call_first(log_dir: Path, tmp_path: Path) -> None:
    expected = _envelope_after_full_replay(log_dir, CALLS[1], tmp_path)
    rollup = InProcess(log_dir, recover=False).pipeline.rollup
    got = rollup.get(CALLS[1])
    assert got == expected
    assert got["counts"]["spans"] == 27
    assert rollup.calls_loading == 2


def test_spans_of_an_unloaded_call_during_recovery_count_once_on_top_of_its_wal(log_dir: Path,
                                                                                tmp_path: Path) -> None:
    reference = InProcess(tmp_path / "reference")
    for req in _batches(CALLS[0]):
        reference.pipeline.consume_traces(req, "grpc")
    expected = reference.final(CALLS[0])

    restarted = InProcess(log_dir, recover=False)
    for req in _batches(CALLS[0])[2:]:  # the client retries its last acknowledged request, then goes on
        restarted.pipeline.consume_traces(req, "grpc")
    assert restarted.pipeline.rollup.recover_step() is True
    got = restarted.final(CALLS[0])
    assert got["counts"] == expected["counts"]
    assert got["cost"] == expected["cost"]
    assert got["usage"] == expected["usage"]


def test_a_span_without_call_id_of_an_unloaded_calls_trace_waits_and_counts_when_recovery_ends(
        log_dir: Path) -> None:
    rollup = _restart_with_a_waiting_child(log_dir, CALLS[2]).pipeline.rollup
    trace = _first_trace(rollup, CALLS[2])
    assert trace.hex() in rollup.pending  # its call is still on disk: nobody knows the trace yet
    rollup.recover_step()
    assert trace.hex() not in rollup.pending
    assert rollup.get(CALLS[2])["counts"]["spans"] == 28


def test_a_replayed_call_is_finalized_while_other_calls_are_still_on_disk(log_dir: Path) -> None:
    rollup = InProcess(log_dir, recover=False).pipeline.rollup
    assert rollup.request_finalize(CALLS[0])
    rollup.tick()
    assert rollup.get(CALLS[0])["status"] != "in_progress"
    assert rollup.calls_loading == 2


def test_a_replayed_call_counts_the_spans_of_its_traces_that_waited_before_it_is_finalized(log_dir: Path) -> None:
    rollup = _restart_with_a_waiting_child(log_dir, CALLS[0]).pipeline.rollup
    trace = _first_trace(rollup, CALLS[0])
    assert rollup.request_finalize(CALLS[0])  # replays the call (and only it)
    rollup.tick()
    final = rollup.get(CALLS[0])
    assert final["status"] != "in_progress"
    assert final["counts"]["spans"] == 28
    assert final["revision"] == 1
    assert trace.hex() not in rollup.pending
    assert rollup.calls_loading == 2


def test_the_call_list_during_recovery_has_every_call(log_dir: Path, tmp_path: Path) -> None:
    expected = _envelope_after_full_replay(log_dir, CALLS[2], tmp_path)
    rollup = InProcess(log_dir, recover=False).pipeline.rollup
    listed = {env["call_id"]: env for env in rollup.iter_calls()}
    assert sorted(listed) == CALLS
    assert listed[CALLS[2]] == expected
    assert rollup.calls_loading == 0


def test_a_call_that_fails_to_replay_does_not_stop_the_others_from_loading(log_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    rollup = InProcess(log_dir, recover=False).pipeline.rollup
    monkeypatch.setattr("otel_patter.processors.rollup.RECOVER_RETRY_S", 0.01)
    load = rollup._load

    def load_or_fail(call_id: str, *args: object):  # type: ignore[no-untyped-def]
        if call_id == CALLS[1]:
            raise OSError(5, "Input/output error")
        return load(call_id, *args)

    monkeypatch.setattr(rollup, "_load", load_or_fail)
    asyncio.run(rollup._recover_in_background())
    assert rollup.recovering is False
    assert sorted(rollup.calls) == [CALLS[0], CALLS[2]]
    assert rollup.open_calls() == 3  # the third is still open, on disk


def test_a_call_left_on_disk_is_replayed_with_its_waiting_spans_when_a_request_names_it(
        log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    restarted = _restart_with_a_waiting_child(log_dir, CALLS[1])
    rollup = restarted.pipeline.rollup
    monkeypatch.setattr("otel_patter.processors.rollup.RECOVER_RETRY_S", 0.01)
    load, failures = rollup._load, [OSError(24, "Too many open files")] * 3

    def flaky(call_id: str, *args: object):  # type: ignore[no-untyped-def]
        if call_id == CALLS[1] and failures:
            raise failures.pop()
        return load(call_id, *args)

    monkeypatch.setattr(rollup, "_load", flaky)
    rollup.recover()  # three attempts, then left on disk
    assert CALLS[1] not in rollup.calls and rollup.open_calls() == 3
    assert rollup.get(CALLS[1])["counts"]["spans"] == 28
    later = rollup.clock() + 10_000
    rollup.clock = lambda: later  # idle long past idle_timeout
    rollup.tick()
    final = rollup.get(CALLS[1])
    assert (final["status"], final["counts"]["spans"], final["revision"]) == ("idle", 28, 1)


def test_a_request_naming_a_call_that_cannot_be_read_is_refused_for_a_retry(
        log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_patter.receivers.decode import Unavailable

    restarted = InProcess(log_dir, recover=False)

    def unreadable(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(restarted.pipeline.rollup, "_load", unreadable)
    with pytest.raises(Unavailable) as refused:
        restarted.pipeline.consume_traces(request([span("getpatter.tts", {"patter.call_id": CALLS[0]})]), "grpc")
    assert refused.value.retry_after == 1.0


def test_the_call_list_counts_the_waiting_spans_of_calls_replayed_in_the_background(log_dir: Path) -> None:
    restarted = _restart_with_a_waiting_child(log_dir, CALLS[0])
    rollup = restarted.pipeline.rollup
    for cid in CALLS:  # background slices replayed them; no tick and no end-of-recovery pass ran yet
        rollup._recover_call(cid)
    listed = {env["call_id"]: env for env in rollup.iter_calls()}
    assert listed[CALLS[0]]["counts"]["spans"] == 28


def test_a_child_sent_before_its_calls_span_in_one_request_counts_before_the_call_is_finalized(
        log_dir: Path) -> None:
    restarted = InProcess(log_dir, recover=False)
    rollup = restarted.pipeline.rollup
    named = span("getpatter.tts", {"patter.call_id": CALLS[0], "patter.side": "uut"})  # a new trace of the call
    restarted.pipeline.consume_traces(request([_child(_first_trace(rollup, CALLS[0])), named]), "grpc")
    assert rollup.request_finalize(CALLS[0])
    rollup.tick()
    assert rollup.get(CALLS[0])["counts"]["spans"] == 29
    rollup.recover_step()
    final = rollup.get(CALLS[0])
    assert (final["counts"]["spans"], final["revision"], final["status"]) == (29, 1, "completed")


def test_pending_spans_do_not_expire_while_open_calls_are_still_on_disk(log_dir: Path) -> None:
    restarted = _restart_with_a_waiting_child(log_dir, CALLS[2])
    rollup = restarted.pipeline.rollup
    started = rollup.clock()
    rollup.clock = lambda: started + 31.0  # past the 30 s pending_timeout, recovery still going
    rollup.tick()
    rollup.recover_step()
    assert rollup.get(CALLS[2])["counts"]["spans"] == 28


def test_no_call_is_finalized_while_the_waiting_spans_of_a_replayed_call_cannot_be_written(
        log_dir: Path) -> None:
    from otel_patter.store.envelope_store import StoreError

    restarted = _restart_with_a_waiting_child(log_dir, CALLS[0])
    rollup = restarted.pipeline.rollup
    append, failures = rollup.store.append_wal_bytes, [StoreError(28, "disk full"), StoreError(28, "disk full")]

    def append_or_fail(*args: object) -> None:
        if failures:
            raise failures.pop()
        append(*args)  # type: ignore[arg-type]

    rollup.store.append_wal_bytes = append_or_fail  # type: ignore[method-assign]
    assert rollup.request_finalize(CALLS[0])  # replays it; its waiting span cannot be written (once here,
    rollup.tick()  # once in the tick)
    assert rollup.calls[CALLS[0]].final is False
    rollup.tick()  # the disk takes writes again
    final = rollup.get(CALLS[0])
    assert (final["counts"]["spans"], final["revision"], final["status"]) == (28, 1, "completed")


def test_a_query_that_replays_a_call_counts_the_spans_that_waited_for_it(log_dir: Path) -> None:
    restarted = _restart_with_a_waiting_child(log_dir, CALLS[2])
    rollup = restarted.pipeline.rollup
    assert rollup.get(CALLS[2])["counts"]["spans"] == 28
