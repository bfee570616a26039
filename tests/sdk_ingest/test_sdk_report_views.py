"""Both views of a call's USD, where people read them: `calls check` (which figure a build budgets
against, default the larger), the admin page (`/calls/{id}` and the index) and `/metrics` (the SDK's
figures in a family apart from ours).

One call throughout: the only span is the hang-up's telephony minutes (0.2468 raw min, billed as one
Twilio minute: $0.0085), and the SDK's call_end report says $0.02289 (stt 0.00112, tts 0.01305,
llm 0.00022, telephony 0.0085). So otel-patter's figure is $0.0085 and the SDK's $0.02289.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otel_patter.admin.page import render_call, render_index
from otel_patter.cli import main as cli
from otel_patter.client import CallResult
from tests.inproc import InProcess
from tests.otlp import span
from tests.sdk_ingest import reports as R

CALL = R.CALL
OTHER = "CAfedcba9876543210fedcba9876543210"
UUT = {"service.name": "patter", "service.instance.id": "uut-instance"}
TELEPHONY = {"patter.cost.telephony_minutes": 0.2468, "patter.telephony": "twilio", "patter.direction": "inbound"}
SPANS_USD, SDK_USD = 0.0085, 0.02289


def hangup(call_id: str = CALL) -> object:
    return span("patter.billable", {**TELEPHONY, "patter.call_id": call_id, "patter.side": "uut"})


def final_call(tmp_path: Path, *, cost: dict[str, float] | None = None, report: bool = True,
               call_start_only: bool = False) -> tuple[InProcess, dict[str, Any], list[str]]:
    """The call above, final and written to the log dir; returns (pipeline, envelope, `--log-dir` args)."""
    p = InProcess(tmp_path / "log")
    p.send([hangup()], UUT)
    if report:
        p.pipeline.consume_sdk_report(R.call_start())
        if not call_start_only:
            p.pipeline.consume_sdk_report(R.call_end(cost=cost))
    env = p.final(CALL)
    p.pipeline.rollup.flush_envelopes(force=True)
    return p, env, ["--log-dir", str(tmp_path / "log")]


# -- calls check --source ------------------------------------------------------------------------------------
def test_check_budgets_the_larger_figure_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, env, log_dir = final_call(tmp_path)
    assert (env["cost"]["total"], env["reconciliation"]["sdk"]["total"]) == (SPANS_USD, SDK_USD)
    assert cli(["calls", "check", CALL, "--max-usd", "0.01", *log_dir]) == 1  # 0.0085 fits; 0.02289 does not
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"FAIL: call {CALL} (uut side) is over budget:",
        "  - cost $0.022890 (the SDK's own call report) is over the budget of $0.010000 by $0.012890 "
        "(otel-patter's from spans: $0.008500)"]


def test_check_names_the_sdk_figure_when_it_passed_on_it(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, _, log_dir = final_call(tmp_path)
    assert cli(["calls", "check", CALL, "--max-usd", "0.03", *log_dir]) == 0
    assert capsys.readouterr().out == (
        f"ok: call {CALL} (uut side) costs $0.022890 (the SDK's own call report) (budget $0.030000)\n")


def test_check_source_spans_budgets_otel_patters_figure_only(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, _, log_dir = final_call(tmp_path)
    assert cli(["calls", "check", CALL, "--max-usd", "0.01", "--source", "spans", *log_dir]) == 0
    assert capsys.readouterr().out == f"ok: call {CALL} (uut side) costs $0.008500 (budget $0.010000)\n"


def test_check_max_takes_the_spans_figure_when_it_is_the_larger(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    cheap = {"stt": 0.0, "tts": 0.0, "llm": 0.0, "telephony": 0.005, "total": 0.005, "llm_cached_savings": 0.0}
    _, env, log_dir = final_call(tmp_path, cost=cheap)  # e.g. a carrier price below the rate table
    assert env["reconciliation"]["sdk"]["total"] == 0.005
    assert cli(["calls", "check", CALL, "--max-usd", "0.006", *log_dir]) == 1
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"FAIL: call {CALL} (uut side) is over budget:", "  - cost $0.008500 is over the budget of $0.006000 by "
        "$0.002500"]
    assert cli(["calls", "check", CALL, "--max-usd", "0.006", "--source", "sdk", *log_dir]) == 0
    assert capsys.readouterr().out == (
        f"ok: call {CALL} (uut side) costs $0.005000 (the SDK's own call report) (budget $0.006000)\n")


def test_check_max_is_the_spans_figure_for_a_call_without_an_sdk_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, env, log_dir = final_call(tmp_path, report=False)
    assert env["reconciliation"] is None
    assert cli(["calls", "check", CALL, "--max-usd", "0.01", *log_dir]) == 0
    assert capsys.readouterr().out == f"ok: call {CALL} (uut side) costs $0.008500 (budget $0.010000)\n"


def test_check_source_sdk_fails_a_call_without_an_sdk_report(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, _, log_dir = final_call(tmp_path, report=False)
    assert cli(["calls", "check", CALL, "--max-usd", "1", "--source", "sdk", *log_dir]) == 1
    assert capsys.readouterr().out == (
        f"FAIL: call {CALL} has no SDK call report for source 'sdk' (the SDK reports its uut side; "
        "is sdk_ingest on?)\n")


def test_assert_budget_in_a_suite_checks_the_larger_figure_unless_told_otherwise(tmp_path: Path) -> None:
    _, env, _ = final_call(tmp_path)
    result = CallResult(env)  # what `patter_calls.wait(CALL)` returns in a pytest suite
    with pytest.raises(AssertionError, match=r"cost \$0\.022890 \(the SDK's own call report\) is over the budget"):
        result.assert_budget(usd=0.01)
    assert result.assert_budget(usd=0.01, source="spans") is result


def test_calls_show_prints_both_views_line_by_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, log_dir = final_call(tmp_path)
    assert cli(["calls", "show", CALL, *log_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("reconcile"))
    assert lines[start].split() == ["reconcile", "spans", "sdk", "diff", "pct", "causes", "(MISMATCH", "over",
                                    "$0.001000)"]
    assert [line.split() for line in lines[start + 1:start + 6]] == [
        ["stt", "0.000000", "0.001120", "-0.001120", "-100.00%", "no_usage_on_spans"],
        ["tts", "0.000000", "0.013050", "-0.013050", "-100.00%", "no_usage_on_spans"],
        ["llm", "0.000000", "0.000220", "-0.000220", "-100.00%", "no_usage_on_spans"],
        ["telephony", "0.008500", "0.008500", "+0.000000", "+0.00%"],
        ["total", "0.008500", "0.022890", "-0.014390", "-62.87%", "no_usage_on_spans"],
    ]


# -- the page ------------------------------------------------------------------------------------------------
def test_the_call_page_shows_spans_and_sdk_usd_side_by_side_with_causes(tmp_path: Path) -> None:
    _, env, _ = final_call(tmp_path)
    page = render_call(env)
    assert R.reconciliation_rows(page) == {
        "stt": {"spans": "0.000000", "sdk": "0.001120", "diff": "-0.001120", "pct": "-100.00%",
                "causes": "no_usage_on_spans"},
        "tts": {"spans": "0.000000", "sdk": "0.013050", "diff": "-0.013050", "pct": "-100.00%",
                "causes": "no_usage_on_spans"},
        "llm": {"spans": "0.000000", "sdk": "0.000220", "diff": "-0.000220", "pct": "-100.00%",
                "causes": "no_usage_on_spans"},
        "telephony": {"spans": "0.008500", "sdk": "0.008500", "diff": "+0.000000", "pct": "+0.00%", "causes": ""},
        "total": {"spans": "0.008500", "sdk": "0.022890", "diff": "-0.014390", "pct": "-62.87%",
                  "causes": "no_usage_on_spans"},
    }
    assert "SDK reports received: call_start, call_end." in page
    assert '<p class="warn mismatch">The two differ by more than the tolerance' in page


def test_the_call_page_marks_an_unexplained_difference(tmp_path: Path) -> None:
    _, env, _ = final_call(tmp_path)
    env["reconciliation"]["difference"]["telephony"].update(usd=0.0001, causes=[], unexplained=True)
    assert R.reconciliation_rows(render_call(env))["telephony"]["causes"] == "unexplained"


def test_the_call_page_before_the_call_end_report_says_the_sdk_cost_is_still_to_come(tmp_path: Path) -> None:
    _, env, _ = final_call(tmp_path, call_start_only=True)
    page = render_call(env)
    assert R.reconciliation_rows(page) == {}
    assert "SDK reports received: call_start; its cost comes with its call_end report." in page


def test_the_call_page_of_a_call_without_sdk_reports_has_no_reconciliation(tmp_path: Path) -> None:
    _, env, _ = final_call(tmp_path, report=False)
    page = render_call(env)
    assert "Reconciliation" not in page and 'id="reconciliation"' not in page


def test_the_index_adds_the_sdk_total_beside_ours_when_a_call_has_one(tmp_path: Path) -> None:
    _, with_sdk, _ = final_call(tmp_path / "a")
    _, without, _ = final_call(tmp_path / "b", report=False)
    without = dict(without, call_id=OTHER)
    page = render_index([with_sdk, without], limit=50)
    assert "<th class=num title=\"the SDK's own call report (sdk_ingest)\">sdk total</th>" in page
    assert f'data-usd="{SPANS_USD:.6f}">{SPANS_USD:.6f}</td><td class="num usd sdk-total">0.022890</td>' in page
    assert '<td class="num usd sdk-total">—</td>' in page  # the call without a report
    assert '<td class="num usd sum-sdk-total">0.022890</td>' in page
    assert "sdk total" not in render_index([without], limit=50)  # no column while no call has a report


# -- metrics -------------------------------------------------------------------------------------------------
def _samples(p: InProcess, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for m in p.pipeline.metrics.registry.collect()
            for s in m.samples if s.name == family}


def test_the_sdk_cost_is_a_metric_family_apart_from_ours(tmp_path: Path) -> None:
    p, _, _ = final_call(tmp_path)
    assert _samples(p, "patter_sdk_cost_usd_total") == {
        (("component", "stt"),): 0.00112, (("component", "tts"),): 0.01305, (("component", "llm"),): 0.00022,
        (("component", "telephony"),): 0.0085}
    # ours counts the span-derived usage only: the SDK's figures never add to it
    assert sum(_samples(p, "patter_cost_usd_total").values()) == SPANS_USD
    assert _samples(p, "patter_reconcile_mismatch_calls_total") == {(): 1.0}  # 0.01439 over the 0.001 default


def test_a_call_reported_only_by_the_sdk_adds_nothing_to_our_cost_family(tmp_path: Path) -> None:
    p = InProcess(tmp_path / "log")
    p.pipeline.consume_sdk_report(R.call_start())
    p.pipeline.consume_sdk_report(R.call_end())
    p.final(CALL)
    assert sum(_samples(p, "patter_sdk_cost_usd_total").values()) == pytest.approx(SDK_USD, abs=1e-12)
    assert sum(_samples(p, "patter_cost_usd_total").values()) == 0.0


def test_the_mismatch_tolerance_is_configurable(tmp_path: Path) -> None:
    p = InProcess(tmp_path / "log", **{"sdk_ingest.tolerance_usd": 0.02})  # above the 0.01439 difference
    p.send([hangup()], UUT)
    p.pipeline.consume_sdk_report(R.call_end())
    rec = p.final(CALL)["reconciliation"]
    assert (rec["tolerance_usd"], rec["mismatch"]) == (0.02, False)
    assert _samples(p, "patter_reconcile_mismatch_calls_total") == {(): 0.0}
