"""The `otel-patter` command line: check-config, calls list/show from the log dir or a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.otlp import RECORDED_CALL_ID, post, recorded_call
from tests.server import ServerProc


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_patter.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_check_config_without_a_file_prints_the_defaults() -> None:
    r = cli("check-config", env={"PATH": "/usr/bin:/bin", "HOME": "/tmp/nohome"})
    assert r.returncode == 0, r.stderr
    assert "endpoint: localhost:4317" in r.stdout
    assert "/tmp/nohome/.local/share/otel-patter" in r.stdout


def test_check_config_names_the_offending_path(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("rollup:\n  idle_timeout: soon\nreceivers:\n  otlp:\n    grcp: {endpoint: 'x:1'}\n")
    r = cli("check-config", "--config", str(f))
    assert r.returncode == 1
    assert "error: rollup.idle_timeout:" in r.stderr
    assert "error: receivers.otlp.grcp: unknown key" in r.stderr


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("store: {redact_phone: sometimes}\n")
    r = cli("serve", "--config", str(f))
    assert r.returncode == 2
    assert r.stderr.startswith("error: store.redact_phone:")


def _one_call(server: ServerProc) -> dict:
    for req in recorded_call():
        assert post(server.http_endpoint + "/v1/traces", req.SerializeToString())[0] == 200
    return server.wait_final(RECORDED_CALL_ID)


def test_calls_list_and_show_read_the_log_dir_without_a_server(server: ServerProc) -> None:
    env = _one_call(server)
    server.stop()
    listed = cli("calls", "list", "--log-dir", str(server.log_dir), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["call_id"] for c in json.loads(listed.stdout)] == [RECORDED_CALL_ID]
    shown = cli("calls", "show", RECORDED_CALL_ID, "--log-dir", str(server.log_dir), "--json")
    assert json.loads(shown.stdout) == env
    table = cli("calls", "show", RECORDED_CALL_ID, "--log-dir", str(server.log_dir))
    assert f"{RECORDED_CALL_ID}" in table.stdout and "completed" in table.stdout


def test_calls_show_asks_a_running_server(server: ServerProc) -> None:
    env = _one_call(server)
    shown = cli("calls", "show", RECORDED_CALL_ID, "--url", server.admin_url, "--wait", "5", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["cost"] == env["cost"]
    missing = cli("calls", "show", "CAnope", "--url", server.admin_url)
    assert missing.returncode == 2
    assert "no such call" in missing.stderr
