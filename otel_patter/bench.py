"""`otel-patter bench`: one `serve` process against the floor, with realistic Patter traffic.

What it measures (all in one run, defaults in well under 90 s on a 2-core machine):

- **throughput**: two load processes (one OTLP/gRPC, one OTLP/HTTP protobuf) send pre-encoded
  `ExportTraceServiceRequest` bodies as fast as the server acknowledges them (closed loop). An ack
  means durable (the spans are in their call's WAL), so `spans_per_second` is spans accepted end to
  end. The bodies are what the real OpenTelemetry SDK sends: simulate's span trees played through a
  real `TracerProvider` + `BatchSpanProcessor` (up to 512 spans per request under load), captured,
  encoded once, and re-sent many times with fresh trace ids and call ids per copy (a byte patch, so
  dedupe never drops a copy and the load processes stay cheap).
- **ack latency** p50/p99 at about half of that throughput (open loop, Poisson arrivals; latency
  counts from the intended send time, so a slow server cannot hide its queue), over about
  LATENCY_REQUESTS requests (a p99 of fewer is little more than the maximum); with min/p90/max and the
  server CPU one load request costs (`server_cpu_ms_per_load_request`: no ack comes sooner).
- **CPU**: the server process's own CPU from /proc (every thread), per 1M spans and per span; the
  **floor** is the same payloads in this process: decode only; decode + encode; decode + touch every
  attribute + encode (each the best of FLOOR_ROUNDS rounds). `ratio` = server spans per CPU-second /
  floor (decode+touch+encode) spans per CPU-second.
- **store floor**: the files DESIGN.md asks for a call (its directory, `spans.jsonl` appended once a request
  that carries it, `metadata.json` by temporary file + rename), written with plain `os` calls on the log dir's
  filesystem at the sizes the server wrote: CPU µs a span (`store_floor.cpu_us_per_span`, the kernel's work,
  none of ours); `floor_with_store_spans_per_cpu_second` adds it to the floor, and `ratio_vs_floor_with_store`
  compares the server with that.
- **cpu_ms_per_call**: a quiet 10-turn call (one side, the SDK's 5 s batches: ~9 spans a request)
  from first span to final envelope, server CPU minus its idle CPU.
- **memory**: `idle_rss_mb` (ready, no traffic), `rss_bytes_per_active_call` (RSS delta over N open
  calls / N, in a fresh server), and a scale curve of memory and CPU per call as the open calls grow.
- **restart**: `rebuild_seconds_10k`: a log dir with 10k open calls' WALs + index (the real files of
  the open-calls phase, replicated with fresh ids), then `serve` start to /readyz 200 (accepting, every
  answer exact: a call a request touches is replayed first); `rebuild_complete_seconds_10k`: until the
  last open call is replayed in the background (/readyz stops listing `recovery`).
- `startup_seconds`: process start to /readyz 200. Every server runs with `ulimit -n 1024`; the
  store opens, appends and closes, so 10k open calls hold no file each (`max_open_fds`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = "application/x-protobuf"
TAG_LEN = 8  # ascii hex chars patched into every trace id (its first 8 bytes) and call id (after "CA")
SDK_DELAY_NS = 5_000_000_000  # BatchSpanProcessor schedule_delay: a quiet call flushes every 5 s
LATENCY_REQUESTS = 300  # open-loop requests the latency window aims at (at most 3x --seconds long)
HANGUP_KEYS = ("patter.cost.telephony_minutes", "patter.cost.realtime_minutes")
NOFILE = 1024  # every bench server runs with `ulimit -n 1024`
SCALE_POINTS = (100, 300, 1000, 3000, 10_000)
REBUILD_CALLS = 10_000
FLOOR_ROUNDS = 5  # the floor of each mode: the best of this many rounds
QUIET_CALLS = 50  # 10-turn calls averaged for cpu_ms_per_call
LOAD_CALLS_PER_COPY = 80  # calls in one copy of the load traffic (~2,900 spans)
OPEN_CALLS_PER_COPY = 50  # open calls in one copy of the open-calls traffic
MIB = 1024 * 1024

# tag spaces: each phase sends its own ids (a tag is 2 hex chars of space + 6 of counter)
_SPACE_QUIET, _SPACE_LOAD, _SPACE_LATENCY, _SPACE_OPEN, _SPACE_REBUILD = 0x10, 0x20, 0x30, 0x40, 0x50


def tag(space: int, n: int) -> bytes:
    if not 0 <= n < 1 << 24:
        raise ValueError("tag counter out of range")
    return f"{space:02x}{n:06x}".encode()


# -- payloads ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Payload:
    """One encoded request split at its id slots: `render(tag)` is a fresh copy (one C-level join)."""

    segments: tuple[bytes, ...]
    spans: int

    def render(self, t: bytes) -> bytes:
        return t.join(self.segments)

    @property
    def size(self) -> int:
        return sum(len(s) for s in self.segments) + TAG_LEN * (len(self.segments) - 1)


def _request_ids(body: bytes) -> tuple[int, set[bytes]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    spans = 0
    traces: set[bytes] = set()
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans += 1
                traces.add(s.trace_id)
    return spans, traces


def make_payload(body: bytes, call_ids: Iterable[str]) -> Payload:
    """Find every trace id and call id in `body`; the first 8 bytes of each become a slot."""
    spans, traces = _request_ids(body)
    slots: set[int] = set()
    for tid in traces:
        at = body.find(tid)
        while at != -1:
            slots.add(at)
            at = body.find(tid, at + 1)
    for cid in call_ids:
        needle = cid.encode()
        at = body.find(needle)
        while at != -1:
            slots.add(at + 2)
            at = body.find(needle, at + 1)
    segments: list[bytes] = []
    pos = 0
    for at in sorted(slots):
        if at < pos:
            raise ValueError("overlapping id slots")
        segments.append(body[pos:at])
        pos = at + TAG_LEN
    segments.append(body[pos:])
    payload = Payload(tuple(segments), spans)
    # a rendered copy must carry the tag in every trace id, and nothing else may have moved
    t = b"ffffffff"
    n, got = _request_ids(payload.render(t))
    if n != spans or any(not x.startswith(t) for x in got) or len(got) != len(traces):
        raise ValueError("a rendered payload does not carry its tag in every trace id")
    return payload


class _Capture:
    """A SpanExporter that keeps the SDK's batches (ReadableSpans) instead of sending them."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.batches.append(list(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def sdk_batches(plans: Sequence[Any]) -> list[list[Any]]:
    """The batches the real SDK exports for `plans` (one TracerProvider per side, BatchSpanProcessor)."""
    from otel_patter import simulate

    out: list[list[Any]] = []
    for side in simulate.SIDES:
        mine = [p for p in plans if p.side == side]
        if mine:
            cap = _Capture()
            simulate._play_side(side, mine, cap, False)  # type: ignore[arg-type]
            out += cap.batches
    return out


