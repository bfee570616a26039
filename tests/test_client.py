"""`otel_patter.client`: budgets that fail say why; the client reads, waits for, finds and finalizes calls."""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from otel_patter.client import CallNotFinal, CallNotFound, CallResult, PatterCalls, PatterCallsError
from tests.calls_data import call_id, resource, send, send_call, turn_spans
from tests.otlp import T0
from tests.server import ServerProc

S = 1_000_000_000
CID = "CA7f3c9e0d1b2a4c5d6e7f8091a2b3c4d5"
UUT = {
    "cost": {"stt": 0.000802, "tts": 0.003825, "llm": 0.000274, "telephony": 0.0085, "realtime": 0.0, "total": 0.0134},
    "usage": {
        "stt": [{"provider": "deepgram", "model": None, "seconds": 10.02, "usd": 0.000802}],
        "tts": [{"provider": "openai_tts", "model": None, "chars": 255, "usd": 0.003825}],
        "llm": [{"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1270, "output_tokens": 139,
                 "usd": 0.000274}],
        "telephony": [{"provider": "twilio", "minutes": 0.2468, "billed_minutes": 1.0, "usd": 0.0085}],
    },
    "turns": 4,
    "latency": {"p50_ms": 233.7, "p95_ms": 670.1, "p99_ms": 742.3, "llm_ttft_p50_ms": 73.0, "turn_p50_ms": 512.0,
                "turns_ms": [233.1, 742.3, 234.3, 201.9]},
    "counts": {"spans": 37, "barge_ins": 1, "tool_calls": 1, "errors": 0, "redactions": 0},
    "test_run_id": [],
}
ENVELOPE: dict[str, Any] = {
    "schema_version": "1.0", "writer": "otel-patter", "revision": 1, "call_id": CID, "status": "completed",
    "final_reason": "hangup_usage", "turns": 4, "cost": UUT["cost"], "cost_complete": True, "unpriced": [],
    "usage": UUT["usage"], "latency": UUT["latency"], "sides": {"uut": UUT}, "counts": UUT["counts"],
    "warnings": [],
}

OVER_BUDGET_MESSAGE = f"""call {CID} (uut side) is over budget:
  - cost $0.013400 is over the budget of $0.010000 by $0.003400
  - p95 turn latency 670.1 ms is over the budget of 500 ms
cost by component (USD):
  stt        $0.000802
  tts        $0.003825
  llm        $0.000274
  telephony  $0.008500
  realtime   $0.000000
  total      $0.013400
usage:
  stt        deepgram: 10.02 s = $0.000802
  tts        openai_tts: 255 chars = $0.003825
  llm        openai gpt-4o-mini: 1270 input tokens, 139 output tokens = $0.000274
  telephony  twilio: 0.2468 min, 1 billed min = $0.008500
latency: p50_ms 233.7 ms, p95_ms 670.1 ms, p99_ms 742.3 ms, llm_ttft_p50_ms 73 ms, turn_p50_ms 512 ms
slowest turns: turn 2 742.3 ms, turn 3 234.3 ms, turn 1 233.1 ms
turns 4, spans 37, errors 0, status completed"""


def _env(**changes: Any) -> dict[str, Any]:
    env = copy.deepcopy(ENVELOPE)
    env.update(changes)
    return env


# -- assert_budget -------------------------------------------------------------------------------------
def test_a_call_within_budget_passes_and_returns_itself() -> None:
    call = CallResult(_env())
    assert call.assert_budget(usd=0.05, p95_ms=1200) is call
    assert call.assert_budget(usd=0.0134, p95_ms=670.1) is call  # the budget is inclusive


def test_an_over_budget_call_fails_with_cost_usage_and_latency_in_the_message() -> None:
    with pytest.raises(AssertionError) as failed:
        CallResult(_env()).assert_budget(usd=0.01, p95_ms=500)
    assert str(failed.value) == OVER_BUDGET_MESSAGE


def test_an_unpriced_llm_fails_every_budget_unless_allowed() -> None:
    uut = copy.deepcopy(UUT)
    uut["usage"]["llm"] = [{"provider": "openai", "model": "gpt-9-turbo", "input_tokens": 1270, "output_tokens": 139,
                            "usd": None}]
    uut["cost"] = {**uut["cost"], "llm": 0.0, "total": 0.013126}
    unpriced = [{"side": "uut", "component": "llm", "reason": "no LLM rate for this provider and model",
                 "provider": "openai", "model": "gpt-9-turbo", "input_tokens": 1270, "output_tokens": 139}]
    call = CallResult(_env(sides={"uut": uut}, cost=uut["cost"], cost_complete=False, unpriced=unpriced))
    with pytest.raises(AssertionError) as failed:
        call.assert_budget(usd=0.05)
    message = str(failed.value)
    assert ("  - cost is incomplete: 1 usage line(s) have no rate, so the total $0.013126 leaves them out "
            "(pass allow_unpriced=True to accept that)\n") in message
    assert "  llm        openai gpt-9-turbo: 1270 input tokens, 139 output tokens = UNPRICED\n" in message
    assert ("unpriced:\n  llm        openai gpt-9-turbo: 1270 input tokens, 139 output tokens "
            "(no LLM rate for this provider and model)\n") in message
    assert call.assert_budget(usd=0.05, allow_unpriced=True) is call


