"""Bad input gets the OTLP spec's answer, is counted, and the server keeps serving."""

from __future__ import annotations

import gzip
import json

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.otlp import T0, post, recorded_call, request, span
from tests.server import ServerProc

CALL = "CA0123456789abcdef0123456789abcdef"


def traces(server: ServerProc) -> str:
    return server.http_endpoint + "/v1/traces"


def cost_span(attrs: dict, call: str = CALL) -> object:
    return span("patter.billable", {**attrs, "patter.call_id": call, "patter.side": "uut"})


def test_malformed_protobuf_is_400_with_a_status_body(server: ServerProc) -> None:
    code, body, _ = post(traces(server), b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert code == 400
    st = status_pb2.Status.FromString(body)
    assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "malformed protobuf" in st.message


def test_malformed_json_is_400(server: ServerProc) -> None:
    code, body, _ = post(traces(server), b'{"resourceSpans": [', "application/json")
    assert code == 400
    assert "malformed JSON" in json.loads(body)["message"]


def test_wrong_content_type_is_415(server: ServerProc) -> None:
    code, _, _ = post(traces(server), b"hello", "text/plain")
    assert code == 415


def test_oversized_body_is_413(make_server) -> None:
    s = make_server({"receivers": {"otlp": {"max_request_bytes": 4096}}}).start()
    big = request([span("getpatter.tts", {"patter.call.id": CALL, "getpatter.tts.text_len": 5})] * 200)
    code, _, _ = post(traces(s), big.SerializeToString())
    assert code == 413


def test_gzip_bomb_is_refused_without_inflating(make_server) -> None:
    s = make_server({"receivers": {"otlp": {"max_request_bytes": 65536}}}).start()
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024))
    code, _, _ = post(traces(s), bomb, headers={"Content-Encoding": "gzip"})
    assert code == 413
    assert s.get("/healthz")[0] == 200


def test_gzip_request_is_accepted(server: ServerProc) -> None:
    body = gzip.compress(recorded_call()[0].SerializeToString())
    code, _, _ = post(traces(server), body, headers={"Content-Encoding": "gzip"})
    assert code == 200


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"patter.cost.stt_seconds": float("nan"), "patter.stt.provider": "deepgram"}, "NaN"),
    ({"patter.cost.tts_chars": -30, "patter.tts.provider": "elevenlabs"}, "negative"),
    ({"patter.cost.telephony_minutes": 1441.0, "patter.telephony": "twilio"}, "over 1440"),
    ({"patter.cost.llm_input_tokens": 10_000_001, "patter.llm.provider": "openai"}, "over 1e+07"),
    ({"patter.cost.stt_seconds": "12", "patter.stt.provider": "deepgram"}, "not a number"),
])
def test_bad_usage_span_is_dropped_and_reported_in_partial_success(server: ServerProc, attrs: dict,
                                                                   reason: str) -> None:
    good = cost_span({"patter.cost.tts_chars": 30, "patter.tts.provider": "elevenlabs"})
    req = request([cost_span(attrs), good])
    code, body, _ = post(traces(server), req.SerializeToString())
    assert code == 200
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert resp.partial_success.rejected_spans == 1
    assert reason in resp.partial_success.error_message
    server.post(f"/api/v1/calls/{CALL}/finalize")
    env = server.wait_final(CALL)
    assert env["counts"]["spans"] == 1
    assert env["usage"]["tts"][0]["chars"] == 30
    assert "stt" not in env["usage"] and "telephony" not in env["usage"]
    _, metrics = server.get("/metrics")
    assert b'otel_patter_spans_rejected_total{reason="invalid_span"} 1.0' in metrics


def test_hostile_call_id_stays_inside_log_dir(server: ServerProc) -> None:
    hostile = "../../etc/pass wd"
    req = request([cost_span({"patter.cost.tts_chars": 12, "patter.tts.provider": "elevenlabs"}, call=hostile)])
    assert post(traces(server), req.SerializeToString())[0] == 200
    server.post("/api/v1/calls/" + "..%2F..%2Fetc%2Fpass%20wd" + "/finalize")
    env = server.wait_final(hostile)
    assert env["call_id"] == hostile
    files = server.envelope_files()
    assert len(files) == 1
    assert files[0].parent.name.startswith("_.._etc_pass_wd-")
    assert files[0].resolve().is_relative_to(server.log_dir.resolve())
    assert not (server.root / "etc").exists()


def test_overlong_call_id_is_forwarded_not_rolled_up(server: ServerProc) -> None:
    req = request([cost_span({"patter.cost.tts_chars": 12, "patter.tts.provider": "elevenlabs"}, call="C" * 5000)])
    code, body, _ = post(traces(server), req.SerializeToString())
    assert code == 200
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert resp.partial_success.rejected_spans == 0
    assert "invalid call id" in resp.partial_success.error_message
    assert server.envelope_files() == []


def test_grpc_malformed_ids_are_partial_success_and_oversize_is_resource_exhausted(make_server) -> None:
    s = make_server({"receivers": {"otlp": {"max_request_bytes": 4096}}}).start()
    with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        bad = request([span("getpatter.stt", {"patter.call.id": CALL}, trace=b"\x01" * 3)])
        resp = stub.Export(bad, timeout=10)
        assert resp.partial_success.rejected_spans == 1
        big = request([span("getpatter.tts", {"patter.call.id": CALL, "x": "y" * 100})] * 100)
        with pytest.raises(grpc.RpcError) as err:
            stub.Export(big, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_and_logs_are_accepted_and_counted(server: ServerProc) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    m = ExportMetricsServiceRequest()
    metric = m.resource_metrics.add().scope_metrics.add().metrics.add(name="http.server.duration")
    metric.sum.data_points.add(as_int=3, time_unix_nano=T0)
    assert post(server.http_endpoint + "/v1/metrics", m.SerializeToString())[0] == 200
    lg = ExportLogsServiceRequest()
    lg.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=T0).body.string_value = "hi"
    assert post(server.http_endpoint + "/v1/logs", lg.SerializeToString())[0] == 200
    _, metrics = server.get("/metrics")
    assert b"otel_patter_metric_points_received_total 1.0" in metrics
    assert b"otel_patter_log_records_received_total 1.0" in metrics


def test_grpc_export_without_a_request_message_is_invalid_argument(server: ServerProc) -> None:
    """A hand-built streaming client that half-closes before sending anything: refused, never a hang."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        export = ch.stream_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as err:
            export(iter(()), timeout=10)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "no request message")
