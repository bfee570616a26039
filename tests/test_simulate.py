"""`otel_patter.simulate` against tiny in-process OTLP sinks (gRPC and HTTP, protobuf and JSON)."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_patter import simulate
from otel_patter.simulate import SimulatedCall, build_calls, emit

CALL_SID = re.compile(r"^CA[0-9a-f]{32}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
SERVER_KIND = 2


# -- normalised spans ---------------------------------------------------------------------------------
def _pb_value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def _pb_attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in kvs}


def _from_pb(req: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    out = []
    for rs in req.resource_spans:
        res = _pb_attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append({"trace_id": sp.trace_id.hex(), "span_id": sp.span_id.hex(),
                            "parent": sp.parent_span_id.hex(), "name": sp.name, "kind": sp.kind,
                            "start": sp.start_time_unix_nano, "end": sp.end_time_unix_nano,
                            "attrs": _pb_attrs(sp.attributes), "scope": ss.scope.name, "resource": res,
                            "events": [(e.name, _pb_attrs(e.attributes), e.time_unix_nano) for e in sp.events]})
    return out


def _json_value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    return None


def _json_attrs(kvs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {kv["key"]: _json_value(kv.get("value", {})) for kv in kvs or []}


def _from_json(obj: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for rs in obj.get("resourceSpans", []):
        res = _json_attrs(rs.get("resource", {}).get("attributes"))
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                out.append({"trace_id": sp["traceId"], "span_id": sp["spanId"],
                            "parent": sp.get("parentSpanId", ""), "name": sp["name"], "kind": int(sp["kind"]),
                            "start": int(sp["startTimeUnixNano"]), "end": int(sp["endTimeUnixNano"]),
                            "attrs": _json_attrs(sp.get("attributes")), "scope": ss.get("scope", {}).get("name"),
                            "resource": res,
                            "events": [(e["name"], _json_attrs(e.get("attributes")), int(e["timeUnixNano"]))
                                       for e in sp.get("events", [])]})
    return out


# -- sinks ------------------------------------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[list[dict[str, Any]]] = []
        self.raw_json: list[dict[str, Any]] = []
        self.content_types: list[str] = []

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.raw_json.clear()
            self.content_types.clear()

    def add(self, spans: list[dict[str, Any]], content_type: str, raw: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.requests.append(spans)
            self.content_types.append(content_type)
            if raw is not None:
                self.raw_json.append(raw)

    def spans(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s for r in self.requests for s in r]


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        self.sink.add(_from_pb(request), "grpc")
        return ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def grpc_sink() -> Iterator[tuple[Sink, str]]:
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(sink), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, f"http://127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def http_sink() -> Iterator[tuple[Sink, str]]:
    sink = Sink()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            ctype = self.headers.get("Content-Type", "")
            if self.path != "/v1/traces":
                self._answer(404, b"", "text/plain")
            elif ctype.startswith("application/json"):
                obj = json.loads(body)
                sink.add(_from_json(obj), ctype, raw=obj)
                self._answer(200, b"{}", "application/json")
            else:
                sink.add(_from_pb(ExportTraceServiceRequest.FromString(body)), ctype)
                self._answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        def _answer(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def sinks(grpc_sink: tuple[Sink, str], http_sink: tuple[Sink, str]) -> dict[str, tuple[Sink, str]]:
    grpc_sink[0].reset()
    http_sink[0].reset()
    return {"grpc": grpc_sink, "http": http_sink, "http/json": http_sink}


# -- helpers ------------------------------------------------------------------------------------------
def _call_of(spans: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Group received spans by (call id, side): the span's own id, else one from its trace."""
    by_trace: dict[str, str] = {}
    for s in spans:
        for key in ("patter.call_id", "patter.call.id", "getpatter.call.id"):
            if s["attrs"].get(key):
                by_trace.setdefault(s["trace_id"], s["attrs"][key])
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        side = s["resource"].get("patter.side", "uut")
        out[(by_trace[s["trace_id"]], side)].append(s)
    return out


