"""Shared helpers of the reliability suite: load generators, WAL inspection, finalizing and comparing calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.server import ServerProc

REPO = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    """No OTEL_* / PATTER_* from the developer's shell (exporters would read them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PATTER_"))}


@dataclass
class LoadGen:
    """One load generator process (tests/reliability/loadgen.py)."""

    name: str
    protocol: str
    shape: str
    seed_base: int
    calls: int
    no_driver: bool
    out: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, endpoint: str, start_ns: int, *, waves: int | None = None, stop_file: Path | None = None,
              max_waves: int = 40, deadline: float = 240.0, repeat_rate: float = 0.0) -> LoadGen:
        args = [sys.executable, "-m", "tests.reliability.loadgen", "--endpoint", endpoint, "--protocol",
                self.protocol, "--shape", self.shape, "--calls", str(self.calls), "--seed-base", str(self.seed_base),
                "--start-ns", str(start_ns), "--max-waves", str(max_waves), "--deadline", str(deadline),
                "--repeat-rate", str(repeat_rate), "--out", str(self.out)]
        if self.no_driver:
            args.append("--no-driver")
        if waves is not None:
            args += ["--waves", str(waves)]
        if stop_file is not None:
            args += ["--stop-file", str(stop_file)]
        log = open(self.out.with_suffix(".log"), "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(args, cwd=REPO, env=clean_env(), stdout=log, stderr=log)
        log.close()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"load generator {self.name} did not finish in {timeout}s") from None
        result = json.loads(self.out.read_text()) if self.out.exists() else {"error": "no result"}
        assert self.proc.returncode == 0 and not result.get("error"), (
            self.name, result, self.out.with_suffix(".log").read_text(errors="replace")[-3000:])
        return result

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)


def spawn(server: ServerProc) -> None:
    """Start the server process without waiting for it to be ready (to kill it while it recovers)."""
    err = open(server.stderr_path, "ab")  # noqa: SIM115 - the child owns it
    server.proc = subprocess.Popen(
        [sys.executable, "-m", "otel_patter.cli", "serve", "--config", str(server.config_path)],
        stdout=err, stderr=err, env=server.env)
    err.close()


def wait_ready(server: ServerProc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited {server.proc.returncode}: {server.logs()[-3000:]}")
        try:
            if server.get("/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not ready in {timeout}s: {server.logs()[-3000:]}")


def wal_span_keys(log_dir: Path) -> tuple[Counter[tuple[str, str]], int]:
    """(trace id, span id) -> lines in the calls' write-ahead logs, and the number of torn/bad lines."""
    keys: Counter[tuple[str, str]] = Counter()
    bad = 0
    for wal in log_dir.glob("calls/*/*/*/*/spans.jsonl"):
        for raw in wal.read_bytes().splitlines():
            try:
                line = json.loads(raw)
                data = line["data"]
                if line.get("type") == "span":
                    keys[(data["trace_id"], data["span_id"])] += 1
            except (ValueError, KeyError, TypeError):
                bad += 1
    return keys, bad


def finalize_all(server: ServerProc, call_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Ask for every call to be final now; return the final envelopes by call id."""
    out: dict[str, dict[str, Any]] = {}
    for cid in call_ids:
        code, body = server.post(f"/api/v1/calls/{quote(cid, safe='')}/finalize")
        assert code == 200, (cid, code, body)
        out[cid] = body
    return out


def listed_calls(server: ServerProc) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        path = "/api/v1/calls?limit=500" + (f"&cursor={quote(cursor)}" if cursor else "")
        code, body = server.get(path)
        assert code == 200, body
        calls += body["calls"]
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return calls


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'reference' if k in b else 'crash run'}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tracebacks(text: str) -> list[str]:
    return [line for line in text.splitlines() if "Traceback" in line]
