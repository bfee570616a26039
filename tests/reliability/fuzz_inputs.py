"""Hypothesis strategies for hostile OTLP requests and config files.

Requests are built the way a confused or malicious client could send them: structurally valid OTLP with
absurd values (the keys the rollup, usage guard and PII stages read, with every AnyValue type, NaN, infinities,
int64 extremes, ids of the wrong length, huge and empty names, deep arrays and kvlists), then as often
serialized and cut, flipped, padded or replaced by noise; JSON the same, plus type confusion at any node;
with random content types and encodings, gzip that is truncated or lies.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import random
import zlib
from typing import Any

from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

KEYS = [
    "patter.call_id", "patter.call.id", "getpatter.call.id", "patter.side", "patter.turn.idx",
    "patter.cost.telephony_minutes", "patter.telephony", "patter.cost.stt_seconds", "patter.stt.provider",
    "patter.cost.tts_chars", "patter.tts.provider", "patter.cost.llm_input_tokens",
    "patter.cost.llm_output_tokens", "patter.llm.provider", "patter.llm.model", "patter.cost.realtime_minutes",
    "patter.realtime.provider", "patter.latency.ttfb_ms", "patter.latency.turn_ms", "patter.billable",
    "gen_ai.request.model", "gen_ai.prompt", "gen_ai.usage.input_tokens", "service.name", "service.instance.id",
    "patter.caller", "patter.callee", "patter.direction", "http.url", "url.full", "patter.error_layer",
    "patter.disconnect_reason", "patter.tenant", "patter.agent", "exception.message", "otel_patter.redacted_count",
]
NAMES = ["getpatter.llm", "getpatter.stt", "getpatter.tts", "getpatter.call", "patter.billable",
         "patter.call.summary", "patter.event.llm_first_token", "getpatter.tool", "POST /webhook"]
SIGNALS = ["traces", "traces", "traces", "metrics", "logs"]
PROTOBUF = "application/x-protobuf"
JSON_CT = "application/json"

_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_uint64 = st.integers(min_value=0, max_value=2**64 - 1)
_small_text = st.text(max_size=40)
_texts = st.one_of(
    _small_text,
    st.sampled_from(["", " ", "..", "../../etc/passwd", "/etc/passwd", "CA" + "0" * 32, "+1 (555) 123-4567",
                     "jane@example.com", "4111 1111 1111 1111", "Bearer sk-abcdef0123456789", "uut", "driver",
                     "openai", "deepgram", "twilio", "gpt-4o-mini", "\x00", "a" * 300, "\u202e", "%2e%2e/",
                     "https://u:p@h/x?to=+15551234567", "{\"to\": \"+15551234567\"}", "nan", "1e309"]),
)
_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e300, 1440.0001, 86400.5, 1e7 + 1]))
_ids = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.binary(max_size=20),
                 st.just(b""), st.just(b"\0" * 16))


def _any_value(depth: int = 2) -> st.SearchStrategy[AnyValue]:
    leaves = st.one_of(
        _texts.map(lambda s: AnyValue(string_value=s)),
        _int64.map(lambda n: AnyValue(int_value=n)),
        _floats.map(lambda f: AnyValue(double_value=f)),
        st.booleans().map(lambda b: AnyValue(bool_value=b)),
        st.binary(max_size=24).map(lambda b: AnyValue(bytes_value=b)),
        st.just(AnyValue()),
    )
    if depth <= 0:
        return leaves

    def arr(vals: list[AnyValue]) -> AnyValue:
        v = AnyValue()
        v.array_value.values.extend(vals)
        return v

    def kvl(pairs: list[tuple[str, AnyValue]]) -> AnyValue:
        v = AnyValue()
        v.kvlist_value.values.extend(KeyValue(key=k, value=x) for k, x in pairs)
        return v

    inner = _any_value(depth - 1)
    return st.one_of(leaves, st.lists(inner, max_size=3).map(arr),
                     st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), _small_text), inner), max_size=3).map(kvl))


_keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), _texts)
_attrs = st.lists(st.tuples(_keys, _any_value()), max_size=8)


def _kvs(pairs: list[tuple[str, AnyValue]]) -> list[KeyValue]:
    return [KeyValue(key=k, value=v) for k, v in pairs]


@st.composite
def _span(draw: Any, span: Any) -> None:
    span.trace_id = draw(_ids)
    span.span_id = draw(_ids)
    span.parent_span_id = draw(st.one_of(st.just(b""), _ids))
    span.name = draw(st.one_of(st.sampled_from(NAMES), _texts))
    span.kind = draw(st.integers(min_value=0, max_value=7))
    start = draw(st.one_of(st.just(1_795_412_722_000_000_000), _uint64))
    span.start_time_unix_nano = start
    span.end_time_unix_nano = draw(st.one_of(st.just(min(start + 1_000_000, 2**64 - 1)), _uint64))
    span.attributes.extend(_kvs(draw(_attrs)))
    for name, t, attrs in draw(st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), _texts), _uint64,
                                                    st.lists(st.tuples(_keys, _any_value(1)), max_size=3)),
                                          max_size=2)):
        e = span.events.add(name=name, time_unix_nano=t)
        e.attributes.extend(_kvs(attrs))
    span.status.code = draw(st.integers(min_value=0, max_value=3))
    span.status.message = draw(_texts)


@st.composite
def trace_requests(draw: Any) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(_kvs(draw(_attrs)))
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(_texts)
            for _ in range(draw(st.integers(min_value=0, max_value=4))):
                draw(_span(ss.spans.add()))
    return req


@st.composite
def log_requests(draw: Any) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(_kvs(draw(_attrs)))
    sl = rl.scope_logs.add()
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        r = sl.log_records.add(time_unix_nano=draw(_uint64), severity_number=draw(st.integers(0, 24)),
                               trace_id=draw(_ids), span_id=draw(_ids))
        r.body.CopyFrom(draw(_any_value()))
        r.attributes.extend(_kvs(draw(_attrs)))
    return req


@st.composite
def metric_requests(draw: Any) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(_kvs(draw(_attrs)))
    sm = rm.scope_metrics.add()
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        m = sm.metrics.add(name=draw(_texts))
        kind = draw(st.sampled_from(["sum", "gauge", "histogram"]))
        if kind == "histogram":
            dp = m.histogram.data_points.add(count=draw(_uint64), sum=draw(_floats))
            dp.bucket_counts.extend(draw(st.lists(_uint64, max_size=4)))
            dp.explicit_bounds.extend(draw(st.lists(_floats, max_size=4)))
        else:
            dp = getattr(m, kind).data_points.add(as_double=draw(_floats))
        dp.attributes.extend(_kvs(draw(_attrs)))
    return req


def _message(signal: str) -> st.SearchStrategy[Any]:
    return {"traces": trace_requests(), "metrics": metric_requests(), "logs": log_requests()}[signal]


# -- byte and JSON level mutation: plain `random.Random` seeded by hypothesis (cheap, so every structured example
# hypothesis draws is sent as several variants: generating the structure is what costs)
HTTP_CONTENT_TYPES = [PROTOBUF] * 10 + ["application/x-protobuf; charset=x", "application/protobuf", "text/plain", "",
                                         "application/grpc", JSON_CT, "multipart/form-data; boundary=x"]
JSON_CONTENT_TYPES = [JSON_CT] * 10 + ["application/json; charset=utf-8", "APPLICATION/JSON", "text/json",
                                       "application/json; charset=latin-1"]
ENCODINGS = [None] * 12 + ["identity", "gzip", "gzip", "gzip", "deflate", "deflate", "br", "GZIP", "x-zip",
                           "gzip, gzip", ""]
BIG = 70 * 1024  # over the fuzzed server's 64 KiB limit
HOSTILE_JSON = [None, True, False, 0, -1, 2**63, -(2**63) - 1, 2**64, 10**30, 1.5, -0.0, 1e308, math.nan, math.inf,
                -math.inf, "", "x", "\ud800", "a\udfffb", "00", "zz", "0" * 32, "f" * 16, "1e309", [], {}, [[[]]],
                {"stringValue": 1}, {"intValue": "1e3"}, {"intValue": "abc"}, {"doubleValue": "NaN"},
                {"arrayValue": {"values": [{"kvlistValue": {}}]}}, {"": None}, ["x"] * 5,
                "../../etc/passwd", "+1 555 123 4567"]


def mutate(data: bytes, rng: random.Random, bloat: bool = True) -> bytes:
    """One byte-level mutation of `data` (or none)."""
    how = rng.choice(["as is", "as is", "cut", "flip", "flip", "pad", "splice", "dup", "noise", "empty"]
                     + (["bloat"] if bloat else []))
    if how == "cut" and data:
        return data[: rng.randrange(len(data))]
    if how == "flip" and data:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if how == "pad":
        return data + rng.randbytes(rng.randint(1, 32))
    if how == "splice" and data:
        i = rng.randint(0, len(data))
        return data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]
    if how == "dup" and data:  # a protobuf message repeated is still one message (fields merge)
        return data * rng.randint(2, 5)
    if how == "noise":
        return rng.randbytes(rng.randint(0, 256))
    if how == "empty":
        return b""
    if how == "bloat":  # over the size limit, plain or (with an encoding) as a small bomb
        return data + b"\0" * BIG
    return data


def encode(body: bytes, rng: random.Random) -> tuple[bytes, str | None]:
    enc = rng.choice(ENCODINGS)
    if enc in ("gzip", "GZIP"):
        z = gzip.compress(body, compresslevel=1)
        how = rng.choice(["ok", "ok", "cut", "trailing", "plain", "flip"])
        if how == "cut":
            z = z[: max(0, len(z) - rng.randint(1, 12))]
        elif how == "trailing":
            z += rng.randbytes(rng.randint(1, 8))
        elif how == "plain":
            z = body  # says gzip, is not
        elif how == "flip" and z:
            b = bytearray(z)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            z = bytes(b)
        return z, enc
    if enc == "deflate":
        return zlib.compress(body), enc
    return body, enc


def _path(signal: str, rng: random.Random) -> str:
    return f"/v1/{signal}" if rng.random() > 0.03 else rng.choice(["/v1/trace", "/", "/v1/traces/", "/v1//traces"])


def http_protobuf_variants(msg: Any, signal: str, rng: random.Random, k: int) -> list[tuple[str, bytes, dict]]:
    """`k` OTLP/HTTP protobuf requests (path, body, headers) made from one message."""
    raw = msg.SerializeToString()
    out = []
    for _ in range(k):
        body, enc = encode(mutate(raw, rng), rng)
        ct = rng.choice(HTTP_CONTENT_TYPES)
        headers = {"Content-Type": ct} if ct else {}
        if enc is not None:
            headers["Content-Encoding"] = enc
        out.append((_path(signal, rng), body, headers))
    return out


def _hexify(obj: Any) -> Any:
    """MessageToDict's base64 ids -> OTLP/JSON hex ids."""
    if isinstance(obj, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                    else _hexify(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hexify(v) for v in obj]
    return obj


def confuse(obj: Any, rng: random.Random, rate: float) -> Any:
    """Replace nodes of a JSON tree with values of the wrong type; rename, drop or add keys."""
    if rng.random() < rate / 4:
        return rng.choice(HOSTILE_JSON)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            r = rng.random()
            if r < rate / 3:
                continue
            if r < rate / 2:
                k = rng.choice([k + "x", k.lower(), k[:-1], "", "__proto__"])
            elif k in ("traceId", "spanId", "parentSpanId") and r < rate:
                v = rng.choice(["", "zz", "0" * 33, "AAAA", "0x12", " " + "0" * 32, "0" * 16])
            out[k] = confuse(v, rng, rate)
        if rng.random() < rate / 3:
            out[rng.choice(["extra", "resourceSpans", "scopeSpans", "spans", "attributes"])] = rng.choice(HOSTILE_JSON)
        return out
    if isinstance(obj, list):
        return [confuse(v, rng, rate) for v in obj]
    return obj


def http_json_variants(msg: Any, signal: str, rng: random.Random, k: int) -> list[tuple[str, bytes, dict]]:
    """`k` OTLP/HTTP JSON requests (path, body, headers) made from one message."""
    from google.protobuf import json_format

    tree = _hexify(json_format.MessageToDict(msg))
    out = []
    for _ in range(k):
        obj = confuse(tree, rng, rng.choice([0.0, 0.0, 0.02, 0.1, 0.3]))
        text = json.dumps(obj, allow_nan=True, ensure_ascii=rng.random() < 0.5)
        body = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.4:
            body = mutate(body, rng)
        body, enc = encode(body, rng)
        headers = {"Content-Type": rng.choice(JSON_CONTENT_TYPES)}
        if enc is not None:
            headers["Content-Encoding"] = enc
        out.append((_path(signal, rng), body, headers))
    return out


def grpc_variants(msg: Any, rng: random.Random, k: int) -> list[bytes]:
    raw = msg.SerializeToString()
    # grpc takes 0.1-1 s to refuse an oversized message (flow control): only one variant in ~100 is one
    return [mutate(raw, rng, bloat=rng.random() < 0.1) for _ in range(k)]


@st.composite
def messages(draw: Any) -> tuple[str, Any, random.Random]:
    """(signal, a structured hostile OTLP request, a seeded rng for its variants)."""
    signal = draw(st.sampled_from(SIGNALS))
    # a plain PRNG seeded by hypothesis (reproducible): hypothesis' own randoms() lean on small values
    return signal, draw(_message(signal)), random.Random(draw(st.integers(min_value=0, max_value=2**64)))


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                       st.floats(allow_nan=True, allow_infinity=True), _texts)
_json_any = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(_small_text, inner, max_size=3)),
                         max_leaves=8)


