"""A real `otel-patter serve` subprocess for tests: free loopback ports, a temp log dir, kill -9."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from otel_patter.bench import free_port, loopback_config  # one port picker and base config for both


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v


class ServerProc:
    def __init__(self, root: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.log_dir = root / "log"
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        cfg = loopback_config(self.grpc_port, self.http_port, self.admin_port, self.log_dir)
        cfg["rollup"] = {"idle_timeout": "3s", "final_grace": "300ms"}
        deep_merge(cfg, config or {})
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PATTER_"))}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = root / "server.log"
        self.admin_token: str | None = None  # sent as a bearer token on admin requests when set
        self.ssl_context: ssl.SSLContext | None = None  # the admin port speaks HTTPS when set

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 20.0) -> ServerProc:
        err = open(self.stderr_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otel_patter.cli", "serve", "--config", str(self.config_path)],
            stdout=err, stderr=err, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                if self.get("/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready in {timeout}s: {self.logs()[-2000:]}")

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def _open(self, req: urllib.request.Request, timeout: float) -> tuple[int, Any]:
        """(status, JSON body or raw bytes) of one admin request, with the token and TLS context if set."""
        if self.admin_token:
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as r:
                body = r.read()
                return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, Any]:
        return self._open(urllib.request.Request(self.admin_url + path), timeout)

    def post(self, path: str) -> tuple[int, Any]:
        return self._open(urllib.request.Request(self.admin_url + path, method="POST", data=b""), 30)

    def wait_final(self, call_id: str, timeout: float = 30.0) -> dict[str, Any]:
        from urllib.parse import quote

        code, body = self.get(f"/api/v1/calls/{quote(call_id, safe='')}?wait=final&timeout={timeout}",
                              timeout=timeout + 10)
        assert code == 200, (code, body)
        return body

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def envelope_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("calls/*/*/*/*/metadata.json"))
