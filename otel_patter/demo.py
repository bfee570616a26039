"""`make demo`: start otel-patter, send simulated Patter calls through real OTLP exporters, print them.

Uses free loopback ports and a temporary log dir, so it never disturbs a running `make run`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 60) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def main(calls: int = 3) -> int:
    from otel_patter import simulate

    grpc_port, http_port, admin_port = _free_port(), _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="otel-patter-demo-") as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            f"receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{grpc_port}'}}, "
            f"http: {{endpoint: '127.0.0.1:{http_port}'}}}}}}\n"
            f"admin: {{endpoint: '127.0.0.1:{admin_port}'}}\n"
            f"store: {{log_dir: '{tmp}/log'}}\n"
            "rollup: {final_grace: 1s, idle_timeout: 5s}\n")
        proc = subprocess.Popen([sys.executable, "-m", "otel_patter.cli", "serve", "--config", str(cfg)],
                                stderr=subprocess.DEVNULL)
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            for _ in range(200):
                try:
                    if _get(admin + "/readyz", 2).get("ready"):
                        break
                except OSError:
                    time.sleep(0.05)
            sent = simulate.run(calls, f"http://127.0.0.1:{grpc_port}", "grpc", "0.7", 4, 0)
            print(f"{'call id':<36} {'status':<10} {'turns':>5} {'USD':>10} {'p95 ms':>8}  sides")
            for call_id in dict.fromkeys(c.call_id for c in sent):
                env = _get(f"{admin}/api/v1/calls/{call_id}?wait=final&timeout=30")
                p95 = env["latency"]["p95_ms"]
                print(f"{call_id:<36} {env['status']:<10} {env['turns']:>5} {env['cost']['total']:>10.6f} "
                      f"{'-' if p95 is None else f'{p95:.1f}':>8}  {', '.join(env['sides'])}")
            print(f"\nenvelopes were written under {tmp}/log/calls (removed on exit)")
        finally:
            proc.terminate()
            proc.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