def test_a_call_still_in_progress_fails_the_budget() -> None:
    with pytest.raises(AssertionError) as failed:
        CallResult(_env(status="in_progress", revision=2)).assert_budget(usd=1.0)
    assert "  - the call is still in_progress (revision 2): wait for it to be final first\n" in str(failed.value)


def test_a_latency_budget_without_any_turn_latency_fails() -> None:
    uut = copy.deepcopy(UUT)
    uut["latency"] = dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "llm_ttft_p50_ms", "turn_p50_ms")) | {"turns_ms": []}
    with pytest.raises(AssertionError) as failed:
        CallResult(_env(sides={"uut": uut})).assert_budget(p95_ms=1200)
    assert "  - p95 turn latency was to be at most 1200 ms, but no turn latency was recorded\n" in str(failed.value)


def test_the_budget_of_a_side_the_call_lacks_fails_naming_the_sides() -> None:
    with pytest.raises(AssertionError) as failed:
        CallResult(_env()).assert_budget(usd=1.0, side="driver")
    assert str(failed.value) == f"call {CID} has no driver side (sides: uut)"


# -- against a server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path_factory.mktemp("client"), {"rollup": {"idle_timeout": "60s"}}).start()
    yield s
    s.stop()


def test_wait_returns_the_final_call_and_its_figures(srv: ServerProc) -> None:
    cid = call_id(300)
    send_call(srv, cid, [612.4, 845.0, 731.9, 1290.3])
    call = PatterCalls(srv.admin_url).wait(cid, timeout=20)
    assert (call.call_id, call.status, call.final, call.cost_complete) == (cid, "completed", True, True)
    assert (call.usd(), call.p95_ms()) == (0.011176, 1223.505)
    assert call.envelope == srv.wait_final(cid)


def test_wait_timeout_raises_call_not_final_with_the_partial_call(srv: ServerProc) -> None:
    cid = call_id(301)
    send(srv, turn_spans(cid, [700.0]))
    with pytest.raises(CallNotFinal) as timed_out:
        PatterCalls(srv.admin_url).wait(cid, timeout=0.3)
    assert str(timed_out.value) == f"call {cid} not final after 0.3 s (still in_progress)"
    assert [(c.call_id, c.status) for c in timed_out.value.calls] == [(cid, "in_progress")]


def test_get_of_an_unknown_call_raises_call_not_found(srv: ServerProc) -> None:
    with pytest.raises(CallNotFound, match=r"^call CAnope: no such call$"):
        PatterCalls(srv.admin_url).get("CAnope")


def test_finalize_ends_an_open_call(srv: ServerProc) -> None:
    cid = call_id(302)
    send(srv, turn_spans(cid, [700.0]))
    client = PatterCalls(srv.admin_url)
    assert client.get(cid).status == "in_progress"
    call = client.finalize(cid)
    assert (call.status, call.envelope["final_reason"]) == ("completed", "finalize_request")


def test_find_the_one_call_of_a_test_run(srv: ServerProc) -> None:
    cid = call_id(303)
    send_call(srv, cid, [700.0, 650.0], run_id="nightly-303")
    call = PatterCalls(srv.admin_url).find(test_run_id="nightly-303", side="uut", timeout=20)
    assert (call.call_id, call.envelope["test_run_id"]) == (cid, ["nightly-303"])


def test_find_refuses_to_pick_one_of_several_calls(srv: ServerProc) -> None:
    for n in (304, 305):
        send_call(srv, call_id(n), [700.0], run_id="nightly-304", start=T0 + n * S)
    client = PatterCalls(srv.admin_url)
    with pytest.raises(PatterCallsError, match=r"^2 calls have test.run_id='nightly-304' on their uut side"):
        client.find(test_run_id="nightly-304", timeout=20)
    assert [c.call_id for c in client.find_all("nightly-304", min_count=2, timeout=20)] == [call_id(305),
                                                                                              call_id(304)]


def test_iter_pages_through_every_match(srv: ServerProc) -> None:
    for n in range(310, 315):
        send(srv, turn_spans(call_id(n), [500.0], start=T0 + n * S), resource(run_id="paged"))
    got = [c.call_id for c in PatterCalls(srv.admin_url).iter(test_run_id="paged", limit=2)]
    assert got == [call_id(n) for n in range(314, 309, -1)]


def test_a_server_that_is_not_there_raises_patter_calls_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PatterCallsError, match=rf"^cannot reach otel-patter at http://127.0.0.1:{port}: "):
        PatterCalls(f"http://127.0.0.1:{port}", timeout=2).get("CA1")


def test_the_url_comes_from_otel_patter_url_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PATTER_URL", "http://otel-patter.internal:4319/")
    assert PatterCalls().url == "http://otel-patter.internal:4319"
    monkeypatch.delenv("OTEL_PATTER_URL")
    assert PatterCalls().url == "http://localhost:4319"