def encode(spans: Sequence[Any]) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans).SerializeToString()


@dataclass
class Traffic:
    load: list[Payload]  # one copy: LOAD_CALLS_PER_COPY calls (uut side), the SDK's 512-span batches
    load_calls: int
    quiet: list[Payload]  # one quiet 10-turn call (uut side), one request per 5 s of its timeline
    open: list[Payload]  # OPEN_CALLS_PER_COPY calls without their hang-up spans (they stay open)
    open_calls: int


def build_traffic(seed: int) -> Traffic:
    from otel_patter import simulate

    # the unit under test's side only (a production deployment has no driver): calls end by their hang-up usage
    plans = simulate.build_calls(LOAD_CALLS_PER_COPY, shape="0.7", turns=4, seed=seed, with_driver=False)
    ids = sorted({p.call_id for p in plans})
    load = [make_payload(encode(b), ids) for b in sdk_batches(plans)]

    quiet_plans = simulate.build_calls(1, shape="0.7", turns=10, seed=seed + 1, with_driver=False)
    spans = sorted((s for b in sdk_batches(quiet_plans) for s in b), key=lambda s: s.end_time)
    t0 = spans[0].end_time
    windows: dict[int, list[Any]] = {}
    for s in spans:
        windows.setdefault((s.end_time - t0) // SDK_DELAY_NS, []).append(s)
    quiet = [make_payload(encode(w), [quiet_plans[0].call_id]) for _, w in sorted(windows.items())]

    open_plans = simulate.build_calls(OPEN_CALLS_PER_COPY, shape="0.7", turns=4, seed=seed + 2,
                                      with_driver=False)
    open_ids = sorted({p.call_id for p in open_plans})
    batches = [[s for s in b if not any(k in (s.attributes or {}) for k in HANGUP_KEYS)]
               for b in sdk_batches(open_plans)]
    opened = [make_payload(encode(b), open_ids) for b in batches if b]
    return Traffic(load, len(ids), quiet, opened, len(open_ids))


# -- the floor: the same payloads, decoded and encoded in one process ---------------------------------
def touch(req: Any) -> int:
    """Read every attribute (key, value kind and value) and every span and event name; count attributes."""
    n = 0
    for rs in req.resource_spans:
        for kv in rs.resource.attributes:
            v = kv.value
            getattr(v, v.WhichOneof("value") or "string_value"), kv.key
            n += 1
        for ss in rs.scope_spans:
            for kv in ss.scope.attributes:
                v = kv.value
                getattr(v, v.WhichOneof("value") or "string_value"), kv.key
                n += 1
            for s in ss.spans:
                s.name  # noqa: B018
                for kv in s.attributes:
                    v = kv.value
                    getattr(v, v.WhichOneof("value") or "string_value"), kv.key
                    n += 1
                for e in s.events:
                    e.name  # noqa: B018
                    for kv in e.attributes:
                        v = kv.value
                        getattr(v, v.WhichOneof("value") or "string_value"), kv.key
                        n += 1
                for link in s.links:
                    for kv in link.attributes:
                        v = kv.value
                        getattr(v, v.WhichOneof("value") or "string_value"), kv.key
                        n += 1
    return n


def measure_floor(bodies: Sequence[bytes], spans: Sequence[int], seconds: float) -> dict[str, Any]:
    """Spans per CPU-second of this process: decode; decode + encode; decode + touch + encode."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    def decode(b: bytes) -> Any:
        r = ExportTraceServiceRequest()
        r.ParseFromString(b)
        return r

    modes: dict[str, Callable[[bytes], Any]] = {
        "decode": decode,
        "decode_encode": lambda b: decode(b).SerializeToString(),
        "decode_touch_encode": lambda b: (lambda r: (touch(r), r.SerializeToString()))(decode(b)),
    }
    out: dict[str, Any] = {}
    attrs = 0
    for b in bodies:
        attrs += touch(decode(b))
    out["attributes_per_span"] = round(attrs / max(1, sum(spans)), 2)
    # the best of FLOOR_ROUNDS rounds: on a shared VM one round of the same loop varies by up to 2x, and the floor
    # is what the machine can do at best (a slow round would flatter `ratio`). The bench's own heap (the traffic's
    # SDK span objects) is frozen meanwhile: a garbage collection walking it is not part of decoding a request.
    gc.collect()
    gc.freeze()
    try:
        _floor_rounds(modes, bodies, spans, seconds, out)
    finally:
        gc.unfreeze()
    return out


def _floor_rounds(modes: dict[str, Callable[[bytes], Any]], bodies: Sequence[bytes], spans: Sequence[int],
                  seconds: float, out: dict[str, Any]) -> None:
    for name, fn in modes.items():
        best = 0.0
        for _ in range(FLOOR_ROUNDS):
            done = 0
            start = time.process_time()
            while True:
                for b, n in zip(bodies, spans, strict=True):
                    fn(b)
                    done += n
                used = time.process_time() - start
                if used >= seconds / FLOOR_ROUNDS:
                    break
            best = max(best, done / used)
        out[f"{name}_spans_per_cpu_second"] = round(best)


STORE_FLOOR_CALLS = 2000


def load_shape(bodies: Sequence[bytes]) -> tuple[float, float]:
    """Spans a call and requests carrying a call (each one append to its WAL), in the load traffic."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from otel_patter.processors.rollup_state import CALL_ID_KEYS

    trace_call: dict[bytes, str] = {}
    requests: list[list[tuple[bytes, str | None]]] = []
    for b in bodies:
        req = ExportTraceServiceRequest.FromString(b)
        spans = [(s.trace_id, next((kv.value.string_value for kv in s.attributes if kv.key in CALL_ID_KEYS), None))
                 for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        for trace, cid in spans:
            if cid:
                trace_call.setdefault(trace, cid)
        requests.append(spans)
    calls = len(set(trace_call.values())) or 1
    appends = sum(len({cid or trace_call.get(trace) for trace, cid in spans} - {None}) for spans in requests)
    return sum(len(spans) for spans in requests) / calls, appends / calls


def measure_store_floor(root: Path, spans_per_call: float, appends_per_call: float, line_bytes: int,
                        envelope_bytes: int, calls: int = STORE_FLOOR_CALLS) -> float:
    """CPU µs a span that the DESIGN's files cost on `root`'s filesystem with none of our code: per call its
    directory, its `spans.jsonl` created and appended to once a request that carries it, and `metadata.json`
    written once (temporary file + rename), with the sizes the server wrote."""
    day = root / "calls" / "2026" / "01" / "01"
    day.mkdir(parents=True)
    appends = max(1, round(appends_per_call))
    chunk = b"x" * max(1, round(line_bytes * spans_per_call / appends))
    envelope = b"x" * max(1, envelope_bytes)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    start = time.process_time()
    for i in range(calls):
        d = f"{day}/c{i:06d}"
        os.mkdir(d, 0o700)
        for _ in range(appends):
            fd = os.open(f"{d}/spans.jsonl", flags, 0o600)
            os.write(fd, chunk)
            os.close(fd)
        fd = os.open(f"{d}/.tmp.metadata.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.write(fd, envelope)
        os.close(fd)
        os.replace(f"{d}/.tmp.metadata.json", f"{d}/metadata.json")
    used = time.process_time() - start
    shutil.rmtree(root, ignore_errors=True)
    return used / (calls * spans_per_call) * 1e6


def written_sizes(log_dir: Path) -> tuple[int, int]:
    """Average bytes of a WAL line and of an envelope file the server wrote."""
    lines = wal = env = envs = 0
    for f in log_dir.glob("calls/*/*/*/*/spans.jsonl"):
        data = f.read_bytes()
        wal += len(data)
        lines += data.count(b"\n")
    for f in log_dir.glob("calls/*/*/*/*/metadata.json"):
        env += f.stat().st_size
        envs += 1
    return round(wal / max(1, lines)), round(env / max(1, envs))


# -- the server under test ----------------------------------------------------------------------------
def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_port_rng = random.Random()


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range when there is room: a port the kernel handed
    out (bind to 0) can be taken by any outgoing connection before the server binds it, or between its restarts."""
    low = _ephemeral_low()
    if low > 12_000:
        for _ in range(50):
            port = _port_rng.randrange(10_000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_config(grpc_port: int, http_port: int, admin_port: int, log_dir: Path) -> dict[str, Any]:
    """A `serve` config on 127.0.0.1 ports and a log dir: the base of the bench's servers and the tests'."""
    return {
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                               "http": {"endpoint": f"127.0.0.1:{http_port}"}}},
        "admin": {"endpoint": f"127.0.0.1:{admin_port}"},
        "store": {"log_dir": str(log_dir)},
    }


def _limit_files() -> None:  # pragma: no cover - runs in the child between fork and exec
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of every thread of `pid`, live and exited."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_ns(pid: int) -> int:
    """Nanosecond CPU time of the live threads of `pid` (schedstat), for short windows."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat", "rb") as fh:
            total += int(fh.read().split()[0])
    return total


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class BenchServer:
    """A `otel-patter serve` subprocess on free loopback ports, with `ulimit -n 1024`."""

    def __init__(self, root: Path, log_dir: Path | None = None, rollup: dict[str, str] | None = None) -> None:
        import yaml

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.log_dir = log_dir or root / "log"
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        cfg = loopback_config(self.grpc_port, self.http_port, self.admin_port, self.log_dir)
        cfg["log_level"] = "warning"
        if rollup:
            cfg["rollup"] = rollup
        self.config_path = root / f"config-{self.admin_port}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.max_fds = 0
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 120.0) -> float:
        """Start; seconds from process start to /readyz 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PATTER_"))}
        err = open(self.root / f"server-{self.admin_port}.log", "ab")  # noqa: SIM115 - the child owns it
        t0 = self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otel_patter.cli", "serve", "--config", str(self.config_path)],
            stdout=err, stderr=err, env=env, preexec_fn=_limit_files)
        err.close()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench server exited {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                with urllib.request.urlopen(self.admin_url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.005)
        raise RuntimeError(f"bench server not ready in {timeout}s")

    def recovered(self, timeout: float = 300.0) -> float:
        """Seconds from process start until /readyz no longer lists `recovery` (every open call replayed)."""
        while time.perf_counter() - self.started_at < timeout:
            status, body = self.get_json("/readyz")
            if status == 200 and "recovery" not in (body or {}).get("checks", {}):
                return time.perf_counter() - self.started_at
            time.sleep(0.02)
        raise RuntimeError(f"bench server still recovering after {timeout}s")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.root.glob("server-*.log"))

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def idle_cpu_rate(self, seconds: float) -> float:
        """CPU seconds per second while nothing is sent, over `seconds`, in nanosecond CPU (schedstat): a short
        window of /proc clock ticks reads 0 % or 1 %, and that error, subtracted over a later window, would be
        milliseconds per call."""
        c0, w0 = proc_cpu_ns(self.pid), time.perf_counter()
        time.sleep(seconds)
        return (proc_cpu_ns(self.pid) - c0) / 1e9 / (time.perf_counter() - w0)

    def rss(self) -> int:
        return proc_rss_bytes(self.pid)

    def sample_fds(self) -> int:
        self.max_fds = max(self.max_fds, proc_fds(self.pid))
        return self.max_fds

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample family on /metrics (0 when absent)."""
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        total = 0.0
        pat = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.M)
        for m in pat.finditer(text):
            total += float(m.group(1))
        return total

    def get_json(self, path: str, timeout: float = 60.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()


# -- clients ----------------------------------------------------------------------------------------
class Client:
    """Sends raw ExportTraceServiceRequest bytes; `send` returns spans rejected (raises on refusal)."""

    def __init__(self, protocol: str, target: str) -> None:
        self.protocol = protocol
        self.target = target
        self._local = threading.local()
        if protocol == "grpc":
            import grpc

            self._channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * MIB)])
            self._export = self._channel.unary_unary(TRACE_METHOD)
        self._conns: list[Any] = []

    def _http(self) -> Any:
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None:
            host, _, port = self.target.rpartition(":")
            conn = self._local.conn = http.client.HTTPConnection(host, int(port), timeout=60)
            self._conns.append(conn)
        return conn

    def send(self, body: bytes) -> int:
        if self.protocol == "grpc":
            raw = self._export(body, timeout=60)
        else:
            conn = self._http()
            try:
                conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": PROTOBUF})
                resp = conn.getresponse()
                raw = resp.read()
            except OSError:
                conn.close()
                self._local.conn = None
                raise
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
        if not raw:
            return 0
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        r = ExportTraceServiceResponse()
        r.ParseFromString(raw)
        return int(r.partial_success.rejected_spans)

    def close(self) -> None:
        if self.protocol == "grpc":
            self._channel.close()
        for c in self._conns:
            c.close()


