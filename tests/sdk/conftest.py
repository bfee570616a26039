"""The real getpatter 0.7.0 SDK, in subprocesses, exporting to a real `otel-patter serve`.

Each SDK run is its own process: `init_tracing()` latches global state (a tracer
provider can be set once per process). The full fake Twilio call takes ~16 s, so each
span shape runs once per test package (both side by side) and its tests share it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.sdk import emit_call
from tests.server import ServerProc

HERE = Path(__file__).parent
REPO = HERE.parent.parent
SCRIPT_TIMEOUT_S = 120.0
SHAPES = ("getpatter_only", "fastapi")  # emit_call.py without / with FastAPI's native OTel spans
FULL_CALL_CONFIG = {
    # the SDK flushes every 5 s: a 30 s idle window (the default) never splits the call; hang-up
    # usage comes in the last flush, so a short grace keeps the suite quick
    "rollup": {"idle_timeout": "30s", "final_grace": "2s"},
}


def usd6(sdk_usd: float) -> float:
    """An SDK pricing function's value as the envelope writes money: half-even to 6 places from the
    exact decimal (the SDK's own `round(x, 6)` on a float can land one micro-dollar lower on a tie,
    e.g. 0.0002295 -> 0.000229)."""
    return float(Decimal(repr(sdk_usd)).quantize(Decimal("0.000001"), ROUND_HALF_EVEN))


def sdk_env(server: ServerProc) -> dict[str, str]:
    """What a Patter app sets to send its spans to otel-patter (README), and nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PATTER_"))}
    env.update({
        "PATTER_OTEL_ENABLED": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": server.http_endpoint,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


def run_sdk_script(server: ServerProc, script: str, *args: str) -> tuple[str, float]:
    """Run one of this folder's SDK scripts to completion; its spans are acked when it returns."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(HERE / script), *args], env=sdk_env(server), cwd=REPO,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, (
        f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        f"\nserver log:\n{server.logs()[-3000:]}")
    assert "Failed to export" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout, elapsed


@dataclass
class FullCall:
    """One fake Twilio call through the SDK's real server route, seen by both sides."""

    shape: str  # "getpatter_only" | "fastapi"
    server: ServerProc
    envelope: dict[str, Any]  # otel-patter's, from the admin API once final
    sdk_root: Path  # where the SDK wrote its own call log
    sdk_meta: dict[str, Any]  # the SDK's metadata.json for the same call
    sdk_turns: list[dict[str, Any]]  # the SDK's transcript.jsonl rows (TurnMetrics)
    sdk_events: list[dict[str, Any]]  # the SDK's events.jsonl rows
    result: dict[str, Any]  # the script's RESULT line
    seconds: float  # wall time of the SDK process

    @property
    def call_dir(self) -> Path:
        return self.envelope_path.parent

    @property
    def envelope_path(self) -> Path:
        found = list(self.server.log_dir.glob(f"calls/*/*/*/{emit_call.CALL_SID}/*.json"))
        ours = [p for p in found if json.loads(p.read_text()).get("writer") == "otel-patter"]
        assert len(ours) == 1, found
        return ours[0]

    def wal_spans(self) -> list[dict[str, Any]]:
        lines = (self.call_dir / "spans.jsonl").read_text().splitlines()
        return [json.loads(line)["data"] for line in lines]


def _sdk_call_dir(root: Path) -> Path:
    found = list(root.glob(f"calls/*/*/*/{emit_call.CALL_SID}/metadata.json"))
    sdk = [p for p in found if "writer" not in json.loads(p.read_text())]
    assert len(sdk) == 1, found
    return sdk[0].parent


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _full_call(root: Path, shape: str, servers: list[ServerProc]) -> FullCall:
    server = ServerProc(root, FULL_CALL_CONFIG)
    servers.append(server)
    server.start()
    # the FastAPI run shares otel-patter's log dir with the SDK's own call log (a real deployment
    # that sets PATTER_LOG_DIR for both); the getpatter-only run keeps them apart
    sdk_root = server.log_dir if shape == "fastapi" else root / "sdk-log"
    flags = [] if shape == "fastapi" else ["--no-fastapi-spans"]
    stdout, seconds = run_sdk_script(server, "emit_call.py", str(sdk_root), *flags)
    result = json.loads(stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    envelope = server.wait_final(emit_call.CALL_SID, timeout=30)
    sdk_dir = _sdk_call_dir(sdk_root)
    return FullCall(shape=shape, server=server, envelope=envelope, sdk_root=sdk_root,
                    sdk_meta=json.loads((sdk_dir / "metadata.json").read_text()),
                    sdk_turns=_jsonl(sdk_dir / "transcript.jsonl"), sdk_events=_jsonl(sdk_dir / "events.jsonl"),
                    result=result, seconds=seconds)


@pytest.fixture(scope="package")
def full_calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FullCall]]:
    """Both shapes' calls, run side by side (each is ~16 s of real-time paced audio, little CPU)."""
    servers: list[ServerProc] = []
    try:
        with ThreadPoolExecutor(len(SHAPES)) as pool:
            futures = {shape: pool.submit(_full_call, tmp_path_factory.mktemp(shape), shape, servers)
                       for shape in SHAPES}
            calls = {shape: f.result() for shape, f in futures.items()}
        yield calls
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def getpatter_only_call(full_calls: dict[str, FullCall]) -> FullCall:
    return full_calls["getpatter_only"]


@pytest.fixture
def fastapi_call(full_calls: dict[str, FullCall]) -> FullCall:
    return full_calls["fastapi"]


@pytest.fixture(params=SHAPES)
def full_call(request: pytest.FixtureRequest, full_calls: dict[str, FullCall]) -> FullCall:
    return full_calls[request.param]