# -- config files ----------------------------------------------------------------------------------------
_durations = st.one_of(st.sampled_from(["30s", "6s", "0s", "-1s", "1h", "5m", "100ms", "1d", "s", "1.5s", "1e9s",
                                        "nan s", "", "forever"]), _json_leaf)
_endpoints = st.one_of(st.sampled_from(["localhost:4317", "127.0.0.1:0", "0.0.0.0:4318", ":4318", "[::1]:4317",
                                        "localhost:99999", "localhost", "http://127.0.0.1:4317", "a:b:c", ""]),
                       _json_leaf)
_paths = st.one_of(st.sampled_from(["/nonexistent/cert.pem", "/etc/hostname", "~", "", "/dev/null", "\x00"]),
                   _json_leaf)
_env_refs = st.sampled_from(["${env:HOME}", "${env:NOPE}", "${env:NOPE:-x}", "$${env:X}", "${env:", "${}",
                             "${env:A:-${env:B}}", "$$", "${env:OTEL_PATTER_FUZZ_SECRET}"])


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, strategy, strategy, _json_any, _env_refs)


def _section(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    known = st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in fields.items()})
    return st.one_of(known, known, known, st.dictionaries(_small_text, _json_any, max_size=3), _json_leaf)


_listener = _section({"endpoint": _endpoints, "auth_token": _texts,
                      "tls": _section({"cert_file": _paths, "key_file": _paths, "client_ca_file": _paths})})