class _Copies:
    """Fresh copies of a payload list, one request at a time, safe across threads."""

    def __init__(self, payloads: Sequence[Payload], space: int, start: int = 0) -> None:
        self.payloads = payloads
        self.space = space
        self.n = start * len(payloads)
        self.lock = threading.Lock()

    def next(self) -> tuple[bytes, int]:
        with self.lock:
            copy, i = divmod(self.n, len(self.payloads))
            self.n += 1
        p = self.payloads[i]
        return p.render(tag(self.space, copy)), p.spans


def _closed_loop(client: Client, copies: _Copies, concurrency: int, start_at: float, stop_at: float
                 ) -> list[tuple[float, float, int, int]]:
    """(done time, latency s, spans acked, failed spans) of every request."""
    out: list[tuple[float, float, int, int]] = []
    lock = threading.Lock()

    def run() -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            body, spans = copies.next()
            t = time.time()
            try:
                rejected = client.send(body)
                rec = (time.time(), time.time() - t, spans - rejected, rejected)
            except Exception:  # a refusal or a transport error: counted, never acked
                rec = (time.time(), time.time() - t, 0, spans)
            with lock:
                out.append(rec)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def _open_loop(client: Client, copies: _Copies, rate: float, start_at: float, stop_at: float, seed: int
               ) -> list[tuple[float, float, int, int]]:
    """Poisson arrivals at `rate` requests/s; latency counts from each request's intended send time."""
    from concurrent.futures import ThreadPoolExecutor

    out: list[tuple[float, float, int, int]] = []
    lock = threading.Lock()
    rng = random.Random(seed)

    def one(intended: float, body: bytes, spans: int) -> None:
        try:
            rejected = client.send(body)
            rec = (time.time(), time.time() - intended, spans - rejected, rejected)
        except Exception:
            rec = (time.time(), time.time() - intended, 0, spans)
        with lock:
            out.append(rec)

    with ThreadPoolExecutor(max_workers=32) as pool:
        t = start_at
        while True:
            t += rng.expovariate(rate)
            if t >= stop_at:
                break
            body, spans = copies.next()
            delay = t - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, t, body, spans)
    return out


