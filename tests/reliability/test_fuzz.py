"""Fuzzing (hypothesis) of everything a client or an operator hands us: OTLP/HTTP protobuf and JSON bodies and
OTLP/gRPC messages, through the real receivers, decode and pipeline (store, rollup, forward queue) running in
this process on 127.0.0.1; and config files through the config loader and `check-config`'s printer.

Zero crashes: no 500 / UNKNOWN / INTERNAL answer, nothing logged at ERROR, no exception the event loop did not
handle; every answer one of the OTLP spec's (HTTP 200/400/413/415/503, 404/405 off the OTLP paths; gRPC
OK/INVALID_ARGUMENT/RESOURCE_EXHAUSTED/UNAVAILABLE), its body the spec's message; the config loader either
gives a config or a ConfigError naming the path. Afterwards the server still takes a good request.

Short (CI): a few thousand inputs, derandomized. Long (`make reliability`): over 100k inputs in all.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, Phase, given, settings
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otel_patter.config import Config, ConfigError, format_effective, load_config
from otel_patter.receivers.otlp_grpc import SERVICES
from tests.otlp import request, span
from tests.reliability.conftest import LONG, pick
from tests.reliability.fuzz_inputs import (
    JSON_CT,
    PROTOBUF,
    config_documents,
    grpc_variants,
    http_json_variants,
    http_protobuf_variants,
    messages,
)
from tests.reliability.inservice import InService

# hypothesis draws a structured hostile message (that is what costs); each is sent as VARIANTS requests, mutated
# by an rng hypothesis seeds. Inputs = examples x VARIANTS.
VARIANTS = pick(8, 16)
pytestmark = pytest.mark.timeout(1200 if LONG else 300)
N_HTTP_PROTOBUF = pick(1200, 40_000) // VARIANTS
N_HTTP_JSON = pick(1200, 30_000) // VARIANTS
N_GRPC = pick(800, 20_000) // VARIANTS
N_CONFIG = pick(800, 15_000)
MAX_REQUEST = 64 * 1024  # small, so "too large" is reachable

HTTP_OTLP_ANSWERS = {200, 400, 413, 415, 503}
HTTP_OTHER_PATH_ANSWERS = {404, 405}
GRPC_ANSWERS = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
RESPONSES = {"traces": ExportTraceServiceResponse, "metrics": ExportMetricsServiceResponse,
             "logs": ExportLogsServiceResponse}
METHODS = {signal: f"/{service}/Export" for signal, service, *_ in SERVICES}


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=not LONG,
                    suppress_health_check=list(HealthCheck), print_blob=True,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])


@pytest.fixture(scope="module")
def service() -> Iterator[InService]:
    with tempfile.TemporaryDirectory(prefix="otel-patter-fuzz-") as d, InService(
            Path(d), **{"receivers.otlp.max_request_bytes": MAX_REQUEST,
                        "rollup.idle_timeout": "2s", "rollup.final_grace": "100ms"}) as s:
        yield s


class HttpClient:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("POST", path, body, headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.will_close:
                    self.close()
                return r.status, data, r.getheader("Content-Type", "")
            except (ConnectionError, http.client.HTTPException):
                self.close()  # the server closed a kept-alive connection after a refusal: send on a fresh one
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @classmethod
    def post_once(cls, port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """One request on a connection of its own."""
        client = cls(port)
        try:
            return client.post(path, body, headers)
        finally:
            client.close()


def _check_http_answer(path: str, headers: dict[str, str], code: int, data: bytes, ctype: str) -> None:
    otlp_path = path in ("/v1/traces", "/v1/metrics", "/v1/logs")
    assert code in (HTTP_OTLP_ANSWERS if otlp_path else HTTP_OTHER_PATH_ANSWERS), (code, data[:300])
    if not otlp_path:
        return
    ct = ctype.split(";")[0].strip().lower()
    signal = path.rsplit("/", 1)[1]
    if code == 200:  # the response message in the request's encoding
        if ct == PROTOBUF:
            RESPONSES[signal].FromString(data)
        else:
            assert ct == JSON_CT, ctype
    else:  # a google.rpc.Status, protobuf or JSON
        if ct == PROTOBUF:
            status = status_pb2.Status.FromString(data)
            assert status.code != 0 and status.message
        else:
            import json

            assert ct == JSON_CT, ctype
            assert json.loads(data).get("message")


def _still_serves(s: InService) -> None:
    body = request([span("getpatter.tool", {"patter.call_id": "CA-after-fuzz"})]).SerializeToString()
    code, data, _ = HttpClient.post_once(s.http_port, "/v1/traces", body, {"Content-Type": PROTOBUF})
    assert code == 200, data
    assert s.pipeline.rollup.get("CA-after-fuzz") is not None


def _report(name: str, n: int, answers: Counter[Any], s: InService | None) -> None:
    print(f"\nfuzz {name} ({'long' if LONG else 'short'}): {n} inputs, answers {dict(sorted(answers.items()))}")
    if s is not None:
        assert not s.errors, s.errors[:5]
        _still_serves(s)


@pytest.mark.parametrize("kind", ["protobuf", "json"])
def test_hostile_otlp_http_bodies_get_only_the_specs_answers(service: InService, kind: str) -> None:
    service.errors.clear()
    client = HttpClient(service.http_port)
    answers: Counter[int] = Counter()
    variants = http_protobuf_variants if kind == "protobuf" else http_json_variants

    @fuzz_settings(N_HTTP_PROTOBUF if kind == "protobuf" else N_HTTP_JSON)
    @given(messages())
    def run(example: tuple[str, Any, Any]) -> None:
        signal, msg, rng = example
        for path, body, headers in variants(msg, signal, rng, VARIANTS):
            code, data, ctype = client.post(path, body, headers)
            answers[code] += 1
            try:
                _check_http_answer(path, headers, code, data, ctype)
            except Exception as e:
                raise AssertionError(f"{path} {headers} {body[:200]!r}: {code} {data[:300]!r}") from e
            assert not service.errors, service.errors[:5]

    try:
        run()
    finally:
        client.close()
    _report(f"OTLP/HTTP {kind}", sum(answers.values()), answers, service)
    assert answers[200] and answers[400] and answers[413] and answers[415], answers  # every branch is reached


def test_hostile_otlp_grpc_messages_get_only_the_specs_answers(service: InService) -> None:
    service.errors.clear()
    answers: Counter[str] = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}",
                               options=[("grpc.max_send_message_length", 8 * MAX_REQUEST)]) as channel:
        calls = {signal: channel.unary_unary(method) for signal, method in METHODS.items()}

        @fuzz_settings(N_GRPC)
        @given(messages())
        def run(example: tuple[str, Any, Any]) -> None:
            signal, msg, rng = example
            for raw in grpc_variants(msg, rng, VARIANTS):
                try:
                    data = calls[signal](raw, timeout=30)
                except grpc.RpcError as e:
                    code = e.code().name
                    answers[code] += 1
                    assert code in GRPC_ANSWERS, (code, e.details(), raw[:200])
                else:
                    answers["OK"] += 1
                    RESPONSES[signal].FromString(data)
                assert not service.errors, service.errors[:5]

        run()
    _report("OTLP/gRPC", sum(answers.values()), answers, service)
    assert answers["OK"] and answers["INVALID_ARGUMENT"] and answers["RESOURCE_EXHAUSTED"], answers


def test_hostile_config_files_give_a_config_or_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    env = {"HOME": str(tmp_path), "OTEL_PATTER_FUZZ_SECRET": "fuzz-secret-0123456789"}
    outcomes: Counter[str] = Counter()

    @fuzz_settings(N_CONFIG)
    @given(config_documents())
    def run(text: str) -> None:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            cfg = load_config(str(path), env=env, overrides={"store.log_dir": str(tmp_path / "log")})
        except ConfigError as e:
            outcomes["ConfigError"] += 1
            assert e.errors and all(isinstance(p, str) and isinstance(m, str) and m for p, m in e.errors)
            return
        outcomes["Config"] += 1
        assert isinstance(cfg, Config)
        printed = format_effective(cfg)  # what `check-config` prints
        for listener in (cfg.receivers.otlp.grpc, cfg.receivers.otlp.http):
            if listener.auth_token and len(listener.auth_token) >= 12:
                assert listener.auth_token not in printed
        for target in cfg.forward:
            for _, value in target.headers:
                if len(value) >= 12:
                    assert value not in printed

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    run()
    _report("config loader", sum(outcomes.values()), outcomes, None)
    assert outcomes["Config"] and outcomes["ConfigError"], outcomes


@pytest.mark.parametrize("body", [
    b'{"resourceSpans":[{"resource":{"attributes":[{"key":"a","value":{"intValue":Infinity}}]}}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":-Infinity}]}]}]}',
    b'{"resourceSpans":[{"\\ud800":[]}]}',
    b'{"resourceSpans":[{"resource":{"attributes":[{"key":"\\ud800","value":{"stringValue":"\\udfff"}}]}}]}',
], ids=["int-infinity", "time-minus-infinity", "surrogate-key", "surrogate-value"])
def test_what_fuzzing_found_is_a_400(service: InService, body: bytes) -> None:
    """Found by this fuzzer: json_format raised OverflowError / SystemError (answered 500) on these."""
    service.errors.clear()
    code, data, ctype = HttpClient.post_once(service.http_port, "/v1/traces", body, {"Content-Type": JSON_CT})
    assert code == 400, data
    _check_http_answer("/v1/traces", {}, code, data, ctype)
    assert not service.errors
