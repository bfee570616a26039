"""Security: bearer-token auth and TLS (server certificate, client certificates) on every listener (OTLP/gRPC,
OTLP/HTTP, admin) with the real exporters; constant-time token comparison; hostile call ids and planted symlinks
(day, call, WAL, state, calls and forward queue directories) never make us write outside log_dir; files 0600 and
directories 0700 even under umask 0; no secret (OTLP and admin tokens, a rejected token, forward header values,
the hash key) in logs, /metrics, check-config output, the API, the page or the files we write.

Covered elsewhere and not repeated here: admin token rules (tests/test_admin_auth.py: which paths it guards,
Basic for the page, the token never logged, masked by check-config), `safe_path_segment` and a call directory's
modes (tests/test_store.py), one hostile call id over HTTP (tests/test_ingest_refusals.py).
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import inspect
import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_patter.admin import auth as admin_auth
from otel_patter.receivers import security
from otel_patter.store.paths import call_dir_name
from tests.exporters.downstreams import GrpcDownstream
from tests.otlp import T0, post, request, span
from tests.reliability.certs import Pki, make_pki
from tests.reliability.harness import clean_env, spawn, tracebacks
from tests.server import ServerProc

OTLP_TOKEN = "otlp-token-9f8e7d6c5b4a39281706"
ADMIN_TOKEN = "admin-token-0a1b2c3d4e5f60718293"
FORWARD_SECRET = "hc-forward-secret-5e6f7a8b9c0d1e2f"
HASH_KEY = "hash-key-secret-11223344556677889900"
WRONG_TOKEN = "wrong-token-aabbccddeeff00112233"
SECRETS = (OTLP_TOKEN, ADMIN_TOKEN, FORWARD_SECRET, HASH_KEY, WRONG_TOKEN)


# -- a server with TLS + client certificates + tokens on all three listeners -------------------------------------
class TlsServer(ServerProc):
    """ServerProc whose admin port speaks HTTPS with our client certificate and the admin token."""

    def __init__(self, root: Path, pki: Pki, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        tls = pki.tls_config(mtls=True)
        base = {"receivers": {"otlp": {"grpc": {"auth_token": OTLP_TOKEN, "tls": tls},
                                       "http": {"auth_token": OTLP_TOKEN, "tls": tls}}},
                "admin": {"auth_token": ADMIN_TOKEN, "metrics_auth": True, "tls": tls}}
        from tests.server import deep_merge

        deep_merge(base, config)
        super().__init__(root, base, env)
        self.pki = pki
        self.ssl_context = pki.client_context()
        self.admin_token = ADMIN_TOKEN


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override the HTTP exporter's `certificate_file`."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def downstream() -> Iterator[GrpcDownstream]:
    d = GrpcDownstream().start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, pki: Pki, downstream: GrpcDownstream) -> Iterator[TlsServer]:
    """TLS + mTLS + tokens everywhere, a forward header secret, a hash key, debug logging, umask 0."""
    root = tmp_path_factory.mktemp("locked")
    s = TlsServer(root, pki, {
        "forward": [{"name": "hc", "endpoint": downstream.endpoint, "protocol": "grpc",
                     "headers": {"x-honeycomb-team": FORWARD_SECRET}}],
        "store": {"redact_phone": "hash_only"}, "log_level": "debug",
        "rollup": {"idle_timeout": "1h", "final_grace": "1h"}},
        env={"OTEL_PATTER_HASH_KEY": HASH_KEY})
    old = os.umask(0)  # the server inherits it: modes must not depend on a friendly umask
    try:
        s.start()
    finally:
        os.umask(old)
    yield s
    s.stop()


def _sdk_spans(call_id: str, n: int = 3) -> list[ReadableSpan]:
    mem = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "patter"}))
    provider.add_span_processor(SimpleSpanProcessor(mem))
    tracer = provider.get_tracer("getpatter")
    for i in range(n):
        with tracer.start_as_current_span("getpatter.llm", attributes={
                "patter.call_id": call_id, "patter.llm.provider": "openai", "patter.llm.model": "gpt-4o-mini",
                "patter.cost.llm_input_tokens": 100 + i, "patter.caller": "+1 415 555 0100"}):
            pass
    provider.shutdown()
    return list(mem.get_finished_spans())


def _grpc_exporter(s: TlsServer, pki: Pki, *, token: str | None = OTLP_TOKEN, cert: str | None = "client",
                   timeout: float = 5) -> GrpcExporter:
    key = chain = None
    if cert is not None:
        key, chain = (pki.dir / f"{cert}.key").read_bytes(), (pki.dir / f"{cert}.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), key, chain)
    headers = {"authorization": f"Bearer {token}"} if token else None
    return GrpcExporter(endpoint=f"https://127.0.0.1:{s.grpc_port}", credentials=creds, headers=headers,
                        timeout=timeout)


def _http_exporter(s: TlsServer, pki: Pki, *, token: str | None = OTLP_TOKEN, cert: str | None = "client",
                   timeout: float = 5) -> HttpExporter:
    kw: dict[str, Any] = {}
    if cert is not None:
        kw = {"client_certificate_file": str(pki.dir / f"{cert}.pem"), "client_key_file": str(pki.dir / f"{cert}.key")}
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return HttpExporter(endpoint=f"https://127.0.0.1:{s.http_port}/v1/traces", certificate_file=str(pki.ca),
                        headers=headers, timeout=timeout, **kw)


# -- auth and TLS on every listener -------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_real_exporters_get_in_with_tls_a_client_certificate_and_the_token(locked: TlsServer, pki: Pki,
                                                                               protocol: str) -> None:
    call_id = f"CA-tls-{protocol}"
    exp = (_grpc_exporter if protocol == "grpc" else _http_exporter)(locked, pki)
    try:
        assert exp.export(_sdk_spans(call_id)) is SpanExportResult.SUCCESS
    finally:
        exp.shutdown()
    code, env = locked.post(f"/api/v1/calls/{call_id}/finalize")
    assert code == 200 and env["counts"]["spans"] == 3


def test_grpc_without_the_token_or_with_a_wrong_one_is_unauthenticated(locked: TlsServer, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(),
                                         pki.client_cert.read_bytes())
    body = request([span("getpatter.llm", {"patter.call_id": "CA-no-token"})])
    with grpc.secure_channel(f"127.0.0.1:{locked.grpc_port}", creds) as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        for metadata in ((), (("authorization", f"Bearer {WRONG_TOKEN}"),), (("authorization", OTLP_TOKEN),),
                         (("authorization", f"Basic {OTLP_TOKEN}"),), (("authorization", f"Bearer {OTLP_TOKEN}x"),)):
            with pytest.raises(grpc.RpcError) as e:
                stub.Export(body, metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        stub.Export(body, metadata=(("authorization", f"Bearer {OTLP_TOKEN}"),), timeout=10)
    assert locked.get("/api/v1/calls/CA-no-token")[0] == 200  # only the last one got in


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_real_exporters_are_refused_without_token_or_with_a_stranger_certificate(
        locked: TlsServer, pki: Pki, protocol: str) -> None:
    make = _grpc_exporter if protocol == "grpc" else _http_exporter
    for kw in ({"token": None}, {"token": WRONG_TOKEN}, {"cert": None}, {"cert": "stranger"}):
        exp = make(locked, pki, timeout=1.5, **kw)  # type: ignore[arg-type]
        try:
            assert exp.export(_sdk_spans(f"CA-refused-{protocol}")) is SpanExportResult.FAILURE, kw
        finally:
            exp.shutdown()
    assert locked.get(f"/api/v1/calls/CA-refused-{protocol}")[0] == 404


def _https(port: int, ctx: ssl.SSLContext, method: str, path: str, body: bytes = b"",
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        c.request(method, path, body or None, headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_otlp_http_answers_401_with_a_challenge_and_never_plaintext(locked: TlsServer, pki: Pki) -> None:
    body = request([span("getpatter.llm", {"patter.call_id": "CA-401"})]).SerializeToString()
    ct = {"Content-Type": "application/x-protobuf"}
    for auth in (None, f"Bearer {WRONG_TOKEN}", OTLP_TOKEN, f"bearer {OTLP_TOKEN} x", "Basic Og=="):
        headers = {**ct, **({"Authorization": auth} if auth else {})}
        code, h, _ = _https(locked.http_port, locked.ssl_context, "POST", "/v1/traces", body, headers)
        assert code == 401 and h["www-authenticate"].startswith("Bearer"), auth
    code, _, _ = _https(locked.http_port, locked.ssl_context, "POST", "/v1/traces", body,
                        {**ct, "Authorization": f"Bearer {OTLP_TOKEN}"})
    assert code == 200
    with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP to the TLS port
        post(f"http://127.0.0.1:{locked.http_port}/v1/traces", body, timeout=5)


@pytest.mark.parametrize("listener", ["http", "admin"])
def test_a_client_without_a_certificate_of_our_ca_cannot_even_connect(locked: TlsServer, pki: Pki,
                                                                      listener: str) -> None:
    port = locked.http_port if listener == "http" else locked.admin_port
    for ctx in (pki.client_context(cert=None), pki.client_context(cert="stranger")):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _https(port, ctx, "GET", "/readyz")
    unverified = ssl.create_default_context()  # and our certificate is what a client that trusts our CA checks
    with pytest.raises(ssl.SSLCertVerificationError):
        _https(port, unverified, "GET", "/readyz")


def test_the_admin_port_speaks_tls_and_wants_the_token(locked: TlsServer) -> None:
    assert _https(locked.admin_port, locked.ssl_context, "GET", "/readyz")[0] == 200  # probes: open, but over TLS
    for path in ("/api/v1/calls", "/metrics", "/", "/api/v1/openapi.json"):
        assert _https(locked.admin_port, locked.ssl_context, "GET", path)[0] == 401, path
        assert _https(locked.admin_port, locked.ssl_context, "GET", path,
                      headers={"Authorization": f"Bearer {WRONG_TOKEN}"})[0] == 401, path
        assert _https(locked.admin_port, locked.ssl_context, "GET", path,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})[0] == 200, path


def test_tls_without_client_certificates_takes_any_client_that_trusts_us(tmp_path: Path, pki: Pki) -> None:
    tls = pki.tls_config(mtls=False)
    s = ServerProc(tmp_path, {"receivers": {"otlp": {"grpc": {"tls": tls}, "http": {"tls": tls}}}})
    spawn(s)
    try:
        body = request([span("getpatter.llm", {"patter.call_id": "CA-server-tls"})]).SerializeToString()
        ctx = pki.client_context(cert=None)
        for _ in range(200):  # wait for it to listen (its admin port is plain HTTP here)
            with contextlib.suppress(OSError):
                if s.get("/readyz")[0] == 200:
                    break
            import time

            time.sleep(0.05)
        code, _, _ = _https(s.http_port, ctx, "POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        assert code == 200
        creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{s.grpc_port}", creds) as ch:
            trace_service_pb2_grpc.TraceServiceStub(ch).Export(
                request([span("getpatter.llm", {"patter.call_id": "CA-server-tls"})]), timeout=10)
    finally:
        s.stop()


def test_token_checks_are_constant_time_compare_digest() -> None:
    """Every listener's check goes through `TokenAuth.authorized`, which compares with hmac.compare_digest
    only (no `==` on the secret, no early exit on the first different byte)."""
    src = inspect.getsource(admin_auth.TokenAuth.authorized)
    assert src.count("hmac.compare_digest(") == 2 and "== self._token" not in src and "!= self._token" not in src
    assert "TokenAuth(" in inspect.getsource(security.ListenerAuth)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    auth = security.ListenerAuth(OTLP_TOKEN)
    with mock.patch.object(admin_auth.hmac, "compare_digest", spy):
        auth.check(f"Bearer {OTLP_TOKEN}")
        with pytest.raises(security.Unauthenticated):
            auth.check(f"Bearer {WRONG_TOKEN}")
        with pytest.raises(security.Unauthenticated):
            auth.check("Basic " + __import__("base64").b64encode(f"u:{WRONG_TOKEN}".encode()).decode())
    assert len(calls) == 3 and all(b == OTLP_TOKEN.encode() for _, b in calls)
    assert OTLP_TOKEN not in repr(auth)


# -- no path outside log_dir --------------------------------------------------------------------------------------
HOSTILE_IDS = ["../../../../tmp/escape", "/etc/passwd", "..", ".", "...", "a/../../b", "..\\..\\x", "%2e%2e%2f%2e%2e",
               "~root/.ssh", "$HOME", "CA\u202e\u0000x", "C:\\Windows\\system32", "a" * 256, "./.", "-rf", " ..",
               "call/with/slashes", ".hidden", "calls", "state", "\u2024\u2024/\u2025", "NUL", "x\ny"]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _send_ids(s: ServerProc, ids: list[str], token: str | None = None, ctx: ssl.SSLContext | None = None,
              ) -> dict[str, int]:
    out = {}
    for cid in ids:
        body = request([span("getpatter.llm", {"patter.call_id": cid, "patter.cost.llm_input_tokens": 10,
                                               "patter.llm.provider": "openai"}, start=T0)]).SerializeToString()
        out[cid] = post(s.http_endpoint + "/v1/traces", body, timeout=10)[0]
    return out


def test_hostile_call_ids_never_reach_a_path_outside_log_dir(tmp_path: Path) -> None:
    root = tmp_path / "box"
    root.mkdir()
    (root / "outside").mkdir()
    s = ServerProc(root, {"rollup": {"idle_timeout": "1h", "final_grace": "1h"}}).start()
    try:
        codes = _send_ids(s, HOSTILE_IDS)
        assert set(codes.values()) == {200}, codes
        for cid in HOSTILE_IDS:
            if cid.isprintable():
                code, env = s.post(f"/api/v1/calls/{quote(cid, safe='')}/finalize")
                assert code == 200 and env["call_id"] == cid, cid
        log_dir = s.log_dir.resolve()
        for p in _files(root):
            assert p.resolve().is_relative_to(root.resolve())
        written = {p for p in _files(root) if not p.is_relative_to(s.log_dir)}
        assert written == {root / "outside", s.config_path, s.stderr_path}, written
        for p in _files(s.log_dir):
            assert p.resolve().is_relative_to(log_dir), p
            if p.parent.name and p.name == "metadata.json":
                assert p.parent.parent.parent.parent.parent == s.log_dir / "calls"  # calls/YYYY/MM/DD/<dir>
        assert not list((root / "outside").iterdir())
        dirs = {p.parent.name for p in s.log_dir.glob("calls/*/*/*/*/metadata.json")}
        assert {call_dir_name(c) for c in HOSTILE_IDS if c.isprintable()} <= dirs
    finally:
        s.stop()
    assert not tracebacks(s.logs())


def test_planted_symlinks_never_lead_a_write_outside_log_dir(tmp_path: Path) -> None:
    """A day directory, a call directory and a WAL file planted as symlinks to places outside log_dir: the
    request is refused (UNAVAILABLE: not acknowledged, nothing written there) and the rest goes on."""
    root = tmp_path / "box"
    outside = tmp_path / "outside"
    outside.mkdir(parents=True)
    root.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("untouched\n")
    s = ServerProc(root, {"rollup": {"idle_timeout": "1h", "final_grace": "1h"}})
    day = s.log_dir / "calls" / "2026" / "11" / "23"  # T0's day
    other_day = s.log_dir / "calls" / "2026" / "11" / "24"
    day.mkdir(parents=True)
    (s.log_dir / "calls" / "2026" / "11").chmod(0o700)
    other_day.symlink_to(outside, target_is_directory=True)  # a whole day directory elsewhere
    (day / call_dir_name("CA-linked-dir")).symlink_to(outside, target_is_directory=True)
    real = day / call_dir_name("CA-linked-wal")
    real.mkdir(mode=0o700)
    (real / "spans.jsonl").symlink_to(victim)
    (day / call_dir_name("CA-linked-dotdot")).symlink_to("../../../../../../outside", target_is_directory=True)
    s.start()
    try:
        codes = _send_ids(s, ["CA-linked-dir", "CA-linked-wal", "CA-linked-dotdot"])
        body = request([span("getpatter.llm", {"patter.call_id": "CA-next-day"}, start=T0 + 86400 * 10**9)])
        codes["CA-next-day"] = post(s.http_endpoint + "/v1/traces", body.SerializeToString(), timeout=10)[0]
        assert all(c in (503, 500) for c in codes.values()), codes
        assert set(codes.values()) == {503}, codes  # retryable refusal, not acknowledged
        assert victim.read_text() == "untouched\n"
        assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
        # everything else still works
        assert _send_ids(s, ["CA-fine"]) == {"CA-fine": 200}
        assert s.post("/api/v1/calls/CA-fine/finalize")[0] == 200
    finally:
        s.stop()
    assert victim.read_text() == "untouched\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize("planted", ["state", "calls", "state/forward", "state/forward/down"])
def test_a_planted_state_calls_or_queue_symlink_stops_the_server_at_start(tmp_path: Path, planted: str) -> None:
    """The index, the pending log and the forward queues live in fixed directories under log_dir: one planted as
    a symlink to elsewhere makes `serve` refuse to start (exit 2, naming it), instead of writing through it."""
    root = tmp_path / "box"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    s = ServerProc(root, {"forward": [{"name": "down", "endpoint": "http://127.0.0.1:9", "protocol": "grpc"}]})
    link = s.log_dir / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(RuntimeError, match="symbolic link") as e:
        s.start()
    assert "exited 2" in str(e.value) and str(link) in str(e.value)
    assert not list(outside.iterdir())


def test_everything_we_write_is_0600_and_every_directory_0700_under_umask_0(locked: TlsServer, pki: Pki) -> None:
    exp = _http_exporter(locked, pki)
    try:
        assert exp.export(_sdk_spans("CA-modes")) is SpanExportResult.SUCCESS
    finally:
        exp.shutdown()
    assert locked.post("/api/v1/calls/CA-modes/finalize")[0] == 200
    bad = []
    n = 0
    for p in [locked.log_dir, *locked.log_dir.rglob("*")]:
        st = p.lstat()
        n += 1
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600 if stat.S_ISREG(st.st_mode) else None
        if want is not None and stat.S_IMODE(st.st_mode) != want:
            bad.append((str(p), oct(stat.S_IMODE(st.st_mode))))
    assert not bad, bad
    assert n > 8  # calls/YYYY/MM/DD/<dir>/{metadata.json,spans.jsonl}, state/, the forward queue


# -- no secret anywhere we show or write ----------------------------------------------------------------------------
def test_no_secret_in_logs_metrics_check_config_api_page_or_files(locked: TlsServer, pki: Pki,
                                                                 downstream: GrpcDownstream) -> None:
    # traffic of every kind: accepted, refused with a wrong token, a finalize (summary forwarded with the header)
    for protocol in ("grpc", "http"):
        make = _grpc_exporter if protocol == "grpc" else _http_exporter
        for token in (OTLP_TOKEN, WRONG_TOKEN):
            exp = make(locked, pki, token=token)
            try:
                exp.export(_sdk_spans(f"CA-secrets-{protocol}"))
            finally:
                exp.shutdown()
        assert locked.post(f"/api/v1/calls/CA-secrets-{protocol}/finalize")[0] == 200
    _https(locked.admin_port, locked.ssl_context, "GET", "/api/v1/calls",
           headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
    downstream.wait(lambda: any(r.headers.get("x-honeycomb-team") == FORWARD_SECRET for r in downstream.received))

    shown: dict[str, str] = {}
    for path in ("/metrics", "/api/v1/calls", "/api/v1/calls/CA-secrets-grpc", "/", "/calls/CA-secrets-grpc",
                 "/api/v1/openapi.json", "/readyz", "/healthz"):
        code, body = locked.get(path)
        assert code == 200, path
        shown[path] = body.decode(errors="replace") if isinstance(body, bytes) else json.dumps(body)
    env = {**clean_env(), "OTEL_PATTER_HASH_KEY": HASH_KEY}
    check = subprocess.run([sys.executable, "-m", "otel_patter.cli", "check-config", "--config",
                            str(locked.config_path)], capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stderr
    shown["check-config"] = check.stdout + check.stderr
    assert "***" in check.stdout
    shown["server log"] = locked.logs()
    assert "debug" in locked.config_path.read_text() and shown["server log"]
    for p in locked.log_dir.rglob("*"):
        if p.is_file():
            shown[str(p)] = p.read_bytes().decode(errors="replace")
    leaks = [(where, secret) for where, text in shown.items() for secret in SECRETS if secret in text]
    assert not leaks, leaks
    assert len(shown) > 12


def test_a_config_error_never_shows_a_token(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"receivers:\n  otlp:\n    http:\n      auth_token: '{OTLP_TOKEN} with a space'\n"
                   f"forward:\n  - name: x\n    endpoint: 'http://127.0.0.1:9'\n    headers: {{h: {FORWARD_SECRET}}}\n"
                   f"    timeout: {FORWARD_SECRET}\n")
    out = subprocess.run([sys.executable, "-m", "otel_patter.cli", "check-config", "--config", str(cfg)],
                         capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode != 0
    assert "auth_token" in out.stdout + out.stderr
    assert OTLP_TOKEN not in out.stdout + out.stderr