def _worker_main(idx: int, protocol: str, target: str, load: list[Payload], conn: Any) -> None:
    """A load process: runs the commands the bench sends it, answers with its request records."""
    client = Client(protocol, target)
    spaces = {"closed": _SPACE_LOAD + idx, "open": _SPACE_LATENCY + idx}
    copies = {k: _Copies(load, v) for k, v in spaces.items()}
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        try:
            if cmd[0] == "closed":
                _, concurrency, start_at, stop_at = cmd
                conn.send(_closed_loop(client, copies["closed"], concurrency, start_at, stop_at))
            else:
                _, rate, start_at, stop_at = cmd
                conn.send(_open_loop(client, copies["open"], rate, start_at, stop_at, seed=idx))
        except Exception as e:  # report, never hang the bench
            conn.send(e)
    client.close()


class LoadProcesses:
    """Two load processes (gRPC and HTTP), each driven by commands over a pipe."""

    def __init__(self, grpc_target: str | None, http_target: str | None, load: list[Payload]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold grpc threads
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        targets = [(p, t) for p, t in (("grpc", grpc_target), ("http", http_target)) if t]
        if len(targets) == 1:
            targets = targets * 2
        for i, (protocol, target) in enumerate(targets):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(i, protocol, target, load, child), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)
        for c in self.conns:
            if not c.poll(120):
                raise RuntimeError("a load process did not start")
            c.recv()
        self.protocols = [p for p, _ in targets]

    def run(self, cmds: list[tuple[Any, ...]]) -> list[list[tuple[float, float, int, int]]]:
        for c, cmd in zip(self.conns, cmds, strict=True):
            c.send(cmd)
        out = []
        for c in self.conns:
            r = c.recv()
            if isinstance(r, Exception):
                raise r
            out.append(r)
        return out

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(("stop",))
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _window(records: Iterable[tuple[float, float, int, int]], t0: float, t1: float
            ) -> tuple[int, int, int, list[float]]:
    """(requests, spans acked, spans failed, latencies) of requests done within [t0, t1]."""
    reqs = acked = failed = 0
    lat: list[float] = []
    for done, latency, ok, bad in records:
        if t0 <= done <= t1:
            reqs += 1
            acked += ok
            failed += bad
            lat.append(latency)
    return reqs, acked, failed, lat


