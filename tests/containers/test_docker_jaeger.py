"""The image end to end, where a Docker engine runs: build the Dockerfile, run it with Jaeger v2 on one
network (the compose setup: deploy/config/compose.yaml, forward to `jaeger:4317`, envelopes on a named
volume), send a simulated call from this machine, then find

- the call's trace in Jaeger through its HTTP query API (:16686/api/traces?service=patter),
- the call's envelope in the volume (read inside the container),
- and a `docker stop` (SIGTERM) ending with exit code 0.

Skipped, saying why, without a Docker engine (`docker info` fails) or without testcontainers. The same path
without Docker runs in the normal suite: tests/deploy/test_deploy_subprocess.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
JAEGER_IMAGE = "jaegertracing/jaeger:2.5.0"  # docker-compose.yml's default JAEGER_VERSION


def _no_engine_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`docker info` did not answer: {e}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"no Docker engine: `docker info` failed: {last}"
    try:
        import testcontainers.core.container  # noqa: F401
    except ImportError:
        return "testcontainers is not installed (it is in the [test] extra)"
    return None


REASON = _no_engine_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _get_json(url: str, timeout: float = 10) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    from testcontainers.core.image import DockerImage

    tag = f"otel-patter:test-{uuid.uuid4().hex[:8]}"
    with DockerImage(path=str(ROOT), tag=tag, clean_up=True) as img:
        yield str(img)


def test_image_with_jaeger_forwards_the_call_and_keeps_its_envelope(image: str) -> None:
    import docker
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    volume = f"otel-patter-test-{uuid.uuid4().hex[:8]}"
    client = docker.from_env()
    with Network() as net:
        jaeger = (DockerContainer(JAEGER_IMAGE).with_env("JAEGER_LISTEN_HOST", "0.0.0.0")
                  .with_network(net).with_network_aliases("jaeger").with_exposed_ports(16686))
        otel = (DockerContainer(image).with_env("OTEL_PATTER_CONFIG", "/etc/otel-patter/compose.yaml")
                .with_volume_mapping(str(ROOT / "deploy" / "config" / "compose.yaml"),
                                     "/etc/otel-patter/compose.yaml", "ro")
                .with_volume_mapping(volume, "/var/lib/otel-patter", "rw")
                .with_network(net).with_network_aliases("otel-patter")
                .with_exposed_ports(4317, 4318, 4319))
        with jaeger:
            jhost = f"http://{jaeger.get_container_host_ip()}:{jaeger.get_exposed_port(16686)}"
            _wait("jaeger query API", lambda: _get_json(f"{jhost}/api/services")[0] == 200, 120)
            otel.start()
            try:
                host = otel.get_container_host_ip()
                admin = f"http://{host}:{otel.get_exposed_port(4319)}"
                _wait("otel-patter /readyz", lambda: _get_json(f"{admin}/readyz")[0] == 200, 120)
                # the image's own HEALTHCHECK (python urllib on /healthz) agrees
                def healthy() -> bool:
                    c = otel.get_wrapped_container()
                    c.reload()
                    return c.attrs["State"].get("Health", {}).get("Status") == "healthy"

                _wait("the image's HEALTHCHECK", healthy, 120)

                otlp_http = f"http://{host}:{otel.get_exposed_port(4318)}"
                r = subprocess.run([sys.executable, "-m", "otel_patter.cli", "simulate", "--calls", "1",
                                    "--no-driver", "--seed", "4242", "--protocol", "http", "--endpoint", otlp_http,
                                    "--json"], capture_output=True, text=True, timeout=120)
                assert r.returncode == 0, r.stderr
                (call,) = json.loads(r.stdout)
                cid = call["call_id"]
                code, env = _get_json(f"{admin}/api/v1/calls/{cid}?wait=final&timeout=60", timeout=90)
                assert code == 200 and env["status"] == "completed", env

                def trace_in_jaeger() -> bool:
                    code, body = _get_json(f"{jhost}/api/traces?service=patter&limit=100&lookback=1h")
                    if code != 200 or not body:
                        return False
                    for trace in body.get("data") or []:
                        for sp in trace["spans"]:
                            tags = {t["key"]: t["value"] for t in sp.get("tags", [])}
                            if cid in (tags.get("patter.call.id"), tags.get("patter.call_id")):
                                return True
                    return False

                _wait(f"call {cid} in Jaeger", trace_in_jaeger, 90)

                # the envelope is on the named volume
                script = ("import glob,json,sys; print(json.dumps([json.load(open(p))['call_id'] for p in "
                          "glob.glob('/var/lib/otel-patter/calls/*/*/*/*/metadata.json')]))")
                res = otel.exec(["python", "-c", script])
                assert res.exit_code == 0, res.output
                assert cid in json.loads(res.output.decode())

                # docker stop sends SIGTERM: serve drains and flushes, exit code 0
                wrapped = otel.get_wrapped_container()
                wrapped.stop(timeout=20)
                assert wrapped.wait(timeout=30)["StatusCode"] == 0, wrapped.logs()[-2000:]
            finally:
                otel.stop()
                with contextlib.suppress(docker.errors.DockerException):
                    client.volumes.get(volume).remove(force=True)
