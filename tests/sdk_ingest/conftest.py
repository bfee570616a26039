"""The real getpatter 0.7.0 SDK with its dashboard notify ON: its ingest POSTs go to 127.0.0.1:8000.

The SDK posts its call reports to 127.0.0.1:8000 and nowhere else, so these runs need that port:
when something else holds it, the tests that need it are skipped (with the reason), never run
against a stranger. The SDK runs (~16 s each: real-time paced audio) are module-scoped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.sdk import emit_call
from tests.sdk.conftest import REPO, SCRIPT_TIMEOUT_S, sdk_env
from tests.server import ServerProc

NOTIFY_HOST, NOTIFY_PORT = "127.0.0.1", 8000  # getpatter.dashboard.persistence.notify_dashboard's target
NOTIFY_PATH = "/api/dashboard/ingest"
# the SDK flushes spans every 5 s and at shutdown (1 s after the call ends, in emit_call): the grace covers that
CONFIG: dict[str, Any] = {"rollup": {"idle_timeout": "30s", "final_grace": "4s"}}


def port_8000_problem() -> str | None:
    """Why 127.0.0.1:8000 cannot be ours for a test (None when it is free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no obstacle
        try:
            s.bind((NOTIFY_HOST, NOTIFY_PORT))
        except OSError as e:
            return (f"{NOTIFY_HOST}:{NOTIFY_PORT} is held by another process ({e.strerror}); getpatter 0.7.0 "
                    "posts its call reports there and nowhere else, so the SDK-notify tests cannot run here")
    return None


def require_port_8000() -> None:
    problem = port_8000_problem()
    if problem:
        pytest.skip(problem)


@dataclass
class SdkRun:
    """One fake Twilio call through the SDK's real server route, notify ON."""

    stdout: str
    stderr: str
    seconds: float
    result: dict[str, Any]
    sdk_root: Path

    @property
    def sdk_dir(self) -> Path:
        found = [p.parent for p in self.sdk_root.glob(f"calls/*/*/*/{emit_call.CALL_SID}/metadata.json")]
        assert len(found) == 1, found
        return found[0]

    @property
    def sdk_meta(self) -> dict[str, Any]:
        return json.loads((self.sdk_dir / "metadata.json").read_text())


def run_notify_call(server: ServerProc, sdk_root: Path) -> SdkRun:
    """tests/sdk_ingest/emit_call_notify.py to completion: spans to `server`, ingest POSTs to :8000."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tests.sdk_ingest.emit_call_notify", str(sdk_root)],
                          env=sdk_env(server), cwd=REPO, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S, check=False)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, (
        f"emit_call_notify exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        f"\nserver log:\n{server.logs()[-3000:]}")
    assert "Failed to export" not in proc.stderr, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    return SdkRun(proc.stdout, proc.stderr, seconds, result, sdk_root)


@dataclass
class BadListener:
    """Stands where the SDK's dashboard would: answers call_start after `start_delay_s` (past the SDK's
    1 s timeout) and everything else with `end_status`; records what arrived (sizes only)."""

    start_delay_s: float = 3.0
    end_status: int = 500
    seen: list[tuple[str, float, int]] = field(default_factory=list)  # (kind, arrival, bytes)
    server: ThreadingHTTPServer | None = None

    def __enter__(self) -> BadListener:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                kind = "call_end" if json.loads(body).get("ended_at") else "call_start"
                outer.seen.append((kind, time.time(), len(body)))
                if kind == "call_start":
                    time.sleep(outer.start_delay_s)
                    status = 200
                else:
                    status = outer.end_status
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the SDK gave up waiting (its 1 s timeout)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((NOTIFY_HOST, NOTIFY_PORT), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
