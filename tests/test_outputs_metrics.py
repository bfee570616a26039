"""Aggregated `patter_*` metrics from finalized calls: exact figures, deltas on reopen, safe labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.inproc import InProcess
from tests.otlp import RECORDED_CALL_ID, T0, recorded_call, span

RESOURCE = {"service.name": "patter", "service.instance.id": "10fed054-98ac-4b2b-b2e8-65a6fca6b7eb"}


def value(p: InProcess, name: str, **labels: str) -> float | None:
    return p.pipeline.metrics.registry.get_sample_value(name, {"tenant": "", **labels})


def send_recorded(p: InProcess, call_id: str = RECORDED_CALL_ID) -> dict[str, Any]:
    for r in recorded_call(call_id, id_salt=b"" if call_id == RECORDED_CALL_ID else call_id.encode()):
        p.pipeline.consume_traces(r, "test")
    return p.final(call_id)


def billable(call_id: str, **attrs: Any) -> Any:
    return span("patter.billable", {"patter.call_id": call_id, "patter.side": "uut", **attrs}, start=T0)


def test_a_final_call_adds_its_figures_to_every_family(tmp_path: Path) -> None:
    p = InProcess(tmp_path)
    env = send_recorded(p)
    assert value(p, "patter_calls_total", status="completed") == 1
    assert value(p, "patter_cost_usd_total", component="stt", provider="deepgram") == 0.000802
    assert value(p, "patter_cost_usd_total", component="tts", provider="elevenlabs") == 0.01275
    assert value(p, "patter_cost_usd_total", component="llm", provider="openai") == 0.00023
    assert value(p, "patter_cost_usd_total", component="telephony", provider="twilio") == 0.0085
    assert value(p, "patter_stt_seconds_total", provider="deepgram") == 10.0199375
    assert value(p, "patter_tts_chars_total", provider="elevenlabs") == 255
    assert value(p, "patter_llm_tokens_total", provider="openai", model="gpt-4o-mini", direction="input") == 1270
    assert value(p, "patter_llm_tokens_total", provider="openai", model="gpt-4o-mini", direction="output") == 65
    assert value(p, "patter_telephony_minutes_total", provider="twilio") == env["usage"]["telephony"][0]["minutes"]
    assert value(p, "patter_call_duration_seconds_sum") == 14.8059
    assert value(p, "patter_call_cost_usd_sum") == env["cost"]["total"] == 0.022281
    assert value(p, "patter_call_cost_usd_bucket", le="0.025") == 1
    assert value(p, "patter_call_cost_usd_bucket", le="0.01") == 0
    # the four turns' ttfb: 760.4, 7.0, 158.4, 9.1 ms
    assert value(p, "patter_turn_latency_ms_count") == 4
    assert value(p, "patter_turn_latency_ms_sum") == pytest.approx(934.9)
    assert [value(p, "patter_turn_latency_ms_bucket", le=le) for le in ("100.0", "200.0", "750.0", "1000.0")] == [
        2, 3, 3, 4]
    assert p.pipeline.metrics.registry.get_sample_value("patter_calls_active") == 0


def test_every_family_is_on_the_admin_metrics_page(tmp_path: Path) -> None:
    p = InProcess(tmp_path)
    send_recorded(p)
    text = generate_latest(p.pipeline.metrics.registry).decode()
    for family, kind in (("patter_calls", "counter"), ("patter_calls_active", "gauge"),
                         ("patter_cost_usd", "counter"), ("patter_call_duration_seconds", "histogram"),
                         ("patter_turn_latency_ms", "histogram"), ("patter_call_cost_usd", "histogram"),
                         ("patter_stt_seconds", "counter"), ("patter_tts_chars", "counter"),
                         ("patter_llm_tokens", "counter"), ("patter_telephony_minutes", "counter"),
                         ("patter_errors", "counter"), ("patter_disconnects", "counter")):
        name = f"{family}_total" if kind == "counter" else family  # text format 0.0.4 names counters so
        assert f"# TYPE {name} {kind}\n" in text


def test_calls_active_counts_calls_not_yet_final(tmp_path: Path) -> None:
    p = InProcess(tmp_path)
    for r in recorded_call()[:2]:
        p.pipeline.consume_traces(r, "test")
    assert p.pipeline.metrics.registry.get_sample_value("patter_calls_active") == 1
    p.final(RECORDED_CALL_ID)
    assert p.pipeline.metrics.registry.get_sample_value("patter_calls_active") == 0


def test_a_reopened_call_adds_only_its_delta(tmp_path: Path) -> None:
    p = InProcess(tmp_path)
    send_recorded(p)
    p.send([billable(RECORDED_CALL_ID, **{"patter.cost.tts_chars": 100, "patter.tts.provider": "elevenlabs",
                                          "patter.latency.ttfb_ms": 420.0})])
    second = p.final(RECORDED_CALL_ID)
    assert second["revision"] == 2
    assert value(p, "patter_tts_chars_total", provider="elevenlabs") == 355
    assert value(p, "patter_cost_usd_total", component="tts", provider="elevenlabs") == 0.01775
    assert value(p, "patter_stt_seconds_total", provider="deepgram") == 10.0199375  # unchanged
    assert value(p, "patter_turn_latency_ms_count") == 5  # only the new turn
    assert value(p, "patter_turn_latency_ms_sum") == pytest.approx(934.9 + 420.0)
    # per-call observations are made once, at the first finalization
    assert value(p, "patter_calls_total", status="completed") == 1
    assert value(p, "patter_call_duration_seconds_count") == 1
    assert value(p, "patter_call_cost_usd_count") == 1


def test_a_call_reopened_after_a_restart_adds_only_its_delta(tmp_path: Path) -> None:
    send_recorded(InProcess(tmp_path))  # counted by the process before the restart
    p = InProcess(tmp_path)  # the restart: counters start from zero, the call is final on disk
    p.send([billable(RECORDED_CALL_ID, **{"patter.cost.tts_chars": 100, "patter.tts.provider": "elevenlabs",
                                          "patter.latency.ttfb_ms": 420.0})])
    assert p.final(RECORDED_CALL_ID)["revision"] == 2
    assert value(p, "patter_tts_chars_total", provider="elevenlabs") == 100
    assert value(p, "patter_cost_usd_total", component="tts", provider="elevenlabs") == 0.005  # 0.01775 - 0.01275
    assert value(p, "patter_stt_seconds_total", provider="deepgram") is None  # nothing new
    assert value(p, "patter_turn_latency_ms_count") == 1  # only the new turn
    assert value(p, "patter_calls_total", status="completed") is None  # counted once, before the restart


def test_a_teed_back_summary_changes_no_metric(tmp_path: Path) -> None:
    p = InProcess(tmp_path, forward=[{"name": "j", "endpoint": "http://127.0.0.1:9"}])
    (q,) = [d.queue for d in p.pipeline.forward.downstreams]
    q.open()
    send_recorded(p)
    before = generate_latest(p.pipeline.metrics.registry).decode()
    *_, last = list(q.entries)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    summary = ExportTraceServiceRequest.FromString(q.read(last))
    assert summary.resource_spans[0].scope_spans[0].spans[0].name == "patter.call.summary"
    p.pipeline.consume_traces(summary, "test")
    p.pipeline.rollup.tick()
    after = generate_latest(p.pipeline.metrics.registry).decode()
    patter_lines = [ln for ln in after.splitlines() if ln.startswith("patter_")]
    assert patter_lines == [ln for ln in before.splitlines() if ln.startswith("patter_")]
    assert p.pipeline.rollup.get(RECORDED_CALL_ID)["revision"] == 1


def test_off_list_providers_and_models_become_other(tmp_path: Path) -> None:
    p = InProcess(tmp_path)
    cid = "CA-labels"
    p.send([billable(cid, **{"patter.cost.stt_seconds": 30.0, "patter.stt.provider": "acme-asr"}),
            billable(cid, **{"patter.cost.llm_input_tokens": 100, "patter.cost.llm_output_tokens": 10,
                             "patter.llm.provider": "openai", "patter.llm.model": "gpt-9-ultra"}),
            billable(cid, **{"patter.cost.llm_input_tokens": 200, "patter.cost.llm_output_tokens": 20,
                             "patter.llm.provider": "openai", "patter.llm.model": "gpt-4o-mini-2024-07-18"}),
            billable(cid, **{"patter.cost.llm_input_tokens": 5, "patter.cost.llm_output_tokens": 1,
                             "patter.llm.provider": "my-own-llm", "patter.llm.model": "secret-model"})])
    p.final(cid)
    assert value(p, "patter_stt_seconds_total", provider="other") == 30.0
    assert value(p, "patter_llm_tokens_total", provider="openai", model="openai-other", direction="input") == 100
    assert value(p, "patter_llm_tokens_total", provider="openai", model="gpt-4o-mini", direction="input") == 200
    assert value(p, "patter_llm_tokens_total", provider="other", model="other-other", direction="output") == 1
    text = generate_latest(p.pipeline.metrics.registry).decode()
    for raw in ("acme-asr", "gpt-9-ultra", "my-own-llm", "secret-model", "2024-07-18"):
        assert raw not in text


def test_error_spans_are_counted_by_layer_and_disconnects_by_reason(tmp_path: Path) -> None:
    p = InProcess(tmp_path)
    p.send([span("getpatter.llm", {"patter.call_id": "CA-e1"}, status=2),
            span("getpatter.tts", {"patter.call_id": "CA-e1"}, status=2),
            span("getpatter.tts", {"patter.call_id": "CA-e1"}, status=2),
            span("patter.billable", {"patter.call_id": "CA-e1", "patter.error.layer": "carrier",
                                     "patter.disconnect_reason": "hangup_remote"}, status=2),
            span("patter.billable", {"patter.call_id": "CA-e2", "patter.disconnect_reason": "cosmic rays"})])
    p.final("CA-e1")
    p.final("CA-e2")
    assert value(p, "patter_errors_total", error_layer="llm") == 1
    assert value(p, "patter_errors_total", error_layer="tts") == 2
    assert value(p, "patter_errors_total", error_layer="carrier") == 1
    assert value(p, "patter_disconnects_total", disconnect_reason="hangup_remote") == 1
    assert value(p, "patter_disconnects_total", disconnect_reason="other") == 1


def test_tenants_are_capped_with_an_other_bucket(tmp_path: Path) -> None:
    p = InProcess(tmp_path, **{"metrics.max_tenants": 2})
    for i, tenant in enumerate(("acme", "globex", "initech", "acme")):
        cid = f"CA-tenant-{i}"
        p.send([billable(cid, **{"patter.cost.tts_chars": 1000, "patter.tts.provider": "elevenlabs"})],
               resource={**RESOURCE, "tenant.id": tenant})
        p.final(cid)
    reg = p.pipeline.metrics.registry

    def chars(tenant: str) -> float | None:
        return reg.get_sample_value("patter_tts_chars_total", {"tenant": tenant, "provider": "elevenlabs"})

    assert [chars("acme"), chars("globex"), chars("other"), chars("initech")] == [2000, 1000, 1000, None]


def test_the_tenant_attribute_is_configurable(tmp_path: Path) -> None:
    p = InProcess(tmp_path, **{"metrics.tenant_attribute": "deployment.environment"})
    p.send([billable("CA-env", **{"patter.cost.tts_chars": 10, "patter.tts.provider": "elevenlabs"})],
           resource={**RESOURCE, "deployment.environment": "staging", "tenant.id": "ignored"})
    p.final("CA-env")
    assert p.pipeline.metrics.registry.get_sample_value(
        "patter_calls_total", {"tenant": "staging", "status": "completed"}) == 1


def test_otlp_push_carries_the_same_figures_as_prometheus(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from otel_patter.spans import attrs_dict

    p = InProcess(tmp_path, forward=[{"name": "hc", "endpoint": "http://127.0.0.1:9"}],
                  **{"metrics.otlp_push": {"interval": "60s"}})
    (q,) = [d.queue for d in p.pipeline.forward.downstreams]
    q.open()
    send_recorded(p)
    points = p.pipeline.forward.push_metrics()
    *_, last = list(q.entries)
    assert (last.signal, last.items) == ("metrics", points)
    req = ExportMetricsServiceRequest.FromString(q.read(last))
    assert attrs_dict(req.resource_metrics[0].resource.attributes)["service.name"] == "otel-patter"
    by_name = {m.name: m for m in req.resource_metrics[0].scope_metrics[0].metrics}
    cost = {(a["component"], a["provider"]): dp.as_double for dp in by_name["patter_cost_usd"].sum.data_points
            for a in [attrs_dict(dp.attributes)]}
    assert cost == {("stt", "deepgram"): 0.000802, ("tts", "elevenlabs"): 0.01275, ("llm", "openai"): 0.00023,
                    ("telephony", "twilio"): 0.0085}
    assert by_name["patter_cost_usd"].sum.is_monotonic
    (turns,) = by_name["patter_turn_latency_ms"].histogram.data_points
    assert (turns.count, round(turns.sum, 6)) == (4, 934.9)
    assert list(turns.explicit_bounds)[:3] == [100.0, 200.0, 300.0]
    assert list(turns.bucket_counts) == [2, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    (active,) = by_name["patter_calls_active"].gauge.data_points
    assert active.as_double == 0


def test_otlp_push_names_only_configured_forward_targets(tmp_path: Path) -> None:
    from otel_patter.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"forward": [{"name": "jaeger", "endpoint": "http://j:4317"}],
                                             "metrics.otlp_push": {"interval": "30s", "downstreams": ["honeycomb"]}})
    assert str(info.value) == "metrics.otlp_push.downstreams[0]: no forward target named 'honeycomb'"
