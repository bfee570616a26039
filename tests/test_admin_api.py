"""The calls API: wait for a call, finalize it, find it by test run, filter and page the list, units, OpenAPI."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from otel_patter.admin.query import UNITS
from otel_patter.admin.server import AdminServer
from tests.calls_data import call_id, hangup_span, resource, send, send_call, turn_spans
from tests.inproc import InProcess
from tests.otlp import T0
from tests.server import ServerProc

S = 1_000_000_000
# 4 turns: 30 s of deepgram STT ($0.0024), 1200/160 gpt-4o-mini tokens ($0.000276), 0.5 twilio min billed 1 ($0.0085)
COST_4_TURNS = {"stt": 0.0024, "tts": 0.0, "llm": 0.000276, "telephony": 0.0085, "realtime": 0.0, "total": 0.011176}
TTFB = [612.4, 845.0, 731.9, 1290.3]


@pytest.fixture(scope="module")
def slow_idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server for this module's tests (each uses its own call ids and run ids), where an open call stays
    in progress for a minute (nothing here waits that long)."""
    s = ServerProc(tmp_path_factory.mktemp("slow-idle"), {"rollup": {"idle_timeout": "60s"}}).start()
    yield s
    s.stop()


def _in_background(fn: Callable[[], Any]) -> Any:
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(fn)
    pool.shutdown(wait=False)
    return fut


# -- GET /api/v1/calls/{id}?wait=final ---------------------------------------------------------------
def test_wait_final_answers_once_the_hangup_usage_arrives(slow_idle: ServerProc) -> None:
    cid = call_id(1)
    send(slow_idle, turn_spans(cid, TTFB))
    waiting = _in_background(lambda: slow_idle.get(f"/api/v1/calls/{cid}?wait=final&timeout=20", timeout=30))
    time.sleep(0.5)
    assert not waiting.done()
    send(slow_idle, [hangup_span(cid, 0.5)])
    code, env = waiting.result(timeout=25)
    assert code == 200
    assert (env["status"], env["final_reason"]) == ("completed", "hangup_usage")
    assert env["cost"] == COST_4_TURNS
    assert env["latency"]["turns_ms"] == TTFB
    assert env["latency"]["p95_ms"] == 1223.505  # 845 + (1290.3 - 845) * 0.85


def test_wait_final_for_an_id_not_seen_yet_waits_for_its_spans(slow_idle: ServerProc) -> None:
    cid = call_id(2)
    waiting = _in_background(lambda: slow_idle.get(f"/api/v1/calls/{cid}?wait=final&timeout=20", timeout=30))
    time.sleep(0.5)
    assert not waiting.done()
    send_call(slow_idle, cid, TTFB)
    code, env = waiting.result(timeout=25)
    assert code == 200
    assert env["call_id"] == cid
    assert env["cost"]["total"] == 0.011176


def test_wait_final_times_out_with_408_and_the_partial_envelope(slow_idle: ServerProc) -> None:
    cid = call_id(3)
    send(slow_idle, turn_spans(cid, TTFB[:2]))
    started = time.monotonic()
    code, body = slow_idle.get(f"/api/v1/calls/{cid}?wait=final&timeout=0.5")
    assert 0.5 <= time.monotonic() - started < 5
    assert code == 408
    assert body["error"] == "timed out waiting for the call to be final"
    assert body["call"]["status"] == "in_progress"
    assert body["call"]["turns"] == 2
    assert body["call"]["cost"]["stt"] == 0.0012


def test_wait_final_times_out_with_408_and_null_for_a_call_never_seen(slow_idle: ServerProc) -> None:
    code, body = slow_idle.get(f"/api/v1/calls/{call_id(4)}?wait=final&timeout=0.2")
    assert (code, body) == (408, {"error": "timed out waiting for the call to be final", "call": None})


def test_get_without_wait_answers_the_call_as_it_is_now(slow_idle: ServerProc) -> None:
    cid = call_id(5)
    send(slow_idle, turn_spans(cid, TTFB[:1]))
    code, env = slow_idle.get(f"/api/v1/calls/{cid}")
    assert (code, env["status"], env["turns"]) == (200, "in_progress", 1)
    assert slow_idle.get(f"/api/v1/calls/{call_id(6)}") == (404, {"error": "no such call"})


@pytest.mark.parametrize("query,message", [
    ("wait=final&timeout=soon", "timeout must be a number of seconds from 0 to 600"),
    ("wait=final&timeout=601", "timeout must be a number of seconds from 0 to 600"),
    ("wait=final&timeout=nan", "timeout must be a number of seconds from 0 to 600"),
    ("wait=done", "wait must be final"),
])
def test_get_refuses_bad_wait_parameters(slow_idle: ServerProc, query: str, message: str) -> None:
    assert slow_idle.get(f"/api/v1/calls/{call_id(7)}?{query}") == (400, {"error": message})