_prices = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), _texts)
CONFIG_SECTIONS: dict[str, st.SearchStrategy[Any]] = {
    "receivers": _section({"otlp": _section({"grpc": _listener, "http": _listener,
                                             "max_request_bytes": st.one_of(st.integers(), _texts),
                                             "read_timeout": _durations, "max_connection_age": _durations})}),
    "admin": _section({"endpoint": _endpoints, "auth_token": _texts, "metrics_auth": _json_leaf}),
    "store": _section({"log_dir": _paths, "redact_phone": st.sampled_from(["mask", "hash_only", "full", "x"]),
                       "retention_days": st.integers(), "fsync": _json_leaf}),
    "rollup": _section({"idle_timeout": _durations, "final_grace": _durations, "pending_timeout": _durations}),
    "pricing": st.dictionaries(_texts, _section({"unit": _texts, "price": _prices, "round_up": _json_leaf,
                                                 "models": st.dictionaries(_texts, _prices, max_size=2)}),
                               max_size=2),
    "llm_pricing": st.dictionaries(_texts, st.dictionaries(_texts, _section({"input": _prices, "output": _prices}),
                                                           max_size=2), max_size=2),
    "llm_default_model": st.dictionaries(_texts, _json_leaf, max_size=2),
    "forward": st.lists(_section({"name": _texts, "endpoint": _endpoints, "protocol": _texts,
                                  "headers": st.dictionaries(_texts, _texts, max_size=2), "timeout": _durations,
                                  "queue_max_bytes": st.one_of(st.integers(), _texts), "compression": _texts,
                                  "insecure": _json_leaf}), max_size=2),
    "limits": _section({"memory_mib": st.one_of(st.integers(), _texts)}),
    "pii": _section({"allow_keys": st.lists(_texts, max_size=2), "deny_keys": st.lists(_texts, max_size=2),
                     "phone_mode": _texts}),
    "metrics": _section({"tenant_attribute": _texts, "max_tenants": st.integers()}),
    "log_level": st.sampled_from(["info", "debug", "LOUD", ""]),
    "shutdown_timeout": _durations,
}


@st.composite
def config_documents(draw: Any) -> str:
    """The text of a config file: a YAML mapping of known sections with hostile values, or broken YAML."""
    import yaml

    how = draw(st.integers(0, 9))
    if how == 0:
        return draw(st.text(max_size=200))
    if how == 1:
        return draw(st.sampled_from(["a: [", "{", "- 1\n- 2", "x: 1\nx: 2", "&a [*a]", "!!python/object:os.system x",
                                     "a: !!binary '////'", "? [a]\n: 1", "null", "'s'", "~", "\t: 1", "a: *nope"]))
    doc = draw(st.fixed_dictionaries({}, optional=CONFIG_SECTIONS))
    if draw(st.integers(0, 5)) == 0:
        doc[draw(_small_text)] = draw(_json_any)
    try:
        return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    except (yaml.YAMLError, ValueError, TypeError):
        return json.dumps(doc, default=str)
