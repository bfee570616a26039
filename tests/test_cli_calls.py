"""`otel-patter calls top` and `calls check` against a running server and against the log dir."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.calls_data import call_id, send, send_call, turn_spans
from tests.otlp import T0
from tests.server import ServerProc
from tests.test_cli import cli

S = 1_000_000_000
# call 1: 1 turn ($0.009169, p95 900 ms, 30 s); call 2: 4 turns ($0.011176, p95 1223.505 ms, 30 s);
# call 3: 2 turns, a 1.5-minute hang-up ($0.018338: 2 billed twilio minutes, p95 470.35 ms, 90 s)
CHEAP, PRICEY_SLOW, LONG = call_id(401), call_id(402), call_id(403)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path_factory.mktemp("cli-calls"), {"rollup": {"idle_timeout": "60s"}}).start()
    try:
        send_call(s, CHEAP, [900.0], start=T0)
        send_call(s, PRICEY_SLOW, [612.4, 845.0, 731.9, 1290.3], start=T0 + 60 * S, run_id="nightly-42")
        send_call(s, LONG, [420.0, 473.0], minutes=1.5, start=T0 + 120 * S)
        for cid in (CHEAP, PRICEY_SLOW, LONG):
            s.wait_final(cid)
        send(s, turn_spans(call_id(404), [500.0], start=T0 + 180 * S))  # stays in progress
        yield s
    finally:
        s.stop()


def _top_ids(*args: str) -> list[str]:
    r = cli("calls", "top", *args, "--json")
    assert r.returncode == 0, r.stderr
    return [c["call_id"] for c in json.loads(r.stdout)]


@pytest.mark.parametrize("by,expected", [
    ("cost", [LONG, PRICEY_SLOW, CHEAP, call_id(404)]),
    ("p95", [PRICEY_SLOW, CHEAP, call_id(404), LONG]),
    ("duration", [LONG, CHEAP, PRICEY_SLOW, call_id(404)]),  # 30 s each: ties go by call id
])
def test_top_ranks_the_calls_of_a_server(srv: ServerProc, by: str, expected: list[str]) -> None:
    assert _top_ids("--url", srv.admin_url, "--by", by) == expected


def test_top_limits_and_filters(srv: ServerProc) -> None:
    assert _top_ids("--url", srv.admin_url, "--by", "cost", "--status", "completed", "--limit", "2") == [
        LONG, PRICEY_SLOW]


@pytest.mark.parametrize("source", ["url", "log-dir"])
def test_list_finds_a_suites_call_by_its_test_run_id(srv: ServerProc, source: str) -> None:
    where = ["--url", srv.admin_url] if source == "url" else ["--log-dir", str(srv.log_dir)]
    r = cli("calls", "list", *where, "--test-run-id", "nightly-42", "--side", "uut", "--json")
    assert r.returncode == 0, r.stderr
    assert [c["call_id"] for c in json.loads(r.stdout)] == [PRICEY_SLOW]


def test_list_filters_by_minimum_cost(srv: ServerProc) -> None:
    r = cli("calls", "list", "--url", srv.admin_url, "--min-cost-usd", "0.015", "--json")
    assert r.returncode == 0, r.stderr
    assert [c["call_id"] for c in json.loads(r.stdout)] == [LONG]


def test_top_prints_a_table(srv: ServerProc) -> None:
    r = cli("calls", "top", "--url", srv.admin_url, "--by", "cost", "--limit", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split() == [LONG, "completed", "2", "0.018338", "470.4"]


def test_check_passes_a_call_within_budget(srv: ServerProc) -> None:
    r = cli("calls", "check", PRICEY_SLOW, "--url", srv.admin_url, "--max-usd", "0.05", "--max-p95-ms", "1300")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == (f"ok: call {PRICEY_SLOW} (uut side) costs $0.011176 (budget $0.050000), "
                        "p95 1223.505 ms (budget 1300 ms)\n")


def test_check_fails_an_over_budget_call_with_exit_1_and_its_breakdown(srv: ServerProc) -> None:
    r = cli("calls", "check", PRICEY_SLOW, "--url", srv.admin_url, "--max-usd", "0.01", "--max-p95-ms", "1200")
    assert r.returncode == 1
    assert r.stdout.startswith(f"FAIL: call {PRICEY_SLOW} (uut side) is over budget:\n"
                               "  - cost $0.011176 is over the budget of $0.010000 by $0.001176\n"
                               "  - p95 turn latency 1223.505 ms is over the budget of 1200 ms\n")
    assert "  telephony  twilio: 0.5 min, 1 billed min = $0.008500\n" in r.stdout


def test_check_fails_a_call_with_unpriced_usage_unless_allowed(srv: ServerProc) -> None:
    cid = call_id(405)
    send_call(srv, cid, [700.0], model="gpt-9-turbo")  # no rate for this model
    srv.wait_final(cid)
    r = cli("calls", "check", cid, "--url", srv.admin_url, "--max-usd", "0.05")
    assert r.returncode == 1
    assert "  - cost is incomplete: 1 usage line(s) have no rate" in r.stdout
    allowed = cli("calls", "check", cid, "--url", srv.admin_url, "--max-usd", "0.05", "--allow-unpriced")
    assert allowed.returncode == 0, allowed.stdout


def test_check_fails_a_call_still_in_progress_after_its_wait(srv: ServerProc) -> None:
    r = cli("calls", "check", call_id(404), "--url", srv.admin_url, "--max-usd", "0.05", "--wait", "0.2")
    assert r.returncode == 1
    assert "  - the call is still in_progress (revision 1): wait for it to be final first\n" in r.stdout


def test_check_exits_2_for_a_call_that_does_not_exist(srv: ServerProc) -> None:
    r = cli("calls", "check", "CAnope", "--url", srv.admin_url, "--max-usd", "0.05")
    assert (r.returncode, r.stderr) == (2, "error: no such call 'CAnope'\n")


def test_check_exits_2_when_the_server_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("calls", "check", CHEAP, "--url", f"http://127.0.0.1:{port}", "--max-usd", "0.05")
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: cannot reach otel-patter at http://127.0.0.1:{port}: ")


@pytest.mark.parametrize("args", [["--max-usd", "-1"], ["--max-usd", "cheap"], ["--side", "agent"]])
def test_check_exits_2_on_bad_arguments(args: list[str]) -> None:
    assert cli("calls", "check", CHEAP, *args).returncode == 2


def test_check_and_top_read_the_log_dir_without_a_server(srv: ServerProc) -> None:
    log_dir = str(srv.log_dir)
    assert cli("calls", "check", LONG, "--log-dir", log_dir, "--max-usd", "0.02").returncode == 0
    over = cli("calls", "check", LONG, "--log-dir", log_dir, "--max-usd", "0.015")
    assert over.returncode == 1
    assert "  - cost $0.018338 is over the budget of $0.015000 by $0.003338\n" in over.stdout
    assert _top_ids("--log-dir", log_dir, "--by", "cost", "--status", "completed", "--limit", "1") == [LONG]
    assert cli("calls", "check", "CAnope", "--log-dir", log_dir).returncode == 2
