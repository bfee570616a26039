"""What the rollup remembers for suites and the page: `test.run_id` per side, and each turn's latency in order."""

from __future__ import annotations

from pathlib import Path

from tests.calls_data import DRIVER_INSTANCE, call_id, resource, send_call, turn_spans
from tests.inproc import InProcess
from tests.otlp import T0
from tests.server import ServerProc

S = 1_000_000_000


def test_turn_latencies_are_listed_in_turn_order_whatever_order_the_spans_arrive(tmp_path: Path) -> None:
    proc = InProcess(tmp_path)
    spans = turn_spans(call_id(1), [612.4, 845.0, 731.9, 1290.3])
    proc.send(spans[6:])  # turns 3 and 4 flush first
    proc.send(spans[:6])
    env = proc.final(call_id(1))
    assert env["latency"]["turns_ms"] == [612.4, 845.0, 731.9, 1290.3]
    assert env["sides"]["uut"]["latency"]["turns_ms"] == [612.4, 845.0, 731.9, 1290.3]


def test_each_side_keeps_its_own_test_run_ids(tmp_path: Path) -> None:
    proc = InProcess(tmp_path)
    proc.send(turn_spans(call_id(2), [700.0]), resource("uut", run_id="suite-a"))
    proc.send(turn_spans(call_id(2), [650.0], start=T0 + S), resource("driver", run_id="suite-b",
                                                                      instance=DRIVER_INSTANCE))
    env = proc.final(call_id(2))
    assert env["test_run_id"] == ["suite-a", "suite-b"]
    assert (env["sides"]["uut"]["test_run_id"], env["sides"]["driver"]["test_run_id"]) == (["suite-a"], ["suite-b"])


def test_a_call_without_a_test_run_id_says_so_with_an_empty_list(tmp_path: Path) -> None:
    proc = InProcess(tmp_path)
    proc.send(turn_spans(call_id(3), [700.0]))
    assert proc.final(call_id(3))["test_run_id"] == []


def test_the_test_run_id_is_rebuilt_from_disk_after_a_crash(tmp_path: Path) -> None:
    first = ServerProc(tmp_path, {"rollup": {"idle_timeout": "60s"}}).start()
    send_call(first, call_id(4), [700.0, 820.5], minutes=None, run_id="nightly-crash")  # still open
    first.kill9()
    again = ServerProc(tmp_path, {"rollup": {"idle_timeout": "60s"}}).start()
    try:
        code, body = again.get("/api/v1/calls?test_run_id=nightly-crash&side=uut")
        assert code == 200
        assert [(c["call_id"], c["status"], c["turns"]) for c in body["calls"]] == [(call_id(4), "in_progress", 2)]
    finally:
        again.stop()


def test_turns_count_distinct_turn_indexes_including_ones_past_4095_and_below_zero(tmp_path: Path) -> None:
    from tests.otlp import span

    proc = InProcess(tmp_path)
    cid = call_id(4)
    proc.send([span("getpatter.stt", {"patter.call_id": cid, "patter.side": "uut", "patter.turn.idx": idx})
               for idx in (0, 1, 1, 63, 64, 4095, 4096, 100_000, -1)])
    assert proc.final(cid)["turns"] == 8