def _usage_received(spans: list[dict[str, Any]]) -> dict[str, Any]:
    model = {e[1]["gen_ai.provider.name"]: e[1]["gen_ai.request.model"] for s in spans for e in s["events"]
             if e[0] == "patter.event.llm_first_token"}
    stt: dict[str, float] = defaultdict(float)
    tts: dict[str, int] = defaultdict(int)
    llm: dict[tuple[str, str | None], list[int]] = {}
    tel: dict[str, float] = defaultdict(float)
    for s in spans:
        a = s["attrs"]
        if "patter.cost.stt_seconds" in a:
            stt[a["patter.stt.provider"]] += a["patter.cost.stt_seconds"]
        if "patter.cost.tts_chars" in a:
            tts[a["patter.tts.provider"]] += a["patter.cost.tts_chars"]
        if "patter.cost.llm_input_tokens" in a:
            tot = llm.setdefault((a["patter.llm.provider"], model.get(a["patter.llm.provider"])), [0, 0])
            tot[0] += a["patter.cost.llm_input_tokens"]
            tot[1] += a["patter.cost.llm_output_tokens"]
        if "patter.cost.telephony_minutes" in a:
            tel[a["patter.telephony"]] += a["patter.cost.telephony_minutes"]
    return {"stt_seconds": dict(stt), "tts_chars": dict(tts), "llm": llm, "telephony_minutes": dict(tel)}