# -- POST /api/v1/calls/{id}/finalize ------------------------------------------------------------------
def test_finalize_makes_an_open_call_final_now(slow_idle: ServerProc) -> None:
    cid = call_id(8)
    send(slow_idle, turn_spans(cid, TTFB))
    code, env = slow_idle.post(f"/api/v1/calls/{cid}/finalize")
    assert code == 200
    assert (env["status"], env["final_reason"], env["revision"]) == ("completed", "finalize_request", 1)
    assert env["cost"] == {**COST_4_TURNS, "telephony": 0.0, "total": 0.002676}
    assert slow_idle.wait_final(cid, timeout=1) == env


def test_finalize_of_a_call_never_seen_is_404(slow_idle: ServerProc) -> None:
    assert slow_idle.post(f"/api/v1/calls/{call_id(9)}/finalize") == (404, {"error": "no such call"})


# -- find by test.run_id -------------------------------------------------------------------------------
def test_a_suite_finds_its_uut_call_by_test_run_id_and_waits_for_it(slow_idle: ServerProc) -> None:
    uut, driver, other = call_id(10), call_id(11), call_id(12)
    waiting = _in_background(lambda: slow_idle.get(
        "/api/v1/calls?test_run_id=gha-8812734455-1&side=uut&wait=final&timeout=20", timeout=30))
    # the driver leg of the same run has its own carrier id; another run's call runs alongside
    send_call(slow_idle, driver, TTFB[:2], side="driver", run_id="gha-8812734455-1", minutes=0.5)
    send_call(slow_idle, other, TTFB, run_id="gha-8812734455-2")
    time.sleep(0.3)
    send_call(slow_idle, uut, TTFB, run_id="gha-8812734455-1")
    code, body = waiting.result(timeout=25)
    assert code == 200
    assert [c["call_id"] for c in body["calls"]] == [uut]
    env = body["calls"][0]
    assert (env["status"], env["test_run_id"], env["sides"]["uut"]["test_run_id"]) == (
        "completed", ["gha-8812734455-1"], ["gha-8812734455-1"])
    assert env["cost"]["total"] == 0.011176


def test_waiting_for_a_test_run_times_out_with_408_and_what_matches_so_far(slow_idle: ServerProc) -> None:
    send(slow_idle, turn_spans(call_id(13), TTFB[:1]), resource(run_id="run-open"))
    code, body = slow_idle.get("/api/v1/calls?test_run_id=run-open&wait=final&timeout=0.3")
    assert code == 408
    assert body["error"] == "timed out waiting for the matching calls to be final"
    assert [(c["call_id"], c["status"]) for c in body["calls"]] == [(call_id(13), "in_progress")]


def test_min_count_waits_for_every_call_of_the_run(slow_idle: ServerProc) -> None:
    first, second = call_id(14), call_id(15)
    send_call(slow_idle, first, TTFB, run_id="run-two-calls")
    waiting = _in_background(lambda: slow_idle.get(
        "/api/v1/calls?test_run_id=run-two-calls&wait=final&min_count=2&timeout=20", timeout=30))
    time.sleep(1.0)
    assert not waiting.done()
    send_call(slow_idle, second, TTFB, run_id="run-two-calls", start=T0 + 60 * S)
    code, body = waiting.result(timeout=25)
    assert code == 200
    assert [c["call_id"] for c in body["calls"]] == [second, first]


def test_the_test_run_id_survives_pii_scrubbing_unchanged(tmp_path: Path) -> None:
    """A run id full of digits is an id: the PII allowlist keeps `test.run_id` and never masks it."""
    run_id = "ci-4155550123-2026-11-23"
    proc = InProcess(tmp_path)
    proc.send(turn_spans(call_id(16), TTFB[:1]), resource(run_id=run_id))
    env = proc.final(call_id(16))
    assert env["test_run_id"] == [run_id]


# -- list: filters, paging, units ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def six_calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """Six final calls a minute apart (newest last): 1 to 6 turns, the even ones with a driver leg too."""
    s = ServerProc(tmp_path_factory.mktemp("six")).start()
    try:
        for n in range(1, 7):
            send_call(s, call_id(100 + n), TTFB[:1] * n if n <= 4 else TTFB + TTFB[: n - 4], start=T0 + n * 60 * S)
            if n % 2 == 0:
                send_call(s, call_id(100 + n), TTFB[:1], side="driver", minutes=None, start=T0 + n * 60 * S)
        for n in range(1, 7):
            s.post(f"/api/v1/calls/{call_id(100 + n)}/finalize")
        yield s
    finally:
        s.stop()


def _ids(body: dict[str, Any]) -> list[int]:
    return [int(c["call_id"][2:], 16) - 100 for c in body["calls"]]


def test_list_is_newest_first_and_states_its_units(six_calls: ServerProc) -> None:
    code, body = six_calls.get("/api/v1/calls")
    assert code == 200
    assert _ids(body) == [6, 5, 4, 3, 2, 1]
    assert (body["count"], body["next_cursor"]) == (6, None)
    assert body["units"] == UNITS
    assert body["units"]["cost"].startswith("USD")


