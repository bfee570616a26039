"""Helpers for the deploy checks: the shipped files, a Dockerfile reader, .dockerignore matching, the
container config made runnable here (binds 0.0.0.0 -> 127.0.0.1, paths -> a temp dir), and a real
OTLP/gRPC capture server standing in for Jaeger."""

from __future__ import annotations

import fnmatch
import re
import shlex
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_HONEYCOMB = ROOT / "docker-compose.honeycomb.yml"
CONTAINER_CONFIG = ROOT / "deploy" / "config" / "container.yaml"
COMPOSE_CONFIG = ROOT / "deploy" / "config" / "compose.yaml"
HONEYCOMB_CONFIG = ROOT / "deploy" / "config" / "compose-honeycomb.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
COLLECTOR_DIR = ROOT / "collector-config"
CONTAINER_LOG_DIR = "/var/lib/otel-patter"
PORTS = {"grpc": 4317, "http": 4318, "admin": 4319}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# -- Dockerfile -------------------------------------------------------------------------------------
@dataclass
class Instruction:
    cmd: str  # upper case
    args: str  # the rest, continuation lines joined
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Comments and blank lines dropped, `\\` continuations joined."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append((start, buf + line))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for n, line in logical:
        cmd, _, args = line.strip().partition(" ")
        ins = Instruction(cmd.upper(), args.strip(), n)
        if ins.cmd == "FROM":
            parts = ins.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if ins.cmd == "ARG":
                k, _, v = ins.args.partition("=")
                global_args[k.strip()] = v.strip()
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def stage_args(global_args: dict[str, str], stage: Stage) -> dict[str, str]:
    out = dict(global_args)
    for ins in stage.all("ARG"):
        k, _, v = ins.args.partition("=")
        out[k.strip()] = v.strip() or global_args.get(k.strip(), "")
    return out


def exec_form(args: str) -> list[str]:
    """JSON exec form (`["a", "b"]`) or shell form (split like sh)."""
    args = args.strip()
    if args.startswith("["):
        return list(yaml.safe_load(args))
    return shlex.split(args)


def env_of(stage: Stage, args: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for token in shlex.split(ins.args):
            k, sep, v = token.partition("=")
            if sep:
                out[k] = expand(v, {**args, **out})
    return out


def copy_sources(stage: Stage) -> list[str]:
    """Build-context sources of COPY/ADD (not `--from=` copies)."""
    out: list[str] = []
    for ins in stage.all("COPY") + stage.all("ADD"):
        words = exec_form(ins.args)
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.extend(words[:-1])
    return out


# -- .dockerignore ----------------------------------------------------------------------------------
def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a pattern matching a parent
    directory matches everything under it."""
    excluded = False
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.strip().strip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(c.split("/")[-1], pat[3:]) or fnmatch.fnmatchcase(c, pat[3:])
                      for c in candidates)
        else:
            hit = any(fnmatch.fnmatchcase(c, pat) for c in candidates)
        if hit:
            excluded = not neg
    return excluded


def dockerignore_patterns() -> list[str]:
    return [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


# -- docker-compose ---------------------------------------------------------------------------------
def compose_unescape(s: str) -> str:
    """What the container sees of a compose string with no variables: `$$` -> `$`."""
    return s.replace("$$", "$")


def env_map(env: Any) -> dict[str, str]:
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    out: dict[str, str] = {}
    for item in env or []:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume entry."""
    out = []
    for v in service.get("volumes") or []:
        parts = v.split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


# -- running the container config here --------------------------------------------------------------
def localize(cfg: dict[str, Any], *, grpc_port: int, http_port: int, admin_port: int, log_dir: Path,
             forward_to: dict[str, str] | None = None) -> dict[str, Any]:
    """The container config as this machine can run it: `0.0.0.0:<std port>` -> `127.0.0.1:<free port>`,
    the container log dir -> `log_dir`, forward targets by name -> local URLs. Everything else is kept.
    Asserts the shape it rewrites, so a config that stops binding 0.0.0.0 or moves the volume fails."""
    out = yaml.safe_load(yaml.safe_dump(cfg))
    otlp = out["receivers"]["otlp"]
    for key, port in (("grpc", grpc_port), ("http", http_port)):
        assert otlp[key]["endpoint"] == f"0.0.0.0:{PORTS[key]}", (key, otlp[key])
        otlp[key]["endpoint"] = f"127.0.0.1:{port}"
    assert out["admin"]["endpoint"] == f"0.0.0.0:{PORTS['admin']}", out["admin"]
    out["admin"]["endpoint"] = f"127.0.0.1:{admin_port}"
    assert out["store"]["log_dir"] == CONTAINER_LOG_DIR, out["store"]
    out["store"]["log_dir"] = str(log_dir)
    for target in out.get("forward") or []:
        if forward_to and target["name"] in forward_to:
            target["endpoint"] = forward_to[target["name"]]
    return out


class CaptureServer:
    """A real OTLP/gRPC trace receiver (opentelemetry-proto's service) on 127.0.0.1: stands in for Jaeger."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        outer = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
                with outer._lock:
                    outer.requests.append(request)
                    outer.headers.append({k: v for k, v in context.invocation_metadata()
                                          if isinstance(v, str)})
                return ExportTraceServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CaptureServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)

    def spans(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(resource attrs, span attrs + name/ids) of every span received."""
        out = []
        with self._lock:
            reqs = list(self.requests)
        for req in reqs:
            for rs in req.resource_spans:
                res = {kv.key: _pb_value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        attrs = {kv.key: _pb_value(kv.value) for kv in sp.attributes}
                        attrs["@name"] = sp.name
                        attrs["@span_id"] = sp.span_id.hex()
                        out.append((res, attrs))
        return out


def _pb_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None
