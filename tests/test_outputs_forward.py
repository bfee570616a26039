"""Forwarding from a real `otel-patter serve` to a real OTLP/gRPC and a real OTLP/HTTP downstream.

Each downstream gets exactly the sanitized requests (byte for byte what our PII stage makes
of them, rejected spans removed) plus one `patter.call.summary` span per finalization, with
its configured headers. Metrics and logs apps send us are forwarded scrubbed too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_patter.component import TraceBatch
from otel_patter.config import PiiConfig
from otel_patter.processors.pii import PiiProcessor
from otel_patter.processors.usage_guard import UsageGuard
from otel_patter.selfmetrics import SelfMetrics
from otel_patter.spans import attrs_dict
from tests.exporters.downstreams import GrpcDownstream, HttpDownstream
from tests.otlp import RECORDED_CALL_ID, T0, kvs, post, recorded_call, request, span
from tests.server import ServerProc

HC_KEY = "hcaik_01jexampleexampleexample"
FAST_RETRY = {"retry_initial_interval": "100ms", "retry_max_interval": "500ms"}


@pytest.fixture
def downstreams() -> Iterator[tuple[GrpcDownstream, HttpDownstream]]:
    g, h = GrpcDownstream().start(), HttpDownstream().start()
    yield g, h
    g.stop()
    h.stop()


def forward_config(g: GrpcDownstream, h: HttpDownstream) -> dict[str, Any]:
    return {"forward": [
        {"name": "jaeger", "endpoint": g.endpoint, "protocol": "grpc", "headers": {"x-tenant": "acme"}, **FAST_RETRY},
        {"name": "honeycomb", "endpoint": h.endpoint, "protocol": "http", "compression": "gzip",
         "headers": {"x-honeycomb-team": HC_KEY}, **FAST_RETRY},
    ]}


def pii_request() -> ExportTraceServiceRequest:
    """A tool span with a caller's number and a prompt, plus one span with impossible usage."""
    good = span("getpatter.tool", {"patter.call_id": RECORDED_CALL_ID, "patter.tool.name": "lookup",
                                   "patter.tool.query": "call me back on +1 (415) 555-0142",
                                   "gen_ai.prompt": "My card is 4111 1111 1111 1111"}, start=T0 + 10**9)
    bad = span("patter.billable", {"patter.call_id": RECORDED_CALL_ID, "patter.cost.stt_seconds": -3.0,
                                   "patter.stt.provider": "deepgram"}, start=T0 + 2 * 10**9)
    return request([good, bad])


def sanitized(req: ExportTraceServiceRequest) -> bytes:
    """What our ingest stages (usage guard, PII with the default config) make of a request."""
    batch = TraceBatch(request=copy.deepcopy(req))
    UsageGuard(SelfMetrics()).consume(batch)
    PiiProcessor(PiiConfig()).consume(batch)
    return batch.request.SerializeToString()


def summaries(received: list) -> list[tuple[dict[str, Any], Any]]:
    return [(res, s) for res, s in received if s.name == "patter.call.summary"]


def send_traces(s: ServerProc, reqs: list[ExportTraceServiceRequest]) -> None:
    for r in reqs:
        code, body, _ = post(s.http_endpoint + "/v1/traces", r.SerializeToString())
        assert code == 200, body