@pytest.mark.parametrize("query,expected", [
    ("side=driver", [6, 4, 2]),
    ("side=uut", [6, 5, 4, 3, 2, 1]),
    ("status=completed", [6, 5, 4, 3, 2, 1]),
    ("status=in_progress", []),
    ("since=2026-11-23T05:49:22Z", [6, 5, 4]),
    (f"since={(T0 + 5 * 60 * S) // S}", [6, 5]),
    ("min_cost_usd=0.0118", [6, 5]),
    ("min_cost_usd=0.0000001&side=driver", [6, 4, 2]),
])
def test_list_filters(six_calls: ServerProc, query: str, expected: list[int]) -> None:
    code, body = six_calls.get(f"/api/v1/calls?{query}")
    assert code == 200, body
    assert _ids(body) == expected


def test_min_cost_compares_the_exact_total(six_calls: ServerProc) -> None:
    # each turn: 7.5 s STT ($0.0006) + 300/40 tokens ($0.000069); each call: 1 billed twilio minute ($0.0085)
    totals = {n: six_calls.get(f"/api/v1/calls/{call_id(100 + n)}")[1]["cost"]["total"] for n in range(1, 7)}
    assert totals == {1: 0.009169, 2: 0.009838, 3: 0.010507, 4: 0.011176, 5: 0.011845, 6: 0.012514}
    assert _ids(six_calls.get("/api/v1/calls?min_cost_usd=0.011176")[1]) == [6, 5, 4]


def test_paging_with_the_cursor_visits_every_call_once_in_order(six_calls: ServerProc) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        code, body = six_calls.get("/api/v1/calls?limit=4" + (f"&cursor={cursor}" if cursor else ""))
        assert code == 200
        seen += _ids(body)
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == ([6, 5, 4, 3, 2, 1], 2)


def test_paging_stays_stable_while_new_calls_arrive(make_server: Callable[..., ServerProc]) -> None:
    s = make_server().start()
    for n in range(1, 4):
        send_call(s, call_id(200 + n), TTFB[:1], start=T0 + n * 60 * S)
    _, first = s.get("/api/v1/calls?limit=2")
    send_call(s, call_id(299), TTFB[:1], start=T0 + 99 * 60 * S)  # newer than all: sorts before the cursor
    _, second = s.get(f"/api/v1/calls?limit=2&cursor={first['next_cursor']}")
    assert [c["call_id"] for c in first["calls"] + second["calls"]] == [call_id(203), call_id(202), call_id(201)]
    assert second["next_cursor"] is None


@pytest.mark.parametrize("query,message", [
    ("limit=0", "limit must be an integer from 1 to 10000"),
    ("limit=ten", "limit must be an integer from 1 to 10000"),
    ("status=done", "status must be one of in_progress, completed, error, idle"),
    ("side=agent", "side must be one of uut, driver"),
    ("since=yesterday", "since must be a duration like 30m or 1h, an ISO time or epoch seconds"),
    ("min_cost_usd=-1", "min_cost_usd must be a non-negative number of USD"),
    ("cursor=bm90LWEtY3Vyc29y", "cursor is not one this server gave out"),
    ("wait=final&min_count=0", "min_count must be an integer from 1 to 1000"),
    ("test_run_id=" + "r" * 257, "test_run_id must be 1 to 256 characters"),
    ("test_run_id=", "test_run_id must be 1 to 256 characters"),  # an unset variable must not match every call
    ("status=", "status must be one of in_progress, completed, error, idle"),
])
def test_list_refuses_bad_parameters_with_400(slow_idle: ServerProc, query: str, message: str) -> None:
    assert slow_idle.get(f"/api/v1/calls?{query}") == (400, {"error": message})


# -- OpenAPI ---------------------------------------------------------------------------------------------
def test_the_openapi_document_lists_exactly_the_routes_served(slow_idle: ServerProc, tmp_path: Path) -> None:
    code, doc = slow_idle.get("/api/v1/openapi.json")
    assert code == 200
    assert doc["openapi"] == "3.1.0"
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    app = AdminServer("127.0.0.1:0", InProcess(tmp_path).pipeline).app()
    served = {(r.resource.canonical, r.method) for r in app.router.routes() if r.method != "HEAD"}
    assert documented == served
    assert "security" not in doc  # no admin.auth_token on this server


def test_listing_many_open_calls_lets_other_requests_in_between(tmp_path: Path) -> None:
    import asyncio

    from tests.otlp import request

    p = InProcess(tmp_path)
    for i in range(500):  # building each open call's envelope takes a while: 500 take far longer than one slice
        p.pipeline.consume_traces(request(turn_spans(call_id(9000 + i), [500.0, 620.0]), resource()), "test")
    admin = AdminServer("127.0.0.1:0", p.pipeline)

    async def list_while_an_ack_waits() -> tuple[int, bool]:
        listing = asyncio.create_task(admin._all_calls())
        await asyncio.sleep(0)  # the listing starts and holds the loop for its first slice
        ack_saw_listing_done = listing.done()  # where an OTLP request would be answered
        return len(await listing), ack_saw_listing_done

    listed, listing_was_done = asyncio.run(list_while_an_ack_waits())
    assert listed == 500
    assert not listing_was_done
