"""The pytest plugin as a user's suite meets it: installed by entry point, `patter_calls`, `--otel-patter-url`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.calls_data import call_id, send_call
from tests.server import ServerProc

CID = call_id(501)
SUITE = f'''
def test_support_call_within_budget(patter_calls):
    patter_calls.wait("{CID}", timeout=10).assert_budget(usd=0.05, p95_ms=1300, side="uut")


def test_support_call_on_a_tight_budget(patter_calls):
    patter_calls.wait("{CID}", timeout=10).assert_budget(usd=0.01, side="uut")
'''


def run_pytest(directory: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=directory, capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path_factory.mktemp("plugin")).start()
    try:
        send_call(s, CID, [612.4, 845.0, 731.9, 1290.3])  # $0.011176, p95 1223.505 ms
        yield s
    finally:
        s.stop()


def test_a_suite_asserts_budgets_through_the_fixture(srv: ServerProc, tmp_path: Path) -> None:
    (tmp_path / "test_budget.py").write_text(SUITE)
    r = run_pytest(tmp_path, "--otel-patter-url", srv.admin_url)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed, 1 passed" in r.stdout
    assert f"AssertionError: call {CID} (uut side) is over budget:" in r.stdout
    assert "  - cost $0.011176 is over the budget of $0.010000 by $0.001176" in r.stdout
    assert "  llm        openai gpt-4o-mini: 1200 input tokens, 160 output tokens = $0.000276" in r.stdout


def test_the_url_can_come_from_otel_patter_url(srv: ServerProc, tmp_path: Path) -> None:
    (tmp_path / "test_budget.py").write_text(SUITE)
    r = run_pytest(tmp_path, "-k", "within_budget", env={"OTEL_PATTER_URL": srv.admin_url})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 deselected" in r.stdout


def test_the_plugin_is_inert_in_a_suite_that_does_not_use_it(tmp_path: Path) -> None:
    with socket.socket() as s:  # nothing listens here: any connection attempt would fail the run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "test_plain.py").write_text("def test_arithmetic():\n    assert 2 + 2 == 4\n")
    r = run_pytest(tmp_path, "--otel-patter-url", f"http://127.0.0.1:{port}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout


def test_the_option_is_in_pytest_help(tmp_path: Path) -> None:
    r = run_pytest(tmp_path, "--help")
    assert r.returncode == 0
    assert "--otel-patter-url=URL" in r.stdout