def _assert_usage(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["tts_chars"] == want["tts_chars"]
    assert got["llm"] == want["llm"]
    for key in ("stt_seconds", "telephony_minutes"):
        assert set(got[key]) == set(want[key])
        for p, v in want[key].items():
            assert got[key][p] == pytest.approx(v, rel=1e-12)


def _send(sinks: dict[str, tuple[Sink, str]], protocol: str, plans: list[simulate.CallPlan]
          ) -> tuple[Sink, list[SimulatedCall], list[dict[str, Any]]]:
    sink, endpoint = sinks[protocol]
    sent = emit(plans, endpoint=endpoint, protocol=protocol)
    return sink, sent, sink.spans()


# -- tests ------------------------------------------------------------------------------------------
def test_build_calls_is_deterministic() -> None:
    a = build_calls(3, seed=5, start_ns=1_795_412_722_000_000_000)
    b = build_calls(3, seed=5, start_ns=1_795_412_722_000_000_000)
    assert [p.expected() for p in a] == [p.expected() for p in b]
    assert [(p.call_id, p.side) for p in a] == [(p.call_id, p.side) for p in b]
    c = build_calls(3, seed=6, start_ns=1_795_412_722_000_000_000)
    assert {p.call_id for p in a}.isdisjoint({p.call_id for p in c})
    assert all(CALL_SID.match(p.call_id) for p in a)
    assert [p.side for p in a] == ["uut", "driver"] * 3
    assert a[0].call_id == a[1].call_id and a[0].service_instance_id != a[1].service_instance_id
    # 0.7 sends no span at WebSocket accept: the first one is the first final transcript, seconds later
    assert 1_795_412_722_000_000_000 < min(p.start_ns for p in a) < 1_795_412_722_000_000_000 + 30 * 10**9
    f = build_calls(1, shape="fastapi", seed=5, start_ns=1_795_412_722_000_000_000)
    assert f[0].start_ns == 1_795_412_722_000_000_000
    uut = a[0].expected()
    assert 5 < (uut.end_ns - uut.start_ns) / 1e9 < 120  # seconds long, not milliseconds
    # without start_ns the calls lie in the recent past
    now = time.time_ns()
    d = build_calls(2, seed=5)
    assert max(p.end_ns for p in d) < now and min(p.start_ns for p in d) > now - 600 * 10**9


@pytest.mark.parametrize("protocol", ["grpc", "http", "http/json"])
def test_shape_07(sinks: dict[str, tuple[Sink, str]], protocol: str) -> None:
    plans = build_calls(2, shape="0.7", turns=4, seed=1)
    sink, sent, spans = _send(sinks, protocol, plans)
    assert len(spans) == sum(c.spans for c in sent)
    assert len({(s["trace_id"], s["span_id"]) for s in spans}) == len(spans)
    got = _call_of(spans)
    assert set(got) == {(c.call_id, c.side) for c in sent}
    blanks = 0
    for c in sent:
        mine = got[(c.call_id, c.side)]
        names = Counter(s["name"] for s in mine)
        assert dict(names) == c.span_names
        roots = [s for s in mine if not s["parent"]]
        # every root starts its own trace (research §6.1)
        assert len({s["trace_id"] for s in roots}) == len(roots) == c.traces
        assert len({s["trace_id"] for s in mine}) == len(roots)
        llm_roots = [s for s in roots if s["name"] == "getpatter.llm"]
        billable = [s for s in mine if s["name"] == "patter.billable"]
        n = c.turns
        assert names["getpatter.stt"] == names["getpatter.endpoint"] == len(llm_roots) == n
        assert sum(1 for b in billable if "patter.cost.stt_seconds" in b["attrs"]) == n
        assert sum(1 for b in billable if "patter.latency.ttfb_ms" in b["attrs"]) == n
        assert all(s["parent"] == "" for s in mine if s["name"] in (
            "getpatter.stt", "getpatter.endpoint", "getpatter.bargein", "patter.billable"))
        by_id = {s["span_id"]: s for s in mine}
        if c.side == "uut":
            assert n == 4
            assert names["getpatter.llm"] == 9 and names["getpatter.tool"] == 1 and names["getpatter.bargein"] == 1
            assert names["patter.billable"] == 9
            tel = [b for b in billable if "patter.cost.telephony_minutes" in b["attrs"]]
            assert len(tel) == 1 and tel[0]["attrs"]["patter.telephony"] == "twilio"
            assert tel[0]["attrs"]["patter.direction"] == "inbound"
            minutes = tel[0]["attrs"]["patter.cost.telephony_minutes"]
            assert minutes != round(minutes, 4)  # raw, not rounded
            assert "patter.side" not in mine[0]["resource"]
            bargein = next(s for s in mine if s["name"] == "getpatter.bargein")
            assert bargein["events"][0][0] == "patter.event.agent_speech_ended"
            assert bargein["events"][0][1] == {"patter.turn.idx": 2, "patter.speech.duration_ms": 0,
                                               "patter.turn.interrupted": True}
            tool = next(s for s in mine if s["name"] == "getpatter.tool")
            assert tool["attrs"]["patter.tool.transport"] == "handler"
            assert by_id[tool["parent"]]["name"] == "getpatter.llm" and not by_id[tool["parent"]]["parent"]
        else:
            assert n == 2 and names["getpatter.llm"] == 4 and names["patter.billable"] == 4
            assert "getpatter.tool" not in names and "getpatter.bargein" not in names
            assert mine[0]["resource"]["patter.side"] == "driver"
        # resource and scopes as the SDK sends them
        assert {s["resource"]["service.instance.id"] for s in mine} == {c.service_instance_id}
        for s in mine:
            assert s["resource"]["service.name"] == "patter"
            assert s["resource"]["telemetry.sdk.language"] == "python"
            assert s["scope"] == ("getpatter.observability" if s["name"] == "patter.billable" else "patter")
            assert s["end"] > s["start"]
        # ids: patter.call.id on getpatter spans, patter.call_id + patter.side on cost spans
        for s in mine:
            a = s["attrs"]
            if s["name"].startswith("getpatter."):
                if a["patter.call.id"] == "":
                    blanks += 1
                    assert c.side == "uut" and plans[0].call_id == c.call_id
                    assert "patter.llm.iteration" in a and by_id[s["parent"]]["attrs"]["patter.call.id"] == c.call_id
                    assert by_id[s["parent"]]["trace_id"] == s["trace_id"]
                else:
                    assert a["patter.call.id"] == c.call_id
                assert "getpatter.call.id" not in a
            if any(k.startswith(("patter.cost.", "patter.latency.")) for k in a):
                assert a["patter.call_id"] == c.call_id and a["patter.side"] == c.side
        # inner llm spans: cost attrs; the model only in the first-token event
        inner = [s for s in mine if s["name"] == "getpatter.llm" and s["parent"]]
        assert len(inner) == names["getpatter.llm"] - n
        assert all("patter.cost.llm_input_tokens" in s["attrs"] for s in inner)
        firsts = [e for s in inner for e in s["events"] if e[0] == "patter.event.llm_first_token"]
        assert len(firsts) == n and all(e[1]["gen_ai.request.model"] == "gpt-4o-mini" for e in firsts)
        tts = [s for s in mine if s["name"] == "getpatter.tts"]
        assert all(by_id[s["parent"]]["name"] == "getpatter.llm" for s in tts)
        assert sum(1 for s in tts if s["events"]) == n
        _assert_usage(_usage_received(mine), c.usage)
        ttfb = sorted((s["start"], s["attrs"]["patter.latency.ttfb_ms"]) for s in billable
                      if "patter.latency.ttfb_ms" in s["attrs"])
        assert [v for _, v in ttfb] == c.ttfb_ms
        # children were exported before their parents
        pos = {s["span_id"]: i for i, s in enumerate(spans)}
        for s in mine:
            if s["parent"]:
                assert pos[s["span_id"]] < pos[s["parent"]]
    assert blanks == 1  # one inner span per ten calls carries patter.call.id ""
    if protocol == "http/json":
        assert sink.content_types and all(t.startswith("application/json") for t in sink.content_types)
        for obj in sink.raw_json:
            for rs in obj["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        assert HEX32.match(sp["traceId"]) and HEX16.match(sp["spanId"])
                        assert sp.get("parentSpanId", "") == "" or HEX16.match(sp["parentSpanId"])
    elif protocol == "http":
        assert all(t == "application/x-protobuf" for t in sink.content_types)


@pytest.mark.parametrize("protocol", ["grpc", "http", "http/json"])
def test_shape_06(sinks: dict[str, tuple[Sink, str]], protocol: str) -> None:
    plans = build_calls(2, shape="0.6", turns=4, seed=2)
    _, sent, spans = _send(sinks, protocol, plans)
    assert len(spans) == sum(c.spans for c in sent)
    got = _call_of(spans)
    for c in sent:
        mine = got[(c.call_id, c.side)]
        assert dict(Counter(s["name"] for s in mine)) == c.span_names
        assert len({s["trace_id"] for s in mine}) == 1 == c.traces
        roots = [s for s in mine if not s["parent"]]
        assert len(roots) == 1 and roots[0]["name"] == "getpatter.call"
        root = roots[0]
        assert root["attrs"]["getpatter.call.id"] == c.call_id
        assert root["attrs"]["getpatter.call.direction"] == ("inbound" if c.side == "uut" else "outbound")
        assert root["attrs"]["getpatter.call.provider_mode"] == "pipeline"
        assert root["end"] == max(s["end"] for s in mine)
        assert spans.index(root) == max(spans.index(s) for s in mine)  # the root ends and arrives last
        by_id = {s["span_id"]: s for s in mine}
        for s in mine:
            a = s["attrs"]
            assert a["getpatter.call.id"] == c.call_id
            assert "patter.call.id" not in a
            if s is not root:
                assert by_id[s["parent"]]["name"] in ("getpatter.call", "getpatter.llm")
            if any(k.startswith(("patter.cost.", "patter.latency.")) for k in a):
                assert a["patter.call_id"] == c.call_id and a["patter.side"] == c.side
        llm = [s for s in mine if s["name"] == "getpatter.llm"]
        assert all("getpatter.llm.iteration" in s["attrs"] and "getpatter.llm.ttft_ms" in s["attrs"] for s in llm)
        assert "patter.billable" not in c.span_names
        if c.side == "uut":
            assert len(llm) == 5 and c.span_names["getpatter.tool"] == 1 and c.span_names["getpatter.bargein"] == 1
            assert c.span_names["getpatter.stt"] == 4 and c.span_names["getpatter.endpoint"] == 4
            assert root["attrs"]["patter.telephony"] == "twilio"
        else:
            assert len(llm) == 2 and "patter.cost.telephony_minutes" not in root["attrs"]
        _assert_usage(_usage_received(mine), c.usage)
        assert all(m is None for (_, m) in c.usage["llm"])  # no model on 0.6 spans
        assert len(c.ttfb_ms) == c.turns


@pytest.mark.parametrize("protocol", ["grpc", "http", "http/json"])
def test_shape_fastapi(sinks: dict[str, tuple[Sink, str]], protocol: str) -> None:
    plans = build_calls(2, shape="fastapi", turns=4, seed=3)
    _, sent, spans = _send(sinks, protocol, plans)
    assert len(spans) == sum(c.spans for c in sent)
    got = _call_of(spans)
    for c in sent:
        mine = got[(c.call_id, c.side)]
        names = Counter(s["name"] for s in mine)
        assert dict(names) == c.span_names
        assert len({s["trace_id"] for s in mine}) == 1
        roots = [s for s in mine if not s["parent"]]
        assert len(roots) == 1 and roots[0]["name"] == "WS /ws/stream/{call_id}" and roots[0]["kind"] == SERVER_KIND
        ep = next(s for s in mine if s["name"] == "fastapi.endpoint")
        assert ep["parent"] == roots[0]["span_id"] and ep["scope"] == "fastapi"
        assert "patter.billable" not in names
        by_id = {s["span_id"]: s for s in mine}
        top = [s for s in mine if s["parent"] == ep["span_id"]]
        assert Counter(s["name"] for s in top)["getpatter.llm"] == c.turns
        # the fallback attrs landed on fastapi.endpoint, and only the last values survived
        a = ep["attrs"]
        assert a["patter.call_id"] == c.call_id and a["patter.side"] == c.side
        assert c.usage["stt_seconds"] == {"deepgram": a["patter.cost.stt_seconds"]}
        assert c.ttfb_ms == [a["patter.latency.ttfb_ms"]]
        ev = Counter(e[0] for e in ep["events"])
        assert ev["patter.event.user_speech_eos"] == ev["patter.event.agent_speech_started"] == c.turns
        if c.side == "uut":
            assert names["getpatter.llm"] == 9 and names["getpatter.bargein"] == 1 and names["getpatter.tool"] == 1
            assert a["patter.telephony"] == "twilio" and a["patter.cost.telephony_minutes"] > 0
            plan = next(p for p in plans if p.call_id == c.call_id and p.side == "uut")
            # earlier stt_seconds values were overwritten: the planned total is larger than what survived
            planned = [u.attrs["patter.cost.stt_seconds"] for n in plan.nodes() for u in n.updates
                       if "patter.cost.stt_seconds" in u.attrs]
            assert len(planned) == 4 and sum(planned) > a["patter.cost.stt_seconds"] == planned[-1]
        else:
            assert "patter.cost.telephony_minutes" not in a
        for s in mine:
            if s["name"].startswith("getpatter."):
                assert by_id[s["parent"]]["name"] in ("fastapi.endpoint", "getpatter.llm")
        _assert_usage(_usage_received(mine), c.usage)


def test_many_calls_mix_in_batches(sinks: dict[str, tuple[Sink, str]]) -> None:
    plans = build_calls(12, shape="0.7", turns=3, seed=4, with_driver=False)
    sink, sent, spans = _send(sinks, "grpc", plans)
    assert len(spans) == sum(c.spans for c in sent)
    got = _call_of(spans)
    for c in sent:
        _assert_usage(_usage_received(got[(c.call_id, "uut")]), c.usage)
    # concurrent calls interleave in time, so a request carries spans of several calls
    mixed = [r for r in sink.requests if len(_call_of(r)) > 1]
    assert mixed
    assert sum(1 for p in plans for n in p.nodes() if n.attrs.get("patter.call.id") == "") == 2  # calls 0 and 10


def test_resend_is_a_retry_with_the_same_ids(sinks: dict[str, tuple[Sink, str]]) -> None:
    plans = build_calls(1, seed=9, with_driver=False)
    sink, _, first = _send(sinks, "http", plans)
    sink.reset()
    _, _, second = _send(sinks, "http", plans)
    assert sorted((s["trace_id"], s["span_id"]) for s in first) == sorted((s["trace_id"], s["span_id"]) for s in second)
    sink.reset()
    emit(plans, endpoint=sinks["http"][1], protocol="http", random_ids=True, gzip=True)
    third = sink.spans()
    assert not {s["span_id"] for s in third} & {s["span_id"] for s in first}


def test_cli_prints_json(sinks: dict[str, tuple[Sink, str]]) -> None:
    parser = argparse.ArgumentParser(prog="otel-patter")
    simulate.add_parser(parser.add_subparsers(dest="cmd"))
    sink, endpoint = sinks["http/json"]
    args = parser.parse_args(["simulate", "--calls", "2", "--endpoint", endpoint, "--protocol", "http/json",
                              "--shape", "0.7", "--turns", "2", "--seed", "0", "--json"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    calls = json.loads(out.getvalue())
    assert [c["side"] for c in calls] == ["uut", "driver", "uut", "driver"]
    assert len(sink.spans()) == sum(c["spans"] for c in calls)
    assert calls[0]["usage"]["llm"][0]["model"] == "gpt-4o-mini"
    assert calls[0]["usage"]["telephony_minutes"]["twilio"] > 0 and calls[1]["usage"]["telephony_minutes"] == {}
    # the plain form: one line per call
    sink.reset()
    args = parser.parse_args(["simulate", "--calls", "1", "--endpoint", endpoint, "--protocol", "http",
                              "--no-driver"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and CALL_SID.match(lines[0].split()[0]) and "tts_chars[elevenlabs]=" in lines[0]


def test_unreachable_endpoint_is_an_error() -> None:
    plans = build_calls(1, seed=0, with_driver=False)
    t = time.monotonic()
    with pytest.raises(simulate.SimulationError):
        emit(plans, endpoint="http://127.0.0.1:9", protocol="http", timeout=1.0)
    assert time.monotonic() - t < 5