# -- phases -----------------------------------------------------------------------------------------
def _send_all(client: Client, bodies: Iterable[tuple[bytes, int]], concurrency: int = 2) -> tuple[int, int]:
    """Send every body (up to `concurrency` in flight); (spans acked, spans failed)."""
    it = iter(bodies)
    lock = threading.Lock()
    totals = [0, 0]

    def run() -> None:
        while True:
            with lock:
                nxt = next(it, None)
            if nxt is None:
                return
            body, spans = nxt
            try:
                rejected = client.send(body)
                ok, bad = spans - rejected, rejected
            except Exception:
                ok, bad = 0, spans
            with lock:
                totals[0] += ok
                totals[1] += bad

    threads = [threading.Thread(target=run, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return totals[0], totals[1]


def quiet_calls_bodies(traffic: Traffic, calls: int) -> tuple[list[tuple[bytes, int]], list[str]]:
    """`calls` quiet calls played side by side: request k of every call, then request k + 1, ...; and their ids in
    that order (the last one's last request is sent last, so it is the last to end)."""
    bodies = []
    for k, p in enumerate(traffic.quiet):
        for c in range(calls):
            bodies.append((p.render(tag(_SPACE_QUIET, c)), p.spans))
        del k
    ids = []
    for c in range(calls):
        body = traffic.quiet[0].render(tag(_SPACE_QUIET, c))
        m = re.search(rb"CA[0-9a-f]{32}", body)
        assert m is not None
        ids.append(m.group().decode())
    if len(set(ids)) != calls:
        raise ValueError("quiet calls share a call id")
    return bodies, ids


def open_calls_bodies(traffic: Traffic, first_copy: int, copies: int) -> Iterable[tuple[bytes, int]]:
    for c in range(first_copy, first_copy + copies):
        t = tag(_SPACE_OPEN, c)
        for p in traffic.open:
            yield p.render(t), p.spans


def replicate_log_dir(log_dir: Path, want: int) -> int:
    """Add copies of the open calls in `log_dir` (fresh call and trace ids) until `want` are open."""
    from otel_patter.store.envelope_store import EnvelopeStore, dumps

    store = EnvelopeStore(log_dir)
    index = {cid: e for cid, e in store.read_index().items() if e.get("open", True)}
    have = len(index)
    if have == 0 or have >= want:
        return have
    sources = []
    for cid, e in index.items():
        m = re.match(r"CA([0-9a-f]{8})", cid)
        if m is None:
            continue
        old = m.group(1).encode()
        sources.append((cid, e, old, (log_dir / e["dir"] / "spans.jsonl").read_bytes()))
    lines: list[str] = []
    n = 0
    while have + n < want:
        for cid, e, old, wal in sources:
            if have + n >= want:
                break
            new = tag(_SPACE_REBUILD, n)  # unique per new call: sources of different copies share the rest
            new_cid = cid.replace(old.decode(), new.decode(), 1)
            new_dir = e["dir"].replace(cid, new_cid)
            d = log_dir / new_dir
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            data = wal.replace(old, new).replace(old.hex().encode(), new.hex().encode())
            fd = os.open(d / "spans.jsonl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            lines.append(dumps({"id": new_cid, "dir": new_dir, "open": True, "revision": 1}))
            n += 1
    with open(store.index_path, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return have + n


def open_calls_phase(server: BenchServer, traffic: Traffic, points: Sequence[int], log: Callable[[str], None]
                     ) -> list[dict[str, Any]]:
    """Open calls in steps; at each point: RSS per call over the idle RSS, marginal CPU per call (each step's
    CPU includes its calls' first envelope writes, ENVELOPE_DEBOUNCE_S after they opened, less idle CPU)."""
    from otel_patter.processors.rollup import ENVELOPE_DEBOUNCE_S

    client = Client("grpc", f"127.0.0.1:{server.grpc_port}")
    time.sleep(1.0)
    base_rss = server.rss()
    idle_rate = server.idle_cpu_rate(1.0)
    per_copy = traffic.open_calls
    sent_copies = 0
    cpu_prev, wall_prev = server.cpu(), time.perf_counter()
    calls_prev = 0
    rss_prev = base_rss
    curve = []
    try:
        for point in points:
            copies = max(0, math.ceil(point / per_copy) - sent_copies)
            acked, failed = _send_all(client, open_calls_bodies(traffic, sent_copies, copies))
            if failed:
                raise RuntimeError(f"open-calls phase: {failed} spans refused")
            sent_copies += copies
            calls = sent_copies * per_copy
            # every open call's first envelope is written once its debounce has passed: wait for it (reading
            # /metrics rarely: a scrape of 10k calls' metrics is CPU of its own)
            time.sleep(ENVELOPE_DEBOUNCE_S + 0.5)
            deadline = time.perf_counter() + 60
            while server.metric("otel_patter_envelope_writes_total") < calls and time.perf_counter() < deadline:
                time.sleep(1.0)
            cpu, wall = server.cpu(), time.perf_counter()
            cpu -= idle_rate * (wall - wall_prev)
            server.sample_fds()
            rss = server.rss()
            curve.append({"open_calls": calls, "rss_mb": round(rss / MIB, 1),
                          "rss_bytes_per_call": round((rss - base_rss) / calls),
                          # what the calls of this step added each: flat when memory grows linearly with calls
                          "rss_bytes_per_call_marginal": round((rss - rss_prev) / max(1, calls - calls_prev)),
                          "cpu_ms_per_call": round((cpu - cpu_prev) * 1000 / max(1, calls - calls_prev), 3),
                          "spans_acked": acked})
            log(f"  {calls} open calls: RSS {rss / MIB:.1f} MiB, {(rss - base_rss) / calls:.0f} B/call, "
                f"{curve[-1]['cpu_ms_per_call']} ms CPU/call")
            cpu_prev, wall_prev, calls_prev, rss_prev = server.cpu(), time.perf_counter(), calls, rss
    finally:
        client.close()
    return curve


# -- the PNG plot (pure Python: zlib + struct) ----------------------------------------------------------
_FONT = {  # 3x5 digits and a few letters, rows top to bottom, 3 bits each
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "k": (4, 5, 6, 5, 5),
    "B": (6, 5, 6, 5, 6), "m": (0, 0, 7, 7, 5), "s": (0, 3, 6, 1, 6), "/": (1, 1, 2, 4, 4),
    "c": (0, 3, 4, 4, 3), "a": (0, 6, 3, 5, 7), "l": (6, 2, 2, 2, 7), "C": (3, 4, 4, 4, 3),
    "P": (6, 5, 6, 4, 4), "U": (5, 5, 5, 5, 7), "R": (6, 5, 6, 5, 5), "S": (3, 4, 2, 1, 6),
    "o": (0, 2, 5, 5, 2), "p": (0, 6, 5, 6, 4), "e": (0, 2, 7, 4, 3), "n": (0, 6, 5, 5, 5),
    "r": (0, 5, 6, 4, 4), "t": (2, 7, 2, 2, 1), " ": (0, 0, 0, 0, 0), "-": (0, 0, 7, 0, 0),
    "(": (1, 2, 2, 2, 1), ")": (4, 2, 2, 2, 4), "i": (2, 0, 2, 2, 2), "y": (5, 5, 3, 1, 6),
    "x": (0, 5, 2, 5, 5), "g": (3, 5, 3, 1, 6), "M": (5, 7, 7, 5, 5), "b": (4, 6, 5, 5, 6),
    "u": (0, 5, 5, 5, 3), "d": (1, 3, 5, 5, 3), "f": (3, 4, 6, 4, 4), "h": (4, 6, 5, 5, 5),
    "v": (0, 5, 5, 5, 2), "w": (0, 5, 5, 7, 5), "E": (7, 4, 6, 4, 7), "L": (4, 4, 4, 4, 7),
    "A": (2, 5, 7, 5, 5), "N": (6, 5, 5, 5, 5), "T": (7, 2, 2, 2, 2), "I": (7, 2, 2, 2, 7),
    ",": (0, 0, 0, 2, 4), ":": (0, 2, 0, 2, 0), "=": (0, 7, 0, 7, 0), "<": (1, 2, 4, 2, 1),
}


class Canvas:
    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(rgb)

    def line(self, x0: float, y0: float, x1: float, y1: float, rgb: tuple[int, int, int], width: int = 1) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for i in range(steps + 1):
            x = round(x0 + (x1 - x0) * i / steps)
            y = round(y0 + (y1 - y0) * i / steps)
            for dx in range(-(width // 2), width - width // 2):
                for dy in range(-(width // 2), width - width // 2):
                    self.dot(x + dx, y + dy, rgb)

    def text(self, x: int, y: int, s: str, rgb: tuple[int, int, int] = (0, 0, 0), scale: int = 2) -> None:
        for ch in s:
            rows = _FONT.get(ch, _FONT[" "])
            for r, bits in enumerate(rows):
                for c in range(3):
                    if bits & (4 >> c):
                        for dx in range(scale):
                            for dy in range(scale):
                                self.dot(x + c * scale + dx, y + r * scale + dy, rgb)
            x += 4 * scale

    def png(self) -> bytes:
        import struct
        import zlib

        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def plot_scale(curve: Sequence[dict[str, Any]], path: Path) -> None:
    """Two panels over open calls (log x): RSS bytes per call, and server CPU ms per call."""
    c = Canvas(900, 420)
    xs = [p["open_calls"] for p in curve]
    panels = (("RSS B/call", "rss_bytes_per_call", (31, 119, 180), 8192, "8192"),
              ("CPU ms/call", "cpu_ms_per_call", (214, 39, 40), None, ""))
    for k, (title, key, rgb, target, target_label) in enumerate(panels):
        left, top, w, h = 70 + k * 450, 40, 340, 300
        ys = [float(p[key]) for p in curve]
        # the RSS panel also shows each step's own calls (lighter): the average above carries the fixed start-up
        extra = [max(0.0, float(p.get("rss_bytes_per_call_marginal", 0))) for p in curve] if k == 0 else []
        ymax = _nice_max(max(ys + extra + ([target] if target else [])) * 1.1)
        c.line(left, top + h, left + w, top + h, (0, 0, 0))
        c.line(left, top, left, top + h, (0, 0, 0))
        c.text(left, 12, title, scale=3)
        for i in range(5):
            yv = ymax * i / 4
            y = top + h - h * i / 4
            c.line(left - 5, y, left, y, (0, 0, 0))
            c.line(left + 1, y, left + w, y, (225, 225, 225))
            label = _fmt(round(yv, 3))
            c.text(left - 8 - 8 * len(label), int(y) - 5, label)
        lo, hi = math.log10(min(xs) if xs else 100), math.log10(max(xs) if xs else 10_000)
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1

        def px(x: float, lo: float = lo, hi: float = hi, left: int = left, w: int = w) -> float:
            return left + w * (math.log10(x) - lo) / (hi - lo)

        def py(y: float, ymax: float = ymax, top: int = top, h: int = h) -> float:
            return top + h - h * min(y, ymax) / ymax

        for x in xs:
            c.line(px(x), top + h, px(x), top + h + 5, (0, 0, 0))
            label = _fmt(x)
            c.text(int(px(x)) - 4 * len(label), top + h + 10, label)
        c.text(left + w // 2 - 40, top + h + 32, "open calls")
        if target:
            for xx in range(left, left + w, 8):
                c.line(xx, py(target), xx + 3, py(target), (120, 120, 120))
            c.text(left + w - 8 * len(target_label) - 40, int(py(target)) - 14, "< " + target_label, (90, 90, 90))
        if extra:
            light = (150, 190, 225)
            marg = [(px(x), py(y)) for x, y in zip(xs, extra, strict=True)]
            for (x0, y0), (x1, y1) in itertools.pairwise(marg):
                c.line(x0, y0, x1, y1, light, width=2)
            for x, y in marg:
                c.line(x - 4, y - 4, x + 4, y + 4, light, width=2)
                c.line(x - 4, y + 4, x + 4, y - 4, light, width=2)
            c.text(left + 10, top + 8, "average", rgb)
            c.text(left + 10, top + 22, "x step (marginal)", light)
        pts = [(px(x), py(y)) for x, y in zip(xs, ys, strict=True)]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            c.line(x0, y0, x1, y1, rgb, width=3)
        for x, y in pts:
            for dx in range(-4, 5):
                for dy in range(-4, 5):
                    if dx * dx + dy * dy <= 16:
                        c.dot(int(x) + dx, int(y) + dy, rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(c.png())


# -- the run ----------------------------------------------------------------------------------------
def run_bench(seconds: float = 10.0, calls: int = 2000, *, endpoint: str | None = None,
              http_endpoint: str | None = None, rebuild_calls: int = REBUILD_CALLS, scale: bool = False,
              plot: Path | None = None, seed: int | None = None, workdir: Path | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    seed = random.SystemRandom().randrange(1 << 30) if seed is None else seed
    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="otel-patter-bench-", dir=workdir))
    out: dict[str, Any] = {"seconds": seconds, "calls": calls, "cpus": os.cpu_count()}
    try:
        traffic = build_traffic(seed)
        load_spans = sum(p.spans for p in traffic.load)
        out["load_spans_per_request"] = round(load_spans / len(traffic.load), 1)
        out["quiet_spans_per_request"] = round(sum(p.spans for p in traffic.quiet) / len(traffic.quiet), 1)
        out["load_request_bytes"] = round(sum(p.size for p in traffic.load) / len(traffic.load))
        log(f"traffic: {len(traffic.load)} requests, {load_spans} spans of {traffic.load_calls} calls per copy "
            f"({out['load_spans_per_request']} spans/request); quiet call {out['quiet_spans_per_request']}"
            " spans/request")
        floor_bodies = [p.render(tag(0x01, 0)) for p in traffic.load]
        floor_spans = [p.spans for p in traffic.load]
        floor_seconds = max(0.5, min(2.0, seconds / 5))

        server: BenchServer | None = None
        if endpoint is None and http_endpoint is None:
            server = BenchServer(root / "a")
            out["startup_seconds"] = round(server.start(), 3)
            server.sample_fds()
            time.sleep(1.0)
            idle_cpu_rate = server.idle_cpu_rate(2.0)  # subtracted over the quiet calls' window below
            out["idle_rss_mb"] = round(server.rss() / MIB, 1)
            out["idle_cpu_percent"] = round(idle_cpu_rate * 100, 3)
            grpc_target = f"127.0.0.1:{server.grpc_port}"
            http_target = f"127.0.0.1:{server.http_port}"
            log(f"server: ready in {out['startup_seconds']} s, idle RSS {out['idle_rss_mb']} MiB")
        else:
            grpc_target = endpoint.split("://", 1)[-1] if endpoint else None
            http_target = http_endpoint.split("://", 1)[-1].split("/", 1)[0] if http_endpoint else None

        # 1. a quiet 10-turn call, end to end (and the floor while its final grace runs)
        if server is not None:
            bodies, ids = quiet_calls_bodies(traffic, QUIET_CALLS)
            client = Client("http", http_target or "")
            fin0 = server.metric("otel_patter_calls_finalized_total")
            cpu0, wall0 = server.cpu(), time.perf_counter()
            _, failed = _send_all(client, bodies, concurrency=1)
            client.close()
            floor = measure_floor(floor_bodies, floor_spans, floor_seconds)
            # the calls end in the order they were sent: once the last is final (one long poll), all are. The CPU is
            # read before any other request: polling /metrics every second would charge its ~1 ms a scrape to the calls
            server.get_json(f"/api/v1/calls/{ids[-1]}?wait=final&timeout=60", timeout=90)
            cpu = server.cpu() - cpu0 - idle_cpu_rate * (time.perf_counter() - wall0)
            deadline = time.perf_counter() + 90
            while server.metric("otel_patter_calls_finalized_total") - fin0 < len(ids):
                if time.perf_counter() > deadline:
                    raise RuntimeError("quiet calls: not every call was finalized within 90 s")
                time.sleep(0.5)
            for cid in ids:
                server.get_json(f"/api/v1/calls/{cid}?wait=final&timeout=60", timeout=90)
            out["cpu_ms_per_call"] = round(cpu * 1000 / len(ids), 3)
            out["quiet_call_spans"] = sum(p.spans for p in traffic.quiet)
            if failed:
                raise RuntimeError(f"quiet calls: {failed} spans refused")
            log(f"quiet 10-turn call: {out['cpu_ms_per_call']} ms server CPU per call")
        else:
            floor = measure_floor(floor_bodies, floor_spans, floor_seconds)
        out["floor"] = floor
        out["floor_spans_per_second"] = floor["decode_touch_encode_spans_per_cpu_second"]
        if server is not None:  # what the files every call needs cost by themselves, on the log dir's filesystem
            spans_per_call, appends_per_call = load_shape(floor_bodies)
            line_bytes, envelope_bytes = written_sizes(server.log_dir)
            us = measure_store_floor(root / "store-floor", spans_per_call, appends_per_call, line_bytes,
                                     envelope_bytes)
            out["store_floor"] = {"cpu_us_per_span": round(us, 2), "spans_per_call": round(spans_per_call, 1),
                                  "appends_per_call": round(appends_per_call, 2), "wal_line_bytes": line_bytes,
                                  "envelope_bytes": envelope_bytes}
            out["floor_with_store_spans_per_cpu_second"] = round(1e6 / (1e6 / out["floor_spans_per_second"] + us))
            log(f"store floor: {out['store_floor']}")
        log(f"floor: {floor}")

        # 2. throughput (closed loop) and 3. latency at half of it (open loop), from two load processes
        loaders = LoadProcesses(grpc_target, http_target, traffic.load)
        try:
            out["load_protocols"] = loaders.protocols
            warm = min(1.5, seconds / 4)
            start_at = time.time() + 0.3
            t0, t1 = start_at + warm, start_at + warm + seconds
            stop_at = t1
            cmds: list[tuple[Any, ...]] = [("closed", 4, start_at, stop_at)] * len(loaders.conns)
            box: dict[str, Any] = {}

            def sample() -> None:
                if server is None:
                    return
                time.sleep(max(0.0, t0 - time.time()))
                box["cpu0"], box["env0"] = server.cpu(), server.metric("otel_patter_envelope_writes_total")
                box["fin0"] = server.metric("otel_patter_calls_finalized_total")
                time.sleep(max(0.0, t1 - time.time()))
                box["cpu1"], box["env1"] = server.cpu(), server.metric("otel_patter_envelope_writes_total")
                box["fin1"] = server.metric("otel_patter_calls_finalized_total")
                server.sample_fds()
                box["rss"] = server.rss()

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            results = loaders.run(cmds)
            sampler.join()
            reqs, acked, failed, lat = _window((r for rs in results for r in rs), t0, t1)
            sps = acked / seconds
            out["spans_per_second"] = round(sps)
            out["requests_per_second"] = round(reqs / seconds, 1)
            out["spans_failed"] = failed
            out["closed_loop_p50_ack_ms"] = round(percentile(lat, 0.5) * 1000, 2)
            out["closed_loop_p99_ack_ms"] = round(percentile(lat, 0.99) * 1000, 2)
            if server is not None:
                cpu = box["cpu1"] - box["cpu0"]
                out["server_cpu_seconds"] = round(cpu, 3)
                out["server_cpu_percent"] = round(cpu / seconds * 100, 1)
                out["cpu_seconds_per_million_spans"] = round(cpu / max(1, acked) * 1e6, 2)
                out["server_spans_per_cpu_second"] = round(acked / cpu) if cpu > 0 else None
                out["server_cpu_ms_per_load_request"] = round(cpu / max(1, reqs) * 1000, 2)
                out["ratio"] = round(acked / cpu / out["floor_spans_per_second"], 3) if cpu > 0 else None
                if "floor_with_store_spans_per_cpu_second" in out and cpu > 0:
                    out["ratio_vs_floor_with_store"] = round(acked / cpu / out["floor_with_store_spans_per_cpu_second"],
                                                             3)
                out["envelope_writes_per_second"] = round((box["env1"] - box["env0"]) / seconds, 1)
                out["calls_finalized_per_second"] = round((box["fin1"] - box["fin0"]) / seconds, 1)
                out["rss_mb_under_load"] = round(box["rss"] / MIB, 1)
            log(f"throughput: {out['spans_per_second']} spans/s acked ({reqs} requests, {failed} spans failed); "
                f"ratio {out.get('ratio')}")

            target = sps / 2
            rate = target / out["load_spans_per_request"] / len(loaders.conns)
            lat_warm = min(1.0, seconds / 4)
            lat_window = max(2.0, seconds * 0.6, min(3 * seconds, LATENCY_REQUESTS / (rate * len(loaders.conns))))
            start_at = time.time() + 0.3
            t0, t1 = start_at + lat_warm, start_at + lat_warm + lat_window
            results = loaders.run([("open", rate, start_at, t1)] * len(loaders.conns))
            # by intended send time: requests meant for the window, however late they were answered
            reqs, acked, failed, lat = _window(((d - lt, lt, ok, bad) for rs in results for d, lt, ok, bad in rs),
                                               t0, t1)
            out["latency_target_spans_per_second"] = round(target)
            out["latency_spans_per_second"] = round(acked / (t1 - t0))
            for name, q in (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
                out[f"{name}_ack_ms"] = round(percentile(lat, q) * 1000, 2)
            out["latency_requests"] = reqs
            log(f"latency at {out['latency_spans_per_second']} spans/s: p50 {out['p50_ack_ms']} ms, "
                f"p99 {out['p99_ack_ms']} ms (min {out['min_ack_ms']}, max {out['max_ack_ms']}, {reqs} requests)")
        finally:
            loaders.close()
        if server is not None:
            server.stop()
            shutil.rmtree(server.log_dir, ignore_errors=True)

        # 4. open calls: RSS and CPU per call as they grow; 5. restart with 10k open calls
        if endpoint is None and http_endpoint is None:
            points = sorted({p for p in (SCALE_POINTS if scale else ()) if p <= calls}
                            | {p for p in SCALE_POINTS if p < calls} | {calls})
            b = BenchServer(root / "b", rollup={"idle_timeout": "10m"})
            b.start()
            try:
                curve = open_calls_phase(b, traffic, points, log)
            finally:
                b.sample_fds()
                b.kill9()
            out["scale"] = curve
            out["rss_bytes_per_active_call"] = curve[-1]["rss_bytes_per_call"]
            out["open_calls"] = curve[-1]["open_calls"]
            t = time.perf_counter()
            open_now = replicate_log_dir(b.log_dir, rebuild_calls)
            log(f"rebuild: {open_now} open calls on disk ({time.perf_counter() - t:.1f} s to build)")
            c = BenchServer(root / "c", log_dir=b.log_dir, rollup={"idle_timeout": "10m"})
            try:
                suffix = "_10k" if rebuild_calls == REBUILD_CALLS else ""
                out[f"rebuild_seconds{suffix}"] = round(c.start(), 3)
                out[f"rebuild_complete_seconds{suffix}"] = round(c.recovered(), 3)
                out["rebuild_calls"] = open_now
                out["rebuild_calls_open"] = int(c.metric("otel_patter_calls_open"))
                c.sample_fds()
                out["rss_mb_after_rebuild"] = round(c.rss() / MIB, 1)
            finally:
                c.kill9()
            out["max_open_fds"] = max(b.max_fds, c.max_fds, server.max_fds if server else 0)
            out["nofile_limit"] = NOFILE
            log(f"restart with {open_now} open calls: ready in {out.get('rebuild_seconds_10k')} s")
            if plot is not None:
                plot_scale(curve, plot)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    return out


# -- CLI ----------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="throughput, latency, CPU and memory of one serve process vs the floor")
    p.add_argument("--seconds", type=float, default=10.0, help="throughput window (default 10)")
    p.add_argument("--calls", type=int, default=2000, help="open calls for RSS per active call (default 2000)")
    p.add_argument("--rebuild-calls", type=int, default=REBUILD_CALLS, help="open calls for the restart (10000)")
    p.add_argument("--endpoint", default=None, help="target a running server's OTLP/gRPC host:port (no spawn)")
    p.add_argument("--http-endpoint", default=None, help="and/or its OTLP/HTTP host:port")
    p.add_argument("--scale", action="store_true", help="scale curve from 100 to 10,000 open calls")
    p.add_argument("--plot", default=None, help="write the scale curve as a PNG here")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.calls < 1 or args.rebuild_calls < 1:
        print("error: --seconds, --calls and --rebuild-calls must be positive", file=sys.stderr)
        return 2
    calls = max(args.calls, 10_000) if args.scale else args.calls

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    result = run_bench(args.seconds, calls, endpoint=args.endpoint, http_endpoint=args.http_endpoint,
                       rebuild_calls=args.rebuild_calls, scale=args.scale,
                       plot=Path(args.plot) if args.plot else None, seed=args.seed, log=log)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otel-patter bench")
    add_parser(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
