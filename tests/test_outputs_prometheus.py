"""A real Prometheus server (Debian's `prometheus`) scrapes otel-patter's /metrics every second."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.otlp import RECORDED_CALL_ID, post, recorded_call
from tests.server import free_port

PROMETHEUS = shutil.which("prometheus")


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="the `prometheus` binary is not installed (.ci/run installs "
                                               "Debian's package; locally: apt-get install prometheus)")
def test_prometheus_scrapes_the_call_cost(make_server, tmp_path: Path) -> None:
    s = make_server().start()
    for r in recorded_call():
        code, body, _ = post(s.http_endpoint + "/v1/traces", r.SerializeToString())
        assert code == 200, body
    env = s.wait_final(RECORDED_CALL_ID)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "otel-patter", "static_configs": [{"targets": [f"127.0.0.1:{s.admin_port}"]}]}],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the child owns it
    assert PROMETHEUS is not None
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        result: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                result = query(port, "sum(patter_cost_usd_total)")
            except OSError:
                result = []
            if result:
                break
            time.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        # each component's counter is the envelope's (rounded to 6 places) figure; the envelope's total is
        # rounded from the exact sum (the SDK's rule), so the two may differ by a few micro-dollars
        components = [env["cost"][c] for c in ("stt", "tts", "llm", "telephony", "realtime")]
        assert components == [0.000802, 0.01275, 0.00023, 0.0085, 0.0]
        assert float(result[0]["value"][1]) == pytest.approx(sum(components), abs=1e-12)
        assert float(result[0]["value"][1]) == pytest.approx(env["cost"]["total"], abs=5e-6)
        (tts,) = query(port, 'patter_cost_usd_total{component="tts"}')
        assert tts["metric"]["provider"] == "elevenlabs"
        assert tts["metric"]["job"] == "otel-patter"
        assert float(tts["value"][1]) == 0.01275
        (calls,) = query(port, 'patter_calls_total{status="completed"}')
        assert float(calls["value"][1]) == 1
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