def test_both_downstreams_get_exactly_the_sanitized_requests_then_the_summary(
        make_server, downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams
    s = make_server(forward_config(g, h)).start()
    reqs = [*recorded_call(), pii_request()]
    send_traces(s, reqs)
    env = s.wait_final(RECORDED_CALL_ID)
    for d in (g, h):
        d.wait_spans(37 + 1 + 1)
        expected = b"".join(sanitized(r) for r in reqs)
        joined = b"".join(r.raw for r in d.received)  # alone or batched, the bytes of each request in order
        assert joined[:len(expected)] == expected
        (res, summary), = summaries(d.spans())
        assert res == {"service.name": "otel-patter", "service.version": "0.1.0"}
        assert summary.trace_id.hex() == env["trace_id"]
    attrs = next(a for a in (attrs_dict(sp.attributes) for _, sp in g.spans()) if a.get("patter.tool.name") == "lookup")
    assert attrs["patter.tool.query"] == "call me back on ***0142"
    assert "gen_ai.prompt" not in attrs
    assert not any(sp.name == "patter.billable" and "patter.cost.stt_seconds" in attrs_dict(sp.attributes)
                   and attrs_dict(sp.attributes)["patter.cost.stt_seconds"] < 0 for _, sp in g.spans())


def test_configured_headers_arrive_at_each_downstream(make_server,
                                                      downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams
    s = make_server(forward_config(g, h)).start()
    send_traces(s, recorded_call()[:1])
    g.wait_spans(1)
    h.wait_spans(1)
    assert g.received[0].headers["x-tenant"] == "acme"
    assert "x-honeycomb-team" not in g.received[0].headers
    assert h.received[0].headers["x-honeycomb-team"] == HC_KEY
    assert h.received[0].headers["content-encoding"] == "gzip"


def test_the_summary_span_carries_the_envelope_figures_and_no_cost_keys(
        make_server, downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams
    s = make_server(forward_config(g, h)).start()
    send_traces(s, recorded_call())
    env = s.wait_final(RECORDED_CALL_ID)
    g.wait_spans(38)
    (_, summary), = summaries(g.spans())
    attrs = attrs_dict(summary.attributes)
    assert attrs == {
        "patter.call_id": RECORDED_CALL_ID,
        "patter.summary.revision": 1,
        "patter.summary.usd_total": env["cost"]["total"],
        "patter.summary.usd_stt": env["cost"]["stt"],
        "patter.summary.usd_tts": env["cost"]["tts"],
        "patter.summary.usd_llm": env["cost"]["llm"],
        "patter.summary.usd_telephony": env["cost"]["telephony"],
        "patter.summary.usd_realtime": 0.0,
        "patter.summary.turns": 4,
        "patter.summary.duration_ms": env["duration_ms"],
        "patter.summary.p50_ms": env["latency"]["p50_ms"],
        "patter.summary.p95_ms": env["latency"]["p95_ms"],
        "patter.summary.p99_ms": env["latency"]["p99_ms"],
        "patter.summary.status": "completed",
        "patter.summary.final_reason": "hangup_usage",
        "patter.summary.cost_complete": True,
        "patter.summary.error_layer": "none",
        "patter.summary.pricing_version": env["pricing_version"],
    }
    assert env["cost"]["total"] == 0.022281
    assert not [k for k in attrs if k.startswith("patter.cost.")]
    assert summary.start_time_unix_nano // 1_000_000 == T0 // 1_000_000 + 657  # the call's first span
    assert len(summary.span_id) == 8 and summary.parent_span_id == b""


def test_a_reopened_call_sends_a_second_summary_with_the_next_revision(
        make_server, downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams
    s = make_server(forward_config(g, h)).start()
    send_traces(s, recorded_call())
    first = s.wait_final(RECORDED_CALL_ID)
    late = span("patter.billable", {"patter.cost.tts_chars": 100, "patter.tts.provider": "elevenlabs",
                                    "patter.call_id": RECORDED_CALL_ID, "patter.side": "uut"})
    send_traces(s, [request([late])])
    s.post(f"/api/v1/calls/{RECORDED_CALL_ID}/finalize")
    second = s.wait_final(RECORDED_CALL_ID)
    g.wait_spans(37 + 1 + 2)
    (_, a), (_, b) = summaries(g.spans())
    assert attrs_dict(a.attributes)["patter.summary.revision"] == first["revision"] == 1
    assert attrs_dict(b.attributes)["patter.summary.revision"] == second["revision"] == 2
    assert attrs_dict(b.attributes)["patter.summary.usd_tts"] == second["cost"]["tts"] == 0.01775
    assert attrs_dict(b.attributes)["patter.summary.final_reason"] == "finalize_request"
    assert a.trace_id == b.trace_id and a.span_id != b.span_id


def test_a_summary_teed_back_to_us_is_not_rolled_up(make_server,
                                                    downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams
    s = make_server(forward_config(g, h)).start()
    send_traces(s, recorded_call())
    first = s.wait_final(RECORDED_CALL_ID)
    g.wait_spans(38)
    teed = g.received[-1].request  # the summary request, exactly as a collector would tee it back
    assert teed.resource_spans[0].scope_spans[0].spans[0].name == "patter.call.summary"
    send_traces(s, [teed])
    code, again = s.get(f"/api/v1/calls/{RECORDED_CALL_ID}")
    assert code == 200
    assert again == first
    metrics = s.get("/metrics")[1].decode()
    assert 'otel_patter_spans_unattributed_total{reason="own_summary"} 1.0' in metrics
    assert 'patter_cost_usd_total{component="tts",provider="elevenlabs",tenant=""} 0.01275' in metrics


def test_metrics_and_logs_are_forwarded_scrubbed(make_server,
                                                 downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams
    s = make_server(forward_config(g, h)).start()
    m = ExportMetricsServiceRequest()
    rm = m.resource_metrics.add()
    rm.resource.attributes.extend(kvs({"service.name": "voice-app"}))
    metric = rm.scope_metrics.add().metrics.add(name="http.server.duration", unit="ms")
    for ms in (12.0, 40.0):
        dp = metric.gauge.data_points.add(as_double=ms, time_unix_nano=T0)
        dp.attributes.extend(kvs({"http.route": "/calls/+14155550142"}))
    lg = ExportLogsServiceRequest()
    rl = lg.resource_logs.add()
    rl.resource.attributes.extend(kvs({"service.name": "voice-app"}))
    rec = rl.scope_logs.add().log_records.add(time_unix_nano=T0, severity_text="INFO")
    rec.body.string_value = "caller +1 415 555 0142 said their card is 4111 1111 1111 1111"
    rec.attributes.extend(kvs({"patter.call_id": RECORDED_CALL_ID}))
    for path, msg in (("/v1/metrics", m), ("/v1/logs", lg)):
        code, body, _ = post(s.http_endpoint + path, msg.SerializeToString())
        assert code == 200, body
    for d in (g, h):
        d.wait(lambda d=d: {r.signal for r in d.received} == {"metrics", "logs"})
        got = {r.signal: r.request for r in d.received}
        points = got["metrics"].resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points
        assert [(p.as_double, attrs_dict(p.attributes)["http.route"]) for p in points] == [
            (12.0, "/calls/***0142"), (40.0, "/calls/***0142")]
        log_rec = got["logs"].resource_logs[0].scope_logs[0].log_records[0]
        assert not log_rec.HasField("body")
        assert attrs_dict(log_rec.attributes) == {"patter.call_id": RECORDED_CALL_ID}
    sent = s.get("/metrics")[1].decode()
    assert 'otel_patter_forward_sent_total{downstream="jaeger"} 3.0' in sent  # 2 data points + 1 log record


def test_a_failing_queue_write_refuses_the_request_with_unavailable(tmp_path, monkeypatch) -> None:
    import errno

    from otel_patter.exporters import queue as queue_mod
    from otel_patter.receivers.decode import Unavailable
    from tests.inproc import InProcess

    p = InProcess(tmp_path, forward=[{"name": "j", "endpoint": "http://127.0.0.1:9"}])
    (q,) = [d.queue for d in p.pipeline.forward.downstreams]
    q.open()
    real_write = queue_mod.os.write

    def enospc_on_the_queue(fd: int, data: bytes) -> int:
        if fd == q._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(queue_mod.os, "write", enospc_on_the_queue)
    with pytest.raises(Unavailable) as info:
        p.pipeline.consume_traces(recorded_call()[0], "test")
    assert info.value.message == "forward queue unavailable: disk full"
    assert info.value.retry_after == 5.0
    assert p.pipeline.metrics.registry.get_sample_value(
        "otel_patter_requests_refused_total", {"signal": "traces", "reason": "store"}) == 1
    assert p.pipeline.rollup.get(RECORDED_CALL_ID) is None  # not counted: the client will retry


def test_otel_exporter_otlp_variables_are_never_read(make_server,
                                                     downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams  # h stands for where OTEL_EXPORTER_OTLP_* would send: it must get nothing
    s = make_server({"forward": [{"name": "jaeger", "endpoint": g.endpoint, "protocol": "grpc", **FAST_RETRY}]},
                    env={"OTEL_EXPORTER_OTLP_ENDPOINT": h.endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": h.endpoint,
                         "OTEL_EXPORTER_OTLP_HEADERS": "x-leaked=yes", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                         "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}).start()
    send_traces(s, recorded_call()[:1])
    g.wait_spans(1)
    assert "x-leaked" not in g.received[0].headers
    assert "grpc-encoding" not in g.received[0].headers or g.received[0].headers["grpc-encoding"] == "identity"
    assert h.attempts == 0


def test_metrics_are_pushed_as_otlp_to_the_chosen_downstream(
        make_server, downstreams: tuple[GrpcDownstream, HttpDownstream]) -> None:
    g, h = downstreams
    s = make_server({**forward_config(g, h), "metrics": {"otlp_push": {"interval": "1s",
                                                                       "downstreams": ["honeycomb"]}}}).start()
    send_traces(s, recorded_call())
    env = s.wait_final(RECORDED_CALL_ID)

    def calls_pushed() -> float:
        for r in reversed([r for r in h.received if r.signal == "metrics"]):
            for m in r.request.resource_metrics[0].scope_metrics[0].metrics:
                if m.name == "patter_calls":
                    return sum(dp.as_double for dp in m.sum.data_points)
        return 0.0

    h.wait(lambda: calls_pushed() == 1, timeout=15)
    pushed = next(r for r in reversed(h.received) if r.signal == "metrics").request
    cost = next(m for m in pushed.resource_metrics[0].scope_metrics[0].metrics if m.name == "patter_cost_usd")
    assert round(sum(dp.as_double for dp in cost.sum.data_points), 6) == round(
        sum(env["cost"][c] for c in ("stt", "tts", "llm", "telephony")), 6)
    assert not [r for r in g.received if r.signal == "metrics"]  # jaeger was not chosen


class _Killed(BaseException):
    """The process dying at that instruction: what a kill -9 there leaves on disk is all that is left."""


def _queued_summaries(downstream: Any) -> list[Any]:
    q = downstream.queue
    found = []
    while (entry := q.peek()) is not None:
        for rs in ExportTraceServiceRequest.FromString(q.read(entry)).resource_spans:
            found += [s for ss in rs.scope_spans for s in ss.spans if s.name == "patter.call.summary"]
        q.pop(entry.seq)
    return found


def test_a_crash_while_queuing_the_summary_leaves_the_call_to_be_finalized_again(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_patter.exporters.forward import Downstream
    from tests.inproc import InProcess

    forward = [{"name": "jaeger", "endpoint": "http://127.0.0.1:9"}]  # down: everything stays queued
    first = InProcess(tmp_path, forward=forward)
    first.pipeline.forward.downstreams[0].queue.open()  # what Forwarder.start does (no sender task here)
    for req in recorded_call():
        first.pipeline.consume_traces(req, "test")
    enqueue = Downstream.enqueue

    def die_queuing_a_summary(self: Downstream, signal: str, payload: bytes, items: int) -> None:
        if b"patter.call.summary" in payload:
            raise _Killed
        enqueue(self, signal, payload, items)

    monkeypatch.setattr(Downstream, "enqueue", die_queuing_a_summary)
    with pytest.raises(_Killed):
        first.final(RECORDED_CALL_ID)
    monkeypatch.undo()

    restarted = InProcess(tmp_path, forward=forward)  # the same log dir, as after a restart
    restarted.pipeline.forward.downstreams[0].queue.open()
    assert restarted.pipeline.rollup.get(RECORDED_CALL_ID)["status"] == "in_progress"
    env = restarted.final(RECORDED_CALL_ID)
    (summary,) = _queued_summaries(restarted.pipeline.forward.downstreams[0])
    attrs = attrs_dict(summary.attributes)
    assert (attrs["patter.call_id"], attrs["patter.summary.revision"]) == (RECORDED_CALL_ID, env["revision"])
    assert attrs["patter.summary.usd_total"] == env["cost"]["total"] == 0.022281
