"""`admin.auth_token`: the API and the page want the bearer token; probes stay open; the token never leaks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_patter.client import PatterCalls, PatterCallsError
from otel_patter.config import ConfigError, load_config
from tests.calls_data import call_id, send_call
from tests.server import ServerProc

TOKEN = "op-admin-7Hq2vX9pL4mN8rT1"


def fetch(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """The token comes from the environment through `${env:...}`, as a deployment would pass a secret."""
    s = ServerProc(tmp_path_factory.mktemp("auth"), {"admin": {"auth_token": "${env:OTEL_PATTER_ADMIN_TOKEN}"}},
                   env={"OTEL_PATTER_ADMIN_TOKEN": TOKEN}).start()
    try:
        send_call(s, call_id(601), [700.0, 820.5])
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("path", ["/api/v1/calls", f"/api/v1/calls/{call_id(601)}", "/api/v1/openapi.json"])
def test_the_api_wants_the_bearer_token(locked: ServerProc, path: str) -> None:
    code, headers, body = fetch(locked.admin_url + path)
    assert (code, headers["WWW-Authenticate"]) == (401, 'Bearer realm="otel-patter"')
    assert body == b'{"error": "unauthorized: send Authorization: Bearer <admin.auth_token>"}'
    assert fetch(locked.admin_url + path, f"Bearer {TOKEN}")[0] == 200


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Token {TOKEN}",
                                           f"Basic {base64.b64encode(b'admin:wrong').decode()}"])
def test_a_wrong_token_is_refused(locked: ServerProc, authorization: str) -> None:
    assert fetch(locked.admin_url + "/api/v1/calls", authorization)[0] == 401


def test_finalize_wants_the_token_too(locked: ServerProc) -> None:
    req = urllib.request.Request(locked.admin_url + f"/api/v1/calls/{call_id(601)}/finalize", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_stay_open(locked: ServerProc, path: str) -> None:
    assert fetch(locked.admin_url + path)[0] == 200


def test_the_page_asks_a_browser_for_the_token_and_takes_it_as_basic_password(locked: ServerProc) -> None:
    code, headers, _ = fetch(locked.admin_url + "/")
    assert (code, headers["WWW-Authenticate"]) == (401, 'Basic realm="otel-patter", Bearer realm="otel-patter"')
    basic = "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    code, _, body = fetch(locked.admin_url + f"/calls/{call_id(601)}", basic)
    assert code == 200
    assert call_id(601).encode() in body
    assert fetch(locked.admin_url + "/", f"Bearer {TOKEN}")[0] == 200


def test_the_client_sends_the_token(locked: ServerProc) -> None:
    call = PatterCalls(locked.admin_url, token=TOKEN).wait(call_id(601), timeout=10)
    assert call.usd() == 0.009838
    with pytest.raises(PatterCallsError, match=r"^call CA0+259: HTTP 401: unauthorized"):
        PatterCalls(locked.admin_url, token="nope").get(call_id(601))


def test_the_cli_takes_the_token_from_otel_patter_token(locked: ServerProc) -> None:
    env = {"PATH": "/usr/bin:/bin", "OTEL_PATTER_TOKEN": TOKEN}
    r = subprocess.run([sys.executable, "-m", "otel_patter.cli", "calls", "check", call_id(601), "--url",
                        locked.admin_url, "--max-usd", "0.01"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_openapi_document_declares_the_bearer_scheme(locked: ServerProc) -> None:
    code, _, body = fetch(locked.admin_url + "/api/v1/openapi.json", f"Bearer {TOKEN}")
    assert code == 200
    doc: dict[str, Any] = json.loads(body)
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/metrics"]["get"]["security"] == []


def test_the_token_is_never_logged(locked: ServerProc) -> None:
    fetch(locked.admin_url + "/api/v1/calls", "Bearer wrong-token-attempt")
    assert TOKEN not in locked.logs()
    assert "wrong-token-attempt" not in locked.logs()


def test_metrics_auth_puts_metrics_behind_the_token(make_server: Any) -> None:
    s = make_server({"admin": {"auth_token": TOKEN, "metrics_auth": True}}).start()
    assert fetch(s.admin_url + "/metrics")[0] == 401
    assert fetch(s.admin_url + "/metrics", f"Bearer {TOKEN}")[0] == 200
    assert fetch(s.admin_url + "/readyz")[0] == 200


# -- config ------------------------------------------------------------------------------------------
def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return load_config(str(f), env=env or {})


def test_the_token_expands_from_the_environment_and_is_masked_when_printed(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "admin: {auth_token: '${env:ADMIN_TOKEN}', metrics_auth: true}\n", {"ADMIN_TOKEN": TOKEN})
    assert (cfg.admin.auth_token, cfg.admin.metrics_auth) == (TOKEN, True)
    assert TOKEN not in repr(cfg)
    r = subprocess.run([sys.executable, "-m", "otel_patter.cli", "check-config", "--config", str(tmp_path / "c.yaml")],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "ADMIN_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert "auth_token: '***'" in r.stdout
    assert TOKEN not in r.stdout + r.stderr


@pytest.mark.parametrize("text,error", [
    ("admin: {auth_token: ''}", "admin.auth_token: must not be empty (leave it out or null to disable auth)"),
    ("admin: {auth_token: 'two words'}", "admin.auth_token: must be 1-4096 visible ASCII characters (no spaces)"),
    ("admin: {auth_token: 12345}", "admin.auth_token: expected a string, got int"),
    ("admin: {metrics_auth: true}", "admin.metrics_auth: true needs admin.auth_token"),
    ("admin: {metrics_auth: sometimes}", "admin.metrics_auth: expected true or false, got 'sometimes'"),
])
def test_bad_auth_settings_are_config_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError) as bad:
        _load(tmp_path, text)
    assert str(bad.value) == error


def test_a_rejected_token_is_not_shown_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad:
        _load(tmp_path, "admin: {auth_token: 'sekrit value with spaces'}")
    assert "sekrit" not in str(bad.value)
