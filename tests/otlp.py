"""Build OTLP requests by hand for tests that need exact bytes (malformed, hostile, retried)."""

from __future__ import annotations

import itertools
import os
import time
import urllib.error
import urllib.request
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span

T0 = 1_795_412_722_000_000_000  # 2026-11-23T05:45:22Z, the recorded call's day


def av(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[av(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=kvs(v)))
    return AnyValue(string_value=str(v))


def kvs(d: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=av(v)) for k, v in d.items()]


def span(name: str, attrs: dict[str, Any], *, trace: bytes | None = None, span_id: bytes | None = None,
         parent: bytes = b"", start: int = T0, dur_ms: float = 1.0, events: list[tuple[str, int, dict]] = (),
         status: int = 0) -> Span:
    s = Span(name=name, trace_id=trace or os.urandom(16), span_id=span_id or os.urandom(8),
             parent_span_id=parent, start_time_unix_nano=start, end_time_unix_nano=start + int(dur_ms * 1e6),
             kind=Span.SPAN_KIND_INTERNAL)
    s.attributes.extend(kvs(attrs))
    for ename, t, eattrs in events:
        e = s.events.add(name=ename, time_unix_nano=t)
        e.attributes.extend(kvs(eattrs))
    s.status.code = status
    return s


def tts_span(call_id: str, chars: int = 12) -> Span:
    """What a Patter call's agent side emits for one synthesized reply: a billable span with TTS characters."""
    return span("patter.billable", {"patter.call_id": call_id, "patter.side": "uut",
                                    "patter.cost.tts_chars": chars, "patter.tts.provider": "elevenlabs"})


def request(spans: list[Span], resource: dict[str, Any] | None = None,
            scope: str = "patter") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs(resource or {"service.name": "patter",
                                                   "service.instance.id": "10fed054-98ac-4b2b-b2e8-65a6fca6b7eb"}))
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    ss.spans.extend(spans)
    return req


def post(url: str, body: bytes, content_type: str = "application/x-protobuf",
         headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def now_ns() -> int:
    return time.time_ns()


# -- the real recorded getpatter 0.7.0 call (research harness, emit_call.py) ----------------------
RECORDED_CALL_ID = "CA-offline-sim-0001"


def _load(name: str) -> list[dict[str, Any]]:
    import json
    from pathlib import Path

    return json.loads((Path(__file__).parent / "data" / name).read_text())


def recorded_call(call_id: str = RECORDED_CALL_ID, *, fastapi: bool = False, shift_ns: int = 0,
                  id_salt: bytes = b"") -> list[ExportTraceServiceRequest]:
    """The recorded call's spans, re-addressed to `call_id`, in the 4 POSTs the SDK made.

    `id_salt` derives fresh trace/span ids (so several copies are distinct calls), keeping
    the tree intact. Spans are sent in end order, as the BatchSpanProcessor does.
    """
    import hashlib

    spans = _load("recorded_call_fastapi.json" if fastapi else "recorded_call_getpatter_only.json")

    def rid(hex_id: str, n: int) -> bytes:
        if not hex_id:
            return b""
        return hashlib.sha256(id_salt + bytes.fromhex(hex_id)).digest()[:n] if id_salt else bytes.fromhex(hex_id)

    def swap(v: Any) -> Any:
        return call_id if v == RECORDED_CALL_ID else v

    ordered = sorted(spans, key=lambda s: s["end"])
    out: list[Span] = []
    for s in ordered:
        sp = span(s["name"], {k: swap(v) for k, v in s["attrs"].items()},
                  trace=rid(s["trace_id"], 16), span_id=rid(s["span_id"], 8), parent=rid(s["parent_span_id"], 8),
                  start=s["start"] + shift_ns, dur_ms=(s["end"] - s["start"]) / 1e6, status=s["status"],
                  events=[(n, s["end"] + shift_ns, a) for n, a in s["events"]])
        sp.kind = s["kind"]
        out.append((s["scope"], sp, s["resource"]))  # type: ignore[arg-type]
    # four POSTs as recorded: flushes every ~5 s of call time
    cuts = [len(out) * k // 4 for k in range(5)]
    batches = []
    for a, b in itertools.pairwise(cuts):
        req = ExportTraceServiceRequest()
        for scope, sp, res in out[a:b]:  # type: ignore[misc]
            rs = next((r for r in req.resource_spans if r.scope_spans[0].scope.name == scope), None)
            if rs is None:
                rs = req.resource_spans.add()
                rs.resource.attributes.extend(kvs(res))
                rs.scope_spans.add().scope.name = scope
            rs.scope_spans[0].spans.append(sp)
        batches.append(req)
    return batches
