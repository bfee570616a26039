"""An acceptance test of a Patter voice agent's cost and latency budget, with otel-patter's pytest plugin.

What a suite does against a real agent, end to end:

1. start otel-patter (here: a private `otel-patter serve` on free loopback ports and a temp log dir);
2. run the call with the agent's `OTEL_EXPORTER_OTLP_ENDPOINT` pointed at it, and its resource tagged
   `OTEL_RESOURCE_ATTRIBUTES=test.run_id=<this run>` (here `otel_patter.simulate` plays a realistic
   getpatter 0.7.0 call through the real OpenTelemetry SDK and OTLP exporter instead of a phone call);
3. wait for the call to be final through the `patter_calls` fixture, and assert its budget.

The plugin ships with otel-patter (entry point `otel_patter`). Against a server you already run, drop
the `otel_patter_url` fixture below and pass `--otel-patter-url http://host:4319` (or set
`OTEL_PATTER_URL`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from otel_patter import simulate
from otel_patter.client import PatterCalls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def otel_patter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private otel-patter: OTLP/gRPC endpoint and admin URL."""
    root = tmp_path_factory.mktemp("otel-patter")
    grpc, http, admin = _free_port(), _free_port(), _free_port()
    config = root / "config.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc}"}, "http": {"endpoint": f"127.0.0.1:{http}"}}},
        "admin": {"endpoint": f"127.0.0.1:{admin}"},
        "store": {"log_dir": str(root / "log")},
        # final 300 ms after the hang-up usage arrives; a side without one after 3 s of quiet
        "rollup": {"final_grace": "300ms", "idle_timeout": "3s"},
    }))
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "otel_patter.cli", "serve", "--config", str(config)],
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{admin}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"otel-patter did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield {"otlp_grpc": f"http://127.0.0.1:{grpc}", "admin": url}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def otel_patter_url(otel_patter_server: dict[str, str]) -> str:
    """Point the plugin's `patter_calls` fixture at the private server."""
    return otel_patter_server["admin"]


def run_call(otlp_endpoint: str, test_run_id: str, monkeypatch: pytest.MonkeyPatch, seed: int) -> str:
    """Stand-in for "place a call to the agent under test": returns the uut leg's call id."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"test.run_id={test_run_id}")
    plans = simulate.build_calls(1, seed=seed, turns=4, with_driver=False)
    sent = simulate.emit(plans, endpoint=otlp_endpoint, protocol="grpc")
    return sent[0].call_id


def test_support_call_stays_within_budget(otel_patter_server: dict[str, str], patter_calls: PatterCalls,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    call_id = run_call(otel_patter_server["otlp_grpc"], f"example-{uuid.uuid4().hex[:8]}", monkeypatch, seed=11)

    call = patter_calls.wait(call_id, timeout=30).assert_budget(usd=0.05, p95_ms=5000, side="uut")

    assert call.status == "completed"
    assert call.envelope["turns"] == 4


def test_a_suite_finds_its_call_by_test_run_id(otel_patter_server: dict[str, str], patter_calls: PatterCalls,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = f"example-{uuid.uuid4().hex[:8]}"
    call_id = run_call(otel_patter_server["otlp_grpc"], run_id, monkeypatch, seed=12)

    call = patter_calls.find(test_run_id=run_id, side="uut", wait=True, timeout=30)

    assert call.call_id == call_id
    call.assert_budget(usd=0.05)


def test_an_over_budget_call_fails_with_its_cost_breakdown(otel_patter_server: dict[str, str],
                                                           patter_calls: PatterCalls,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    call_id = run_call(otel_patter_server["otlp_grpc"], f"example-{uuid.uuid4().hex[:8]}", monkeypatch, seed=13)
    call = patter_calls.wait(call_id, timeout=30)

    with pytest.raises(AssertionError) as failed:
        call.assert_budget(usd=0.001)

    assert f"call {call_id} (uut side) is over budget:" in str(failed.value)
    assert "cost by component (USD):" in str(failed.value)
