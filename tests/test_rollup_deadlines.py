"""Rollup keeps one live deadline per open call: a call that sends in every tick for a long time neither
grows the ticker's work nor its memory, and still ends exactly once when it goes silent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from otel_patter.processors.rollup import HEAP_SLACK, TOUCHED_SLICE_MIN
from tests.inproc import InProcess
from tests.otlp import RECORDED_CALL_ID, recorded_call, request, tts_span

CALL_ID = "CA0123456789abcdef0123456789abcdef"
REQUESTS = HEAP_SLACK + 500



def _send_one_span_per_tick(ip: InProcess, call_id: str, requests: int) -> None:
    for _ in range(requests):
        ip.pipeline.consume_traces(request([tts_span(call_id)]), "grpc")
        ip.pipeline.rollup.tick()


def test_a_call_sending_in_every_tick_keeps_the_deadline_heap_within_its_slack(tmp_path: Path) -> None:
    ip = InProcess(tmp_path / "log")
    _send_one_span_per_tick(ip, CALL_ID, REQUESTS)
    rollup = ip.pipeline.rollup
    assert len(rollup._deadlines) <= HEAP_SLACK + 2
    assert [cid for at, cid in rollup._deadlines if at == rollup.calls[CALL_ID].due_at] == [CALL_ID]


def test_a_call_touched_in_every_tick_ends_once_when_its_idle_timeout_passes(tmp_path: Path) -> None:
    ip = InProcess(tmp_path / "log", **{"rollup.idle_timeout": "60s"})
    _send_one_span_per_tick(ip, CALL_ID, REQUESTS)
    rollup = ip.pipeline.rollup
    finalized = ip.pipeline.metrics.calls_finalized.labels("idle_timeout")
    rollup.clock = lambda: time.time() + 61  # a minute of silence
    rollup.tick()
    rollup.tick()
    env = rollup.get(CALL_ID)
    assert env is not None
    assert (env["status"], env["final_reason"], env["revision"]) == ("idle", "idle_timeout", 1)
    assert [(u["provider"], u["chars"]) for u in env["usage"]["tts"]] == [("elevenlabs", 12 * REQUESTS)]
    assert env["counts"]["spans"] == REQUESTS
    assert finalized._value.get() == 1


def test_calls_due_in_one_tick_are_finalized_in_the_order_their_deadlines_passed(tmp_path: Path) -> None:
    ip = InProcess(tmp_path / "log", **{"rollup.idle_timeout": "60s"})
    rollup = ip.pipeline.rollup
    first, second, third = (f"CA{n:032x}" for n in (1, 2, 3))
    for cid in (first, second, third, first):  # the first call spoke last: its idle deadline is the latest
        ip.pipeline.consume_traces(request([tts_span(cid)]), "grpc")
    finalized: list[str] = []
    rollup.on_final.append(lambda state, envelope: finalized.append(state.call_id))
    rollup.clock = lambda: time.time() + 61
    rollup.tick()
    assert finalized == [second, third, first]


def test_a_requested_finalization_that_the_store_refused_is_tried_again_at_the_next_tick(tmp_path: Path) -> None:
    from otel_patter.store.envelope_store import StoreError

    ip = InProcess(tmp_path / "log", **{"rollup.idle_timeout": "1h"})
    rollup = ip.pipeline.rollup
    ip.pipeline.consume_traces(recorded_call()[0], "grpc")  # no root end yet: final only when asked
    append_index = rollup.store.append_index
    refusals = [StoreError(28, "disk full")]

    def full_once(entries: list) -> None:  # type: ignore[type-arg]
        if refusals:
            raise refusals.pop()
        append_index(entries)

    rollup.store.append_index = full_once  # type: ignore[method-assign]
    assert rollup.request_finalize(RECORDED_CALL_ID)
    rollup.tick()
    assert rollup.get(RECORDED_CALL_ID)["status"] == "in_progress"
    rollup.tick()
    final = rollup.get(RECORDED_CALL_ID)
    assert (final["status"], final["final_reason"]) == ("completed", "finalize_request")


def _backlog_of_due_calls(tmp_path: Path, calls: int) -> tuple[InProcess, list[str]]:
    """`calls` one-span calls whose idle deadline has passed, none finalized yet (a burst of calls ending)."""
    ip = InProcess(tmp_path / "log", **{"rollup.idle_timeout": "60s"})
    ids = [f"CA{n:032x}" for n in range(1, calls + 1)]
    for cid in ids:
        ip.pipeline.consume_traces(request([tts_span(cid)]), "grpc")
    ip.pipeline.rollup.clock = lambda: time.time() + 61
    return ip, ids


def test_a_spent_budget_still_finalizes_one_due_call_a_slice(tmp_path: Path) -> None:
    ip, ids = _backlog_of_due_calls(tmp_path, 40)
    rollup = ip.pipeline.rollup
    finalized: list[str] = []
    rollup.on_final.append(lambda state, envelope: finalized.append(state.call_id))
    slices = [rollup.tick(budget_s=0.0) for _ in range(40)]
    assert finalized == ids
    assert slices == [False] * 39 + [True]


def test_a_slice_judges_only_the_calls_it_finalizes_not_the_whole_backlog(tmp_path: Path) -> None:
    # 200 due calls, one finalized a slice: the backlog waits in the heap, each call's deadline is computed once
    # (it was 200 + 199 + ... : every slice re-judged every due call before finalizing any)
    ip, ids = _backlog_of_due_calls(tmp_path, 200)
    rollup = ip.pipeline.rollup
    rollup.tick(budget_s=0.0)  # the first slice also judges the calls touched since the last tick
    judged: list[str] = []
    deadline = rollup._deadline

    def counted(state):  # type: ignore[no-untyped-def]
        judged.append(state.call_id)
        return deadline(state)

    rollup._deadline = counted  # type: ignore[method-assign]
    while not rollup.tick(budget_s=0.0):
        pass
    assert judged == ids[1:]
    assert all(rollup.calls[cid].final for cid in ids)


def test_calls_touched_by_a_replay_are_judged_in_slices_before_any_is_finalized(tmp_path: Path) -> None:
    # a restart's replay touches every open call at once: a spent budget still judges TOUCHED_SLICE_MIN of them a
    # slice (10k in one go held the event loop ~35 ms), and nothing is finalized before all are judged, so calls
    # end in their deadlines' order
    ip, ids = _backlog_of_due_calls(tmp_path, 600)
    rollup = ip.pipeline.rollup
    finalized: list[str] = []
    rollup.on_final.append(lambda state, envelope: finalized.append(state.call_id))
    left = []
    for _ in range(3):
        assert rollup.tick(budget_s=0.0) is False
        left.append((len(rollup._touched), len(finalized)))
    assert TOUCHED_SLICE_MIN == 256
    assert left == [(344, 0), (88, 0), (0, 1)]
    while not rollup.tick(budget_s=0.0):
        pass
    assert finalized == ids


def test_a_failing_store_gets_each_due_call_tried_once_a_tick_not_once_a_slice(tmp_path: Path) -> None:
    # the refused calls wait for the next tick: the slices of this one end, so the ticker probes the disk again
    from otel_patter.store.envelope_store import StoreError

    ip, ids = _backlog_of_due_calls(tmp_path, 30)
    rollup = ip.pipeline.rollup
    tried: list[str] = []

    def disk_full(entries: list) -> None:  # type: ignore[type-arg]
        tried.append(entries[0]["id"])
        raise StoreError(28, "disk full")

    def envelope_disk_full(reldir: str, envelope: dict) -> str:  # type: ignore[type-arg]
        raise StoreError(28, "disk full")

    append_index, write_envelope = rollup.store.append_index, rollup.store.write_envelope
    rollup.store.append_index = disk_full  # type: ignore[method-assign]
    rollup.store.write_envelope = envelope_disk_full  # type: ignore[method-assign]
    slices = [rollup.tick(budget_s=0.0) for _ in range(30)]
    assert tried == ids
    assert slices == [False] * 29 + [True]
    rollup.store.append_index, rollup.store.write_envelope = append_index, write_envelope  # type: ignore[method-assign]
    assert rollup.tick() is True  # the next tick: the disk takes writes again
    assert all(rollup.calls[cid].final for cid in ids)


def test_a_finalization_the_disk_refuses_with_a_raw_os_error_is_tried_again(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # metadata.json cannot be looked at (EACCES): the call stays open, its outputs wait, and the next tick retries
    import errno
    import os

    from otel_patter.store import envelope_store

    ip, (cid,) = _backlog_of_due_calls(tmp_path, 1)
    rollup = ip.pipeline.rollup
    finalized: list[str] = []
    rollup.on_final.append(lambda state, envelope: finalized.append(state.call_id))
    metadata = f"{rollup.calls[cid].reldir}/metadata.json"
    real_stat = os.stat

    def eacces(path: object, *args: object, **kw: object) -> os.stat_result:
        if str(path).endswith(metadata):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(envelope_store.os, "stat", eacces)
    rollup.tick()
    assert (rollup.calls[cid].final, finalized) == (False, [])
    monkeypatch.setattr(envelope_store.os, "stat", real_stat)
    rollup.tick()
    assert (rollup.calls[cid].final, finalized) == (True, [cid])


def test_pending_spans_are_looked_at_once_a_tick_not_at_every_slice(tmp_path: Path) -> None:
    # spans waiting for their trace's call id: expiring them walks them all, so it is done once a tick
    from tests.otlp import span

    ip, _ = _backlog_of_due_calls(tmp_path, 20)
    ip.pipeline.consume_traces(request([span("llm.call", {}) for _ in range(5)]), "grpc")  # no call id yet
    rollup = ip.pipeline.rollup
    looked: list[int] = []
    expire = rollup._expire_pending

    def counted(now: float) -> None:
        looked.append(sum(len(v) for v in rollup.pending.values()))
        expire(now)

    rollup._expire_pending = counted  # type: ignore[method-assign]
    slices = 1
    while not rollup.tick(budget_s=0.0):
        slices += 1
    assert (slices, looked) == (20, [5])


def test_final_calls_leave_memory_a_slice_of_calls_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a sweep looks at every call in memory: a few thousand a tick slice, not all of them at once
    from otel_patter.processors import rollup as rollup_mod

    monkeypatch.setattr(rollup_mod, "EVICT_SLICE", 10)
    ip, ids = _backlog_of_due_calls(tmp_path, 25)
    rollup = ip.pipeline.rollup
    rollup.tick()  # all 25 final
    rollup._evict_at, rollup._evict_scan = 0.0, []  # the next sweep is due
    rollup.clock = lambda: time.time() + 61 + rollup_mod.EVICT_AFTER_S + 1
    in_memory = []
    for _ in range(4):
        rollup.tick()
        in_memory.append(len(rollup.calls))
    assert in_memory == [15, 5, 0, 0]
    assert rollup.get(ids[0])["revision"] == 1  # read back from its WAL when asked for


def test_the_pending_log_is_rewritten_from_lines_encoded_once(tmp_path: Path) -> None:
    # spans with no call id (a web framework's health checks) wait in pending; each rewrite after one of them
    # left writes the others' lines as they were first encoded
    import json

    from tests.otlp import span

    ip = InProcess(tmp_path / "log")
    rollup = ip.pipeline.rollup
    waiting = [span("GET /healthz", {"http.route": "/healthz", "http.status_code": 200}) for _ in range(3)]
    ip.pipeline.consume_traces(request(waiting), "http")
    encoded: list[str] = []
    pending_line = rollup._pending_line

    def counted(rec, arrival):  # type: ignore[no-untyped-def]
        encoded.append(rec.span_id)
        return pending_line(rec, arrival)

    rollup._pending_line = counted  # type: ignore[method-assign]
    for gone in waiting[:2]:  # one leaves (resolved or expired) before each tick
        del rollup.pending[gone.trace_id.hex()]
        rollup._pending_dirty = True
        rollup.tick()
    assert encoded == [waiting[1].span_id.hex(), waiting[2].span_id.hex()]  # each once, at the first rewrite
    lines = (tmp_path / "log" / "state" / "pending.jsonl").read_text().splitlines()
    assert [json.loads(line)["data"]["span_id"] for line in lines] == [waiting[2].span_id.hex()]


def test_the_pending_gauge_counts_spans_waiting_for_a_call_id_when_scraped(tmp_path: Path) -> None:
    from tests.otlp import span

    ip = InProcess(tmp_path / "log")
    waiting = [span("GET /healthz", {"http.route": "/healthz"}) for _ in range(3)]
    ip.pipeline.consume_traces(request([*waiting, tts_span(CALL_ID)]), "http")
    registry = ip.pipeline.metrics.registry
    assert registry.get_sample_value("otel_patter_spans_pending") == 3
    del ip.pipeline.rollup.pending[waiting[0].trace_id.hex()]
    assert registry.get_sample_value("otel_patter_spans_pending") == 2


def _pending_log_lines(tmp_path: Path) -> list[dict]:  # type: ignore[type-arg]
    import json

    return [json.loads(line) for line in (tmp_path / "log" / "state" / "pending.jsonl").read_text().splitlines()]


def test_the_pending_log_keeps_a_line_per_pending_entry_even_for_a_span_held_twice(tmp_path: Path) -> None:
    # a request refused after its pending append and retried leaves a span twice in the log; a restart reads both
    from otel_patter.spans import SpanRecord
    from tests.otlp import span

    ip = InProcess(tmp_path / "log")
    ip.pipeline.consume_traces(request([span("GET /healthz", {"http.route": "/healthz"})]), "http")
    rollup = ip.pipeline.rollup
    (entries,) = rollup.pending.values()
    rec, arrival = entries[0]
    entries.append((SpanRecord.from_json(rec.to_json()), arrival))  # as read back from the log after a restart
    rollup._pending_dirty = True
    rollup.tick()
    assert [line["data"]["span_id"] for line in _pending_log_lines(tmp_path)] == [rec.span_id, rec.span_id]


def test_a_pending_span_whose_arrival_moved_is_written_with_its_new_arrival(tmp_path: Path) -> None:
    # (recovery's end moves pending arrivals to it): a line encoded before is not reused for the new arrival
    from tests.otlp import span

    ip = InProcess(tmp_path / "log")
    ip.pipeline.consume_traces(request([span("GET /healthz", {"http.route": "/healthz"})]), "http")
    rollup = ip.pipeline.rollup
    ((trace_id, entries),) = rollup.pending.items()
    rec, _ = entries[0]
    for arrival, ts in ((1_800_000_000.0, "2027-01-15T08:00:00.000Z"), (1_800_000_007.0, "2027-01-15T08:00:07.000Z")):
        rollup.pending[trace_id] = [(rec, arrival)]
        rollup._pending_dirty = True
        rollup._expire_pending(arrival)
        assert [line["ts"] for line in _pending_log_lines(tmp_path)] == [ts]
