"""The container's path without Docker: `otel-patter serve` as a subprocess with the very configs the image
and docker-compose.yml use (0.0.0.0 -> 127.0.0.1 on free ports, /var/lib/otel-patter -> a temp dir,
forward target `jaeger` -> a real OTLP/gRPC capture server), fed the way the compose voice agent feeds it.

What only Docker can show (the image builds, the volume is writable by uid 10001, Jaeger v2 stores and
serves the forwarded trace) is tests/containers/test_docker_jaeger.py, skipped where no engine runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from tests.deploy.deploy_files import (
    COMPOSE,
    COMPOSE_CONFIG,
    CONTAINER_CONFIG,
    DOCKERFILE,
    ROOT,
    CaptureServer,
    compose_unescape,
    env_map,
    exec_form,
    load_yaml,
    localize,
    parse_dockerfile,
)
from tests.otlp import post, request, span
from tests.server import ServerProc

VENV_BIN = Path(sys.executable).parent
FORWARDING_BUILT = any(p.stem != "__init__" for p in (ROOT / "otel_patter" / "exporters").glob("*.py"))


def _start(tmp_path: Path, config_file: Path, forward_to: dict[str, str] | None = None) -> ServerProc:
    s = ServerProc(tmp_path)  # free loopback ports, a temp log dir, env without OTEL_*/PATTER_*
    cfg = localize(load_yaml(config_file), grpc_port=s.grpc_port, http_port=s.http_port,
                   admin_port=s.admin_port, log_dir=s.log_dir, forward_to=forward_to)
    s.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return s.start()


def _envelopes(log_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for f in log_dir.glob("calls/*/*/*/*/metadata.json"):
        env = json.loads(f.read_text())
        out[env["call_id"]] = env
    return out


def _wal_span_ids(log_dir: Path) -> set[str]:
    ids: set[str] = set()
    for f in list(log_dir.rglob("spans.jsonl")) + list(log_dir.rglob("pending*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line is never one that was acked
            data = rec.get("data") or {}
            if "span_id" in data:
                ids.add(data["span_id"])
    return ids


def test_container_config_serves_simulated_calls(tmp_path: Path) -> None:
    """The image's config (deploy/config/container.yaml) serves the simulator's calls and writes envelopes;
    the image's HEALTHCHECK command answers 0 against it."""
    s = _start(tmp_path, CONTAINER_CONFIG)
    try:
        # the HEALTHCHECK command of the Dockerfile, with the admin port this test got
        _, stages = parse_dockerfile(DOCKERFILE.read_text())
        (hc,) = stages[-1].all("HEALTHCHECK")
        probe = exec_form(hc.args.split("CMD", 1)[1])
        probe = [sys.executable if probe[0] == "python" else probe[0]] + [
            a.replace("127.0.0.1:4319", f"127.0.0.1:{s.admin_port}") for a in probe[1:]]
        assert subprocess.run(probe, timeout=30).returncode == 0

        # the unit-under-test side only: it hangs up, so each call is final after final_grace (6 s), not after
        # the driver side's idle_timeout (30 s)
        r = subprocess.run([sys.executable, "-m", "otel_patter.cli", "simulate", "--calls", "3", "--seed", "71",
                            "--no-driver", "--protocol", "http", "--endpoint", s.http_endpoint],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        call_ids = sorted({line.split()[0] for line in r.stdout.splitlines() if line.startswith("CA")})
        assert len(call_ids) == 3
        for cid in call_ids:
            env = s.wait_final(cid, timeout=60)
            assert env["status"] == "completed" and env["cost"]["total"] > 0
        on_disk = _envelopes(s.log_dir)
        assert set(call_ids) <= set(on_disk)
        assert all(on_disk[c]["writer"] == "otel-patter" for c in call_ids)
    finally:
        assert s.stop() == 0, s.logs()[-2000:]


def _voice_agent_script(compose: dict[str, Any]) -> tuple[str, dict[str, str]]:
    agent = compose["services"]["voice-agent"]
    assert agent["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = agent["command"]
    return compose_unescape(script), env_map(agent["environment"])


def test_compose_voice_agent_and_compose_config(tmp_path: Path) -> None:
    """docker-compose.yml's voice-agent loop (its exact shell command) against serve with compose.yaml;
    the `jaeger` forward target is a local capture server. Envelopes land in the log dir."""
    compose = load_yaml(COMPOSE)
    script, env = _voice_agent_script(compose)
    with CaptureServer() as jaeger:
        s = _start(tmp_path, COMPOSE_CONFIG, forward_to={"jaeger": jaeger.url})
        try:
            env.update(OTEL_EXPORTER_OTLP_ENDPOINT=s.http_endpoint, SIMULATE_ROUNDS="1", SIMULATE_INTERVAL="0",
                       PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(tmp_path))
            r = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "simulate failed" not in r.stdout, r.stdout + r.stderr
            call_ids = sorted({line.split()[0] for line in r.stdout.splitlines() if line.startswith("CA")})
            assert len(call_ids) == 2
            for cid in call_ids:  # the driver side never hangs up: finalize instead of waiting idle_timeout
                assert s.post(f"/api/v1/calls/{cid}/finalize")[0] in (200, 202)
                assert s.wait_final(cid, timeout=60)["status"] == "completed"
            assert set(call_ids) <= set(_envelopes(s.log_dir))
            if FORWARDING_BUILT:
                deadline = time.monotonic() + 30
                forwarded: set[str] = set()
                while time.monotonic() < deadline and not set(call_ids) <= forwarded:
                    forwarded = {a.get("patter.call_id") or a.get("patter.call.id") for _, a in jaeger.spans()}
                    time.sleep(0.2)
                assert set(call_ids) <= forwarded, "the sanitized spans did not reach the `jaeger` target"
                assert all(res.get("service.name") in ("patter", "otel-patter") for res, _ in jaeger.spans())
        finally:
            assert s.stop() == 0, s.logs()[-2000:]


@pytest.mark.skipif(not FORWARDING_BUILT, reason="forwarding exporters are not built yet (otel_patter/exporters/ "
                                                  "has no exporter module)")
def test_compose_config_forwards_sanitized_spans_to_jaeger(tmp_path: Path) -> None:
    """compose.yaml's `forward: jaeger` delivers the sanitized spans over OTLP/gRPC (capture server as Jaeger)."""
    with CaptureServer() as jaeger:
        s = _start(tmp_path, COMPOSE_CONFIG, forward_to={"jaeger": jaeger.url})
        try:
            cid = "CAfeedfacefeedfacefeedfacefeedface"
            body = request([span("getpatter.tts", {"patter.call.id": cid, "getpatter.tts.text_len": 12,
                                                   "caller": "+1 415 555 0100"})]).SerializeToString()
            assert post(f"{s.http_endpoint}/v1/traces", body)[0] == 200
            deadline = time.monotonic() + 30
            got: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not got:
                got = [a for _, a in jaeger.spans() if a.get("patter.call.id") == cid]
                time.sleep(0.2)
            assert got, "nothing reached the `jaeger` target"
            assert all("+1 415 555 0100" not in json.dumps(a) for _, a in jaeger.spans())
        finally:
            assert s.stop() == 0, s.logs()[-2000:]


# -- SIGTERM under load ---------------------------------------------------------------------------------
class _Load:
    """Senders over gRPC and HTTP, each request one new call of 5 spans; records what was acked."""

    def __init__(self, s: ServerProc) -> None:
        self.s = s
        self.acked: dict[str, set[str]] = {}
        self.refused = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sigterm_sent = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True) for kind in ("grpc", "http")]

    @staticmethod
    def _request(kind: str, i: int) -> tuple[str, set[str], Any]:
        cid = f"CA{'9e9c' if kind == 'grpc' else '4774'}{i:028x}"
        now = time.time_ns()
        spans = [span("getpatter.tts", {"patter.call_id": cid, "patter.side": "uut",
                                        "patter.cost.tts_chars": 20, "patter.tts.provider": "elevenlabs"},
                      start=now - 1_000_000 * k) for k in range(5)]
        return cid, {sp.span_id.hex() for sp in spans}, request(spans)

    def _run(self, kind: str) -> None:
        stub = None
        if kind == "grpc":
            stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.s.grpc_port}"))
        failures_after_sigterm = 0
        for i in range(100_000):  # bounded; ends long before, a few refusals after SIGTERM
            if self.stop.is_set() or failures_after_sigterm > 3:
                break
            cid, ids, req = self._request(kind, i)
            try:
                if stub is not None:
                    stub.Export(req, timeout=5)
                    ok = True
                else:
                    ok = post(f"{self.s.http_endpoint}/v1/traces", req.SerializeToString(), timeout=5)[0] == 200
            except (grpc.RpcError, OSError):
                ok = False
            with self.lock:
                if ok:
                    self.acked[cid] = ids
                    continue
                self.refused += 1
                if not self.sigterm_sent.is_set():
                    self.errors.append(f"{kind} request {i} refused before SIGTERM")
            failures_after_sigterm += 1
            time.sleep(0.05)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_sigterm_mid_load_exits_0_within_timeout_and_loses_nothing_acked(tmp_path: Path) -> None:
    s = _start(tmp_path, CONTAINER_CONFIG)
    timeout = float(load_yaml(CONTAINER_CONFIG)["shutdown_timeout"].rstrip("s"))
    load = _Load(s)
    load.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with load.lock:
            if len(load.acked) >= 60:
                break
        time.sleep(0.02)
    assert s.proc is not None
    load.sigterm_sent.set()
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(timeout + 15)
    elapsed = time.monotonic() - t0
    load.join()
    logs = s.logs()
    assert code == 0, logs[-2000:]
    assert not load.errors, load.errors[:3]
    assert elapsed < timeout, f"took {elapsed:.1f}s (shutdown_timeout {timeout}s)"
    assert re.search(r"SIGTERM: shutting down", logs) and "stopped in" in logs
    acked = dict(load.acked)
    assert len(acked) >= 60

    # every acked span is in the write-ahead log on disk ...
    missing = {cid for cid, ids in acked.items() if not ids <= _wal_span_ids(s.log_dir)}
    assert not missing, f"{len(missing)} acked calls lost spans: {sorted(missing)[:5]}"
    # ... and after a restart every acked call is back, each span counted once
    (tmp_path / "restart").mkdir()
    s2 = ServerProc(tmp_path / "restart")
    cfg = localize(load_yaml(CONTAINER_CONFIG), grpc_port=s2.grpc_port, http_port=s2.http_port,
                   admin_port=s2.admin_port, log_dir=s.log_dir)
    s2.config_path.write_text(yaml.safe_dump(cfg))
    s2.start()
    try:
        sample = sorted(acked)[:: max(1, len(acked) // 25)]
        for cid in sample:
            code, env = s2.get(f"/api/v1/calls/{cid}")
            assert code == 200, (cid, env)
            assert env["counts"]["spans"] == len(acked[cid]), (cid, env["counts"])
    finally:
        assert s2.stop() == 0
