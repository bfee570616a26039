"""PII hygiene: content keys go, personal values are scrubbed, ids and SDK telemetry survive untouched."""

from __future__ import annotations

import asyncio
import re
import unicodedata
import urllib.parse
from collections import Counter
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otel_patter.component import TraceBatch
from otel_patter.config import PiiConfig
from otel_patter.processors.pii import REDACTED_COUNT_KEY, PiiProcessor
from otel_patter.spans import attrs_dict, flatten
from tests.otlp import T0, av, recorded_call, request, span

CALL = "CA0123456789abcdef0123456789abcdef"
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SDK_RESOURCE = {
    "service.name": "patter",
    "service.instance.id": "10fed054-98ac-4b2b-b2e8-65a6fca6b7eb",
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": "1.45.2",
}
TWILIO_URL = ("https://agent.example.com/webhooks/twilio/voice?From=%2B15551234567&To=%2B15557654321"
              f"&CallSid={CALL}")
KEY_A = b"\x01" * 32
KEY_B = b"\x02" * 32


# -- builders ---------------------------------------------------------------------------------------
def with_attrs(s: Span, attrs: dict[str, Any]) -> Span:
    s.attributes.extend(KeyValue(key=k, value=av(v)) for k, v in attrs.items())
    return s


def proc(**kw: Any) -> PiiProcessor:
    key = kw.pop("hash_key", None)
    return PiiProcessor(PiiConfig(**kw), hash_key=key)


def run(p: PiiProcessor, req: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    p.consume(TraceBatch(request=req))
    return req


def only_span(req: ExportTraceServiceRequest) -> Span:
    return req.resource_spans[0].scope_spans[0].spans[0]


def span_attrs(req: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    return [attrs_dict(s.attributes) for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def sdk_spans() -> list[Span]:
    """getpatter 0.7.0 spans with the exact keys of research/getpatter-sdk.md §2, plus the 0.6 keys."""
    llm_event = ("patter.event.llm_first_token", T0 + 70_000_000,
                 {"gen_ai.request.model": "gpt-4o-mini-2024-07-18", "gen_ai.provider.name": "openai",
                  "patter.turn.idx": 1})
    speech = [
        ("patter.event.user_speech_started", T0, {"patter.audio.offset_ms": 1520.0,
                                                  "patter.vad.confidence": 0.93}),
        ("patter.event.user_speech_ended", T0, {"patter.speech.duration_ms": 2310.5}),
        ("patter.event.user_speech_eos", T0, {"patter.eos.trigger": "vad_silence",
                                              "patter.eos.trailing_silence_ms": 480.0}),
        ("patter.event.agent_speech_started", T0, {"patter.turn.idx": 1, "patter.tts.provider": "elevenlabs",
                                                   "patter.engine": "pipeline"}),
        ("patter.event.agent_speech_ended", T0, {"patter.turn.idx": 1, "patter.speech.duration_ms": 3100.0,
                                                 "patter.turn.interrupted": False}),
        ("patter.event.tts_first_audio", T0, {"patter.turn.idx": 1, "patter.tts.provider": "elevenlabs"}),
    ]
    scope = {"patter.call_id": CALL, "patter.side": "uut"}
    return [
        span("getpatter.stt", {"getpatter.stt.text_len": 42, "patter.call.id": CALL}),
        span("getpatter.endpoint", {"patter.call.id": CALL}),
        span("getpatter.llm", {"patter.call.id": CALL}, events=speech),
        span("getpatter.llm", {"patter.llm.iteration": 0, "patter.llm.history_size": 5,
                               "patter.call.id": CALL, "patter.cost.llm_input_tokens": 812,
                               "patter.cost.llm_output_tokens": 64, "patter.llm.provider": "openai",
                               **scope}, events=[llm_event]),
        span("getpatter.tool", {"patter.tool.name": "lookup_order", "patter.tool.transport": "handler",
                                "patter.call.id": ""}),
        span("getpatter.tts", {"getpatter.tts.text_len": 57, "patter.call.id": CALL,
                               "patter.cost.tts_chars": 57, "patter.tts.provider": "elevenlabs", **scope}),
        span("getpatter.bargein", {"patter.call.id": CALL}),
        span("patter.billable", {"patter.cost.stt_seconds": 3.52, "patter.stt.provider": "deepgram",
                                 **scope}),
        span("patter.billable", {"patter.latency.ttfb_ms": 812.4, "patter.latency.turn_ms": 1430.0, **scope}),
        span("patter.billable", {"patter.cost.telephony_minutes": 1.2833, "patter.telephony": "twilio",
                                 "patter.direction": "inbound", **scope}),
        span("patter.billable", {"patter.cost.realtime_minutes": 0.75,
                                 "patter.realtime.provider": "openai_realtime", **scope}),
        span("getpatter.call", {"getpatter.call.id": CALL, "getpatter.call.direction": "outbound",
                                "getpatter.call.provider_mode": "pipeline", "getpatter.stt.confidence": 0.97,
                                "getpatter.endpoint.silence_ms": 640.0, "getpatter.llm.ttft_ms": 310.2,
                                "getpatter.llm.iteration": 1, "getpatter.llm.history_size": 7,
                                "getpatter.tool.name": "lookup_order", "getpatter.tool.transport": "webhook",
                                "getpatter.bargein.cancelled_text_len": 18}),
    ]


def twilio_webhook_span() -> Span:
    """What FastAPI's instrumentation records for Twilio's voice webhook."""
    s = span("POST /webhooks/twilio/voice", {}, trace=TRACE)
    s.kind = Span.SPAN_KIND_SERVER
    return with_attrs(s, {
        "http.request.method": "POST",
        "url.scheme": "https",
        "url.path": "/webhooks/twilio/voice",
        "url.query": TWILIO_URL.split("?", 1)[1],
        "url.full": TWILIO_URL,
        "http.route": "/webhooks/twilio/voice",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "server.address": "agent.example.com",
        "client.address": "54.172.60.3",
        "user_agent.original": "TwilioProxy/1.1",
        "http.request.header.authorization": ["Basic QUNhYmNkZWY6c2VjcmV0LXBhc3M="],
        "http.request.header.x_twilio_signature": ["tT8ZQ9tbvjsh6l3pCsl7IkZr0MQ="],
    })


def openai_span() -> Span:
    """opentelemetry-instrumentation-openai with content capture on."""
    s = span("chat gpt-4o-mini", {}, trace=TRACE)
    s.kind = Span.SPAN_KIND_CLIENT
    return with_attrs(s, {
        "gen_ai.system": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-AbC1dEf2GhI3jKl4MnO5pQr6StU7",
        "gen_ai.usage.input_tokens": 812,
        "gen_ai.usage.output_tokens": 64,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "You are the booking agent for Acme Dental.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "Hi, it's Bob, call me back on 020 7946 0958",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "Sure Bob, I'll call 020 7946 0958.",
        "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"Hi, it\'s Bob"}]}]',
        "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"text","content":"Sure"}]}]',
        "gen_ai.system_instructions": '[{"type":"text","content":"You are the booking agent"}]',
        "gen_ai.tool.call.arguments": '{"phone": "+15551234567"}',
        "gen_ai.tool.call.result": '{"ok": true}',
    })


# -- keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "kept"), [
    ("getpatter.stt.text_len", True), ("getpatter.tts.text_len", True),
    ("getpatter.bargein.cancelled_text_len", True), ("patter.summary.cost_usd", True),
    ("otel_patter.redacted_count", True), ("gen_ai.usage.cache_read.input_tokens", True),
    ("exception.message", True), ("url.full", True), ("rpc.method", True), ("telemetry.distro.version", True),
    ("deployment.environment", True), ("process.runtime.version", True), ("otel.status_code", True),
    ("tenant.id", True), ("test.run_id", True),
    ("patter.stt.text", False), ("db.statement", False), ("db.query.text", False),
    ("gen_ai.retrieval.query.text", False), ("gen_ai.tool.definitions", False),
    ("gen_ai.system_instructions", False), ("gen_ai.tool.call.arguments", False),
    ("http.response.header.set_cookie", False), ("llm.prompts", False), ("patter.llm.messages", False),
    ("exception.stacktrace", False), ("host.name", False), ("server.address", False),
    ("rpc.grpc.request.metadata.authorization", False), ("user.email", False), ("enduser.id", False),
    ("patter.call.transcript", False), ("http.request.body.size", False), ("patter.api_key", False),
])
def test_key_policy(key: str, kept: bool) -> None:
    assert proc().key_allowed(key) is kept


def test_getpatter_070_spans_survive_byte_for_byte() -> None:
    req = request(sdk_spans(), SDK_RESOURCE)
    before = req.SerializeToString()
    p = proc()
    run(p, req)
    assert req.SerializeToString() == before
    assert p.counts == Counter()


def test_recorded_getpatter_call_survives_byte_for_byte() -> None:
    p = proc()
    for req in recorded_call(CALL):
        before = req.SerializeToString()
        run(p, req)
        assert req.SerializeToString() == before
    assert p.counts == Counter()


def test_recorded_fastapi_call_loses_only_server_address() -> None:
    p = proc()
    for req in recorded_call(CALL, fastapi=True):
        expected = span_attrs(req)
        for attrs in expected:
            if attrs.pop("server.address", None) is not None:
                attrs[REDACTED_COUNT_KEY] = 1
        run(p, req)
        assert span_attrs(req) == expected
    assert set(p.counts) == {"key_dropped"}


def test_call_sid_survives_on_every_call_id_key() -> None:
    req = request([span("getpatter.stt", {"patter.call.id": CALL, "patter.call_id": CALL,
                                          "getpatter.call.id": CALL})])
    attrs = attrs_dict(only_span(run(proc(), req)).attributes)
    assert attrs == {"patter.call.id": CALL, "patter.call_id": CALL, "getpatter.call.id": CALL}


def test_call_id_that_is_a_phone_number_is_kept() -> None:
    req = request([span("patter.billable", {"patter.call_id": "+15551234567",
                                            "patter.cost.stt_seconds": 1.5})])
    attrs = attrs_dict(only_span(run(proc(), req)).attributes)
    assert attrs == {"patter.call_id": "+15551234567", "patter.cost.stt_seconds": 1.5}


def test_authorization_header_is_dropped() -> None:
    attrs = attrs_dict(only_span(run(proc(), request([twilio_webhook_span()]))).attributes)
    assert "http.request.header.authorization" not in attrs
    assert "http.request.header.x_twilio_signature" not in attrs


def test_openai_prompt_completion_and_messages_are_dropped() -> None:
    attrs = attrs_dict(only_span(run(proc(), request([openai_span()]))).attributes)
    assert attrs == {
        "gen_ai.system": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-AbC1dEf2GhI3jKl4MnO5pQr6StU7",
        "gen_ai.usage.input_tokens": 812,
        "gen_ai.usage.output_tokens": 64,
        REDACTED_COUNT_KEY: 11,
    }


def test_resource_attribute_not_on_the_allowlist_is_dropped() -> None:
    resource = {**SDK_RESOURCE, "host.name": "bobs-macbook.local", "process.owner": "bob",
                "process.command_args": ["python", "app.py", "--twilio-number", "+15551234567"],
                "process.runtime.name": "cpython", "deployment.environment.name": "prod"}
    req = run(proc(), request([span("getpatter.endpoint", {"patter.call.id": CALL})], resource))
    assert attrs_dict(req.resource_spans[0].resource.attributes) == {
        **SDK_RESOURCE, "process.runtime.name": "cpython", "deployment.environment.name": "prod"}


def test_scope_attributes_are_filtered() -> None:
    req = request([span("getpatter.endpoint", {"patter.call.id": CALL})])
    req.resource_spans[0].scope_spans[0].scope.attributes.extend(
        [KeyValue(key="otel.scope.note", value=av("on-call bob@example.com")),
         KeyValue(key="user.email", value=av("bob@example.com"))])
    run(proc(), req)
    scope_attrs = attrs_dict(req.resource_spans[0].scope_spans[0].scope.attributes)
    assert scope_attrs == {"otel.scope.note": "on-call <email>"}


def test_content_keys_are_dropped_under_the_patter_namespace_too() -> None:
    req = request([span("getpatter.stt", {"patter.call.id": CALL, "patter.stt.text": "hello my name is Bob",
                                          "patter.transcript": "hello", "patter.tool.arguments": "{}",
                                          "patter.tool.result": "ok", "patter.request.body": "{}",
                                          "getpatter.stt.text_len": 20})])
    attrs = attrs_dict(only_span(run(proc(), req)).attributes)
    assert attrs == {"patter.call.id": CALL, "getpatter.stt.text_len": 20, REDACTED_COUNT_KEY: 5}


def test_allow_keys_config_adds_keys_but_never_content_keys() -> None:
    p = proc(allow_keys=("host.*", "gen_ai.prompt.*", "llm.prompts"))
    req = request([span("chat", {"host.name": "worker-3", "gen_ai.prompt.0.content": "hi",
                                 "llm.prompts": "hi", "gen_ai.usage.input_tokens": 3})])
    attrs = attrs_dict(only_span(run(p, req)).attributes)
    assert attrs == {"host.name": "worker-3", "gen_ai.usage.input_tokens": 3, REDACTED_COUNT_KEY: 2}


def test_deny_keys_config_drops_allowed_keys() -> None:
    p = proc(deny_keys=("patter.tool.name", "patter.eos.*"))
    req = request([span("getpatter.tool", {"patter.tool.name": "refund_customer",
                                           "patter.tool.transport": "handler",
                                           "patter.eos.trigger": "vad_silence"})])
    attrs = attrs_dict(only_span(run(p, req)).attributes)
    assert attrs == {"patter.tool.transport": "handler", REDACTED_COUNT_KEY: 2}


def test_link_attributes_are_filtered_and_scrubbed() -> None:
    s = span("getpatter.llm", {"patter.call.id": CALL})
    link = s.links.add(trace_id=TRACE, span_id=bytes.fromhex("00f067aa0ba902b7"))
    link.attributes.extend([KeyValue(key="patter.call.id", value=av(CALL)),
                            KeyValue(key="url.full", value=av("https://api.example.com/callers/%2B15551234567")),
                            KeyValue(key="http.request.header.cookie", value=av(["session=abc"]))])
    req = run(proc(), request([s]))
    out = only_span(req)
    assert attrs_dict(out.links[0].attributes) == {"patter.call.id": CALL,
                                                   "url.full": "https://api.example.com/callers/***4567"}
    assert attrs_dict(out.attributes)[REDACTED_COUNT_KEY] == 2


def test_strings_in_array_and_map_values_are_scrubbed_and_map_keys_filtered() -> None:
    req = request([with_attrs(span("x", {}), {
        "patter.callers": ["+15551234567", "CA0123456789abcdef0123456789abcdef"],
        "patter.meta": {"note": "mail bob@example.com", "content": "secret words", "count": 3},
    })])
    attrs = attrs_dict(only_span(run(proc(), req)).attributes)
    assert attrs == {"patter.callers": ["***4567", CALL], "patter.meta": {"note": "mail <email>", "count": 3},
                     REDACTED_COUNT_KEY: 3}


def test_numbers_and_booleans_are_never_touched() -> None:
    req = request([span("patter.billable", {"patter.cost.telephony_minutes": 15551234567.0,
                                            "patter.llm.history_size": 4111111111111111,
                                            "patter.turn.interrupted": True})])
    attrs = attrs_dict(only_span(run(proc(), req)).attributes)
    assert attrs == {"patter.cost.telephony_minutes": 15551234567.0,
                     "patter.llm.history_size": 4111111111111111, "patter.turn.interrupted": True}


# -- values -----------------------------------------------------------------------------------------
def test_twilio_webhook_url_phones_masked_and_call_sid_kept() -> None:
    attrs = attrs_dict(only_span(run(proc(), request([twilio_webhook_span()]))).attributes)
    assert attrs["url.full"] == ("https://agent.example.com/webhooks/twilio/voice?From=***4567&To=***4321"
                                 f"&CallSid={CALL}")
    assert attrs["url.query"] == f"From=***4567&To=***4321&CallSid={CALL}"


def test_twilio_webhook_span_keeps_exactly_the_safe_keys() -> None:
    attrs = attrs_dict(only_span(run(proc(), request([twilio_webhook_span()]))).attributes)
    assert sorted(attrs) == sorted([
        "http.request.method", "url.scheme", "url.path", "url.query", "url.full", "http.route",
        "http.response.status_code", "network.protocol.version", REDACTED_COUNT_KEY])


def test_redacted_count_is_dropped_keys_plus_scrubbed_values() -> None:
    out = only_span(run(proc(), request([twilio_webhook_span()])))
    # 5 keys dropped (server.address, client.address, user_agent.original, 2 headers) + 2 phones x 2 urls
    assert attrs_dict(out.attributes)[REDACTED_COUNT_KEY] == 9


def test_unchanged_span_gets_no_redacted_count() -> None:
    out = only_span(run(proc(), request([span("getpatter.tts", {"getpatter.tts.text_len": 57})])))
    assert REDACTED_COUNT_KEY not in attrs_dict(out.attributes)


def test_exception_event_message_is_scrubbed_and_stacktrace_dropped() -> None:
    s = span("getpatter.tool", {"patter.call.id": CALL}, status=Status.STATUS_CODE_ERROR, events=[
        ("exception", T0, {"exception.type": "ValueError",
                           "exception.message": "my number is 020 7946 0958 and email bob@example.com",
                           "exception.stacktrace": 'Traceback (most recent call last):\n  File "tools.py", '
                                                   'line 12\nValueError: my number is 020 7946 0958',
                           "exception.escaped": False})])
    out = only_span(run(proc(), request([s])))
    assert attrs_dict(out.events[0].attributes) == {
        "exception.type": "ValueError",
        "exception.message": "my number is ***0958 and email <email>",
        "exception.escaped": False,
    }
    assert attrs_dict(out.attributes)[REDACTED_COUNT_KEY] == 3


def test_status_message_with_card_number_is_scrubbed() -> None:
    s = span("getpatter.tool", {"patter.call.id": CALL}, status=Status.STATUS_CODE_ERROR)
    s.status.message = "stripe.error.CardError: card 4242-4242-4242-4242 was declined"
    out = only_span(run(proc(), request([s])))
    assert out.status.message == "stripe.error.CardError: card <card> was declined"


def test_openai_key_in_exception_message_is_scrubbed() -> None:
    message = ("Error code: 401 - Incorrect API key provided: "
               "sk-proj-Qw3rTy9UiOp2AsDf5GhJk8LzXcVbNm1Qw3rTy9UiOp2AsDf5GhJk8LzXcVbNm1.")
    s = span("getpatter.llm", {"patter.call.id": CALL}, events=[
        ("exception", T0, {"exception.type": "openai.AuthenticationError", "exception.message": message})])
    out = only_span(run(proc(), request([s])))
    assert attrs_dict(out.events[0].attributes)["exception.message"] == (
        "Error code: 401 - Incorrect API key provided: <token>.")


def test_span_and_event_names_are_scrubbed() -> None:
    s = span("POST /v1/callers/+15551234567", {}, events=[("sent to bob@example.com", T0, {})])
    out = only_span(run(proc(), request([s])))
    assert (out.name, out.events[0].name) == ("POST /v1/callers/***4567", "sent to <email>")


def test_ids_and_timestamps_are_untouched() -> None:
    message = ("trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7 request "
               "123e4567-e89b-12d3-a456-426614174000 at 2026-11-23T05:45:22.123456+00:00 account "
               "AC0123456789abcdef0123456789abcdef recording RE0123456789abcdef0123456789abcdef "
               "ulid 01JD8X3Q5Z9K2M4N6P8R0T2V4W took 1234567 ms at 1795412722")
    s = span("getpatter.llm", {"patter.call.id": CALL}, events=[
        ("exception", T0, {"exception.type": "TimeoutError", "exception.message": message})])
    out = only_span(run(proc(), request([s])))
    assert attrs_dict(out.events[0].attributes)["exception.message"] == message


def test_id_keys_keep_id_values() -> None:
    req = request([span("x", {"gen_ai.response.id": "chatcmpl-9zXyWvUtSrQpOnMlKjIhGfEdCbA0123456789",
                              "tenant.id": "acme-7f3a9c2e41d85b60",
                              "test.run_id": "run_2026-11-23_0001"})])
    attrs = attrs_dict(only_span(run(proc(), req)).attributes)
    assert attrs == {"gen_ai.response.id": "chatcmpl-9zXyWvUtSrQpOnMlKjIhGfEdCbA0123456789",
                     "tenant.id": "acme-7f3a9c2e41d85b60", "test.run_id": "run_2026-11-23_0001"}


def test_phone_in_an_id_key_other_than_call_id_is_scrubbed() -> None:
    attrs = attrs_dict(only_span(run(proc(), request([span("x", {"tenant.id": "+15551234567"})]))).attributes)
    assert attrs == {"tenant.id": "***4567", REDACTED_COUNT_KEY: 1}


def test_json_inside_a_string_is_scrubbed() -> None:
    text = '{"to": "+1 (555) 123-4567", "note": "from bob@example.com", "api_key": "abc123xyz"}'
    assert proc().scrub_text(text) == '{"to": "***4567", "note": "from <email>", "api_key": "<token>"}'


def test_escaped_json_inside_a_string_is_scrubbed() -> None:
    assert proc().scrub_text('{"msg": "line one\\n5551234567"}') == '{"msg": "line one\\n***4567"}'


def test_percent_encoded_email_is_scrubbed_and_the_rest_keeps_its_encoding() -> None:
    assert proc().scrub_text("/users?email=bob%40example.com&name=Bob%20Smith") == (
        "/users?email=<email>&name=Bob%20Smith")


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEyMyJ9.c2lnbmF0dXJlLWJ5dGVz",
     "Authorization: Bearer <token>"),
    ("slack token xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx", "slack token <token>"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws <token>"),
    ("gh ghp_16C7e42F292c6912E7710c838347Ae178B4a", "gh <token>"),
    ("key sk-ant-api03-Xy7Zq2Lm9Np4Rs6Tu8Vw0Ab1Cd3Ef5Gh", "key <token>"),
    ("eleven sk_3f9a1c2e4b6d8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d", "eleven <token>"),
    ("https://api.example.com/v1?api_key=9f8e7d6c5b4a&lang=en", "https://api.example.com/v1?api_key=<token>&lang=en"),
    ("https://bob:hunter2@db.example.com/calls", "https://<token>@db.example.com/calls"),
    ("deepgram token Tk9q2WmXv7Lp4RzB8sYc1NdFh6JgK3aEu5", "deepgram token <token>"),
])
def test_tokens_are_scrubbed(text: str, expected: str) -> None:
    assert proc().scrub_text(text) == expected


@pytest.mark.parametrize("text", [
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT_WITH_A_LONG_NAME",
    "getpatter.observability.tracing.PipelineStreamHandler",
    "version 10.0.19045.2965 build 2024.11.23",
    "ratio 3.14159265358979 and 2019-2024 and 01/12/2026",
    "bearer bonds are old",
    "the token limit is 128000",
])
def test_non_secrets_are_kept(text: str) -> None:
    assert proc().scrub_text(text) == text


def test_ip_addresses_are_kept_by_default() -> None:
    text = "client 54.172.60.3 via 2001:db8::8a2e:370:7334"
    assert proc().scrub_text(text) == text


def test_ip_addresses_are_redacted_when_configured() -> None:
    p = proc(redact_ip=True)
    assert p.scrub_text("client 54.172.60.3 via 2001:db8::8a2e:370:7334 at 10:30:00") == (
        "client <ip> via <ip> at 10:30:00")
    assert p.counts == Counter({"ip": 2})


def test_counts_by_rule() -> None:
    p = proc()
    run(p, request([twilio_webhook_span(), openai_span()]))
    p.scrub_text("card 4111 1111 1111 1111, mail bob@example.com, key sk-proj-Qw3rTy9UiOp2AsDf5GhJk8LzXcV")
    assert p.counts == Counter({"key_dropped": 16, "phone": 4, "card": 1, "email": 1, "token": 1})


# -- hash_only ---------------------------------------------------------------------------------------
def test_hash_only_is_deterministic_with_a_key() -> None:
    a = proc(phone_mode="hash_only", hash_key=KEY_A).scrub_text("call +1 555 123 4567")
    b = proc(phone_mode="hash_only", hash_key=KEY_A).scrub_text("call (555) 123-4567")
    assert a == b
    assert re.fullmatch(r"call hmac:[0-9a-f]{16}", a)


def test_hash_only_differs_with_another_key() -> None:
    a = proc(phone_mode="hash_only", hash_key=KEY_A).scrub_text("+15551234567")
    b = proc(phone_mode="hash_only", hash_key=KEY_B).scrub_text("+15551234567")
    assert a != b


def test_hash_only_distinguishes_numbers() -> None:
    p = proc(phone_mode="hash_only", hash_key=KEY_A)
    assert p.scrub_text("+15551234567") != p.scrub_text("+15551234568")


def test_hash_only_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="HMAC key"):
        PiiProcessor(PiiConfig(phone_mode="hash_only"))


def test_hash_only_output_is_stable_when_scrubbed_again() -> None:
    p = proc(phone_mode="hash_only", hash_key=KEY_A)
    once = p.scrub_text("From=%2B15551234567&To=%2B442079460958")
    assert p.scrub_text(once) == once


# -- idempotence, logs, metrics, lifecycle -------------------------------------------------------------
def test_consuming_twice_changes_nothing_the_second_time() -> None:
    p = proc()
    req = run(p, request([twilio_webhook_span(), openai_span()]))
    once = req.SerializeToString()
    counts = Counter(p.counts)
    run(p, req)
    assert req.SerializeToString() == once
    assert p.counts == counts


def test_log_bodies_are_cleared_and_attributes_scrubbed() -> None:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend([KeyValue(key="service.name", value=av("booking-api")),
                                   KeyValue(key="host.name", value=av("worker-3"))])
    lr = rl.scope_logs.add().log_records.add(severity_text="ERROR", trace_id=TRACE)
    lr.body.string_value = "caller +15551234567 said: my card is 4111 1111 1111 1111"
    lr.attributes.extend([KeyValue(key="code.function", value=av("handle_call")),
                          KeyValue(key="exception.message", value=av("no route to bob@example.com")),
                          KeyValue(key="code.filepath", value=av("/home/bob/app/main.py"))])
    p = proc()
    p.scrub_logs(req)
    out = req.resource_logs[0].scope_logs[0].log_records[0]
    assert not out.HasField("body")
    assert attrs_dict(out.attributes) == {"code.function": "handle_call",
                                          "exception.message": "no route to <email>"}
    assert attrs_dict(req.resource_logs[0].resource.attributes) == {"service.name": "booking-api"}
    assert (out.severity_text, out.trace_id) == ("ERROR", TRACE)
    assert p.counts == Counter({"key_dropped": 3, "email": 1})


def test_metric_datapoint_attributes_are_scrubbed() -> None:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend([KeyValue(key="service.name", value=av("booking-api"))])
    m = rm.scope_metrics.add().metrics.add(name="http.server.request.duration", unit="s")
    dp = m.histogram.data_points.add(count=1, sum=0.12)
    dp.attributes.extend([KeyValue(key="http.request.method", value=av("POST")),
                          KeyValue(key="http.route", value=av("/callers/+15551234567")),
                          KeyValue(key="http.response.status_code", value=av(200)),
                          KeyValue(key="server.address", value=av("agent.example.com"))])
    ex = dp.exemplars.add(as_double=0.12)
    ex.filtered_attributes.extend([KeyValue(key="enduser.id", value=av("bob"))])
    proc().scrub_metrics(req)
    assert attrs_dict(dp.attributes) == {"http.request.method": "POST", "http.route": "/callers/***4567",
                                         "http.response.status_code": 200}
    assert len(dp.exemplars[0].filtered_attributes) == 0


def test_bad_phone_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="phone_mode"):
        PiiProcessor(PiiConfig(phone_mode="full"))


def test_start_and_shutdown_are_quiet() -> None:
    p = proc()

    async def cycle() -> None:
        await p.start()
        await p.shutdown()

    asyncio.run(cycle())
    assert p.counts == Counter()


# -- planted phone numbers ---------------------------------------------------------------------------
PLANTED: list[tuple[str, str]] = [  # (as written, region to read it in)
    ("+15551234567", "US"), ("+1 555 123 4567", "US"), ("+1 (555) 123-4567", "US"), ("+1-555-123-4567", "US"),
    ("+1.555.123.4567", "US"), ("(555) 123-4567", "US"), ("555-123-4567", "US"), ("555.123.4567", "US"),
    ("555 123 4567", "US"), ("1-555-123-4567", "US"), ("1 (555) 123-4567", "US"), ("5551234567", "US"),
    ("tel:+15551234567", "US"), ("%2B15551234567", "US"), ("%2B1%20555%20123%204567", "US"),
    ("+1 212 555 0199", "US"), ("(212) 555-0199", "US"), ("1-800-555-0199", "US"),
    ("+44 20 7946 0958", "GB"), ("+442079460958", "GB"), ("020 7946 0958", "GB"), ("(020) 7946 0958", "GB"),
    ("+44 (0)20 7946 0958", "GB"), ("0044 20 7946 0958", "GB"), ("011 44 20 7946 0958", "GB"),
    ("07700 900123", "GB"), ("+44 7700 900123", "GB"), ("0161 496 0123", "GB"), ("02079460958", "GB"),
    ("+49 30 123456", "DE"), ("030 123456", "DE"), ("+49 (0)30 1234567", "DE"), ("0171 1234567", "DE"),
    ("+49 171 1234567", "DE"), ("030/1234567", "DE"), ("0049 30 1234567", "DE"), ("030-1234567", "DE"),
    ("01 23 45 67 89", "FR"), ("+33 1 23 45 67 89", "FR"), ("06.12.34.56.78", "FR"),
    ("+33 6 12 34 56 78", "FR"), ("0612345678", "FR"), ("06-12-34-56-78", "FR"),
    ("+39 06 1234 5678", "IT"), ("06 1234 5678", "IT"), ("+39 333 123 4567", "IT"), ("333 123 4567", "IT"),
    ("02 1234 5678", "IT"),
    ("+34 912 345 678", "ES"), ("912 345 678", "ES"), ("612 34 56 78", "ES"),
    ("+91 98765 43210", "IN"), ("+91-98765-43210", "IN"), ("098765 43210", "IN"),
    ("+31 20 123 4567", "NL"), ("+55 11 91234-5678", "BR"), ("+61 412 345 678", "AU"), ("0412 345 678", "AU"),
    ("+52 55 1234 5678", "MX"),
]
CONTEXTS = [
    "Caller said: {n}, please call back.",
    "https://agent.example.com/hook?to={n}&CallSid=CAa1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
    '{{"from": "{n}", "agent": "front-desk"}}',
]


def national_digits(raw: str, region: str) -> str:
    text = urllib.parse.unquote(raw).removeprefix("tel:")
    return str(phonenumbers.parse(text, region).national_number)


def test_planted_numbers_cover_enough_formats_and_countries() -> None:
    assert len(PLANTED) >= 40
    assert len({region for _, region in PLANTED}) >= 5


@pytest.mark.parametrize("context", CONTEXTS, ids=["text", "url", "json"])
@pytest.mark.parametrize(("raw", "region"), PLANTED, ids=[raw for raw, _ in PLANTED])
def test_planted_number_does_not_survive(raw: str, region: str, context: str) -> None:
    p = proc()
    out = p.scrub_text(context.format(n=raw))
    joined = re.sub(r"[\s().\-/+]", "", urllib.parse.unquote(out))  # phone separators removed
    runs = re.findall(r"\d+", joined)
    assert not [r for r in runs if national_digits(raw, region) in r]
    assert p.counts["phone"] == 1


# -- properties --------------------------------------------------------------------------------------
PII_SAMPLES = [raw for raw, _ in PLANTED] + [
    "bob@example.com", "bob%40example.com", "4111 1111 1111 1111", "sk-proj-Qw3rTy9UiOp2AsDf5GhJk8LzXcV",
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEyMyJ9.c2lnbmF0dXJlLWJ5dGVz", "api_key=9f8e7d6c5b4a",
    CALL, "2026-11-23T05:45:22.123Z", "4bf92f3577b34da6a3ce929d0e0e4736", "https://bob:pw@example.com/",
    "AKIAIOSFODNN7EXAMPLE", "Tk9q2WmXv7Lp4RzB8sYc1NdFh6JgK3aEu5", "54.172.60.3", "2001:db8::1",
    "\uff0b\uff11 \uff14\uff11\uff15 \uff15\uff15\uff15 \uff12\uff16\uff17\uff11", "\uff20", "\uff0e\uff57",
    "\uff10\uff10\uff10",  # fullwidth: +1 415 555 2671, @, .w, 000 (NFKC folds them to ASCII)
]
mixed_text = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(PII_SAMPLES)), max_size=8).map("".join)
TOKENISH = re.compile(r"(?i)sk[-_]|[rp]k_|xox|akia|asia|gh[pousr]_|github_pat|glpat|aiza|eyj|bearer|basic|key"
                      r"|token|secret|passw|pwd|sig|credential|authorization|[A-Za-z0-9_\-]{32}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_text, st.booleans())
def test_scrubbing_is_idempotent(text: str, redact_ip: bool) -> None:
    p = proc(redact_ip=redact_ip)
    once = p.scrub_text(text)
    assert p.scrub_text(once) == once


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_text)
def test_hash_only_scrubbing_is_idempotent(text: str) -> None:
    p = proc(phone_mode="hash_only", hash_key=KEY_A)
    once = p.scrub_text(text)
    assert p.scrub_text(once) == once


def test_a_replacement_glued_to_a_fullwidth_letter_is_scrubbed_until_nothing_changes() -> None:
    # the digits alone (a fullwidth letter is a boundary) become 'hmac:…', and folded, '0@0.whmac' is an email
    p = proc(phone_mode="hash_only", hash_key=KEY_A)
    once = p.scrub_text("0@0\uff0e\uff570000000")
    assert once == "<email>:6e9d78b25d4e6ba7"
    assert p.scrub_text(once) == once


@pytest.mark.parametrize("text,expected", [
    ("call me at \uff0b\uff11 \uff14\uff11\uff15 \uff15\uff15\uff15 \uff12\uff16\uff17\uff11 please",
     "call me at ***2671 please"),  # fullwidth +1 415 555 2671
    ("card \uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 "
     "\uff11\uff11\uff11\uff11", "card <card>"),
    ("\uff4a\uff4f\uff48\uff4e\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",
     "<email>"),  # john@example.com
    ("Gr\u00fc\u00dfe aus M\u00fcnchen, \uff12\uff10\uff12\uff16", "Gr\u00fc\u00dfe aus M\u00fcnchen, "
     "\uff12\uff10\uff12\uff16"),  # nothing personal: left as it was written
])
def test_fullwidth_digits_and_signs_are_scrubbed_like_ascii(text: str, expected: str) -> None:
    assert proc().scrub_text(text) == expected


def test_a_fullwidth_email_on_a_span_takes_the_full_pass_not_the_fast_path() -> None:
    email = "\uff4a\uff4f\uff48\uff4e\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d"
    req = request([span("getpatter.stt", {"patter.call.id": CALL, "http.url": f"mailto:{email}"})])
    batch = TraceBatch(request=req)
    batch.records = list(flatten(req))
    p = proc()
    if p.consume_flat(batch):  # the fast path found nothing to do: it must not have looked away
        raise AssertionError("a fullwidth email passed the fast path")
    assert attrs_dict(req.resource_spans[0].scope_spans[0].spans[0].attributes)["http.url"] == "mailto:<email>"


def test_scope_names_and_versions_are_scrubbed_on_every_signal() -> None:
    traces = request([span("getpatter.llm", {"patter.call.id": CALL})])
    traces.resource_spans[0].scope_spans[0].scope.name = "support-line +1 415 555 2671"
    traces.resource_spans[0].scope_spans[0].scope.version = "build for jane.doe@example.com"
    batch = TraceBatch(request=traces)
    batch.records = list(flatten(traces))
    p = proc()
    assert not p.consume_flat(batch)
    scope = traces.resource_spans[0].scope_spans[0].scope
    assert (scope.name, scope.version) == ("support-line ***2671", "build for <email>")

    metrics = ExportMetricsServiceRequest()
    sm = metrics.resource_metrics.add().scope_metrics.add()
    sm.scope.name = "tel:+14155552671"
    m = sm.metrics.add(name="calls_to_+14155552671", description="calls from jane.doe@example.com", unit="1")
    m.sum.data_points.add(as_int=1)
    p.scrub_metrics(metrics)
    assert (sm.scope.name, m.name, m.description) == ("tel:***2671", "calls_to_***2671", "calls from <email>")


SEVEN_DIGITS = re.compile(r"\d(?:[^\dA-Za-z]{0,3}\d){6}")  # 7 digits, at most 3 separators between neighbours
no_pii_chars = st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="@%"),
                         st.sampled_from("0123456789 -.()/+:_abcdefABCDEF"))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=no_pii_chars, max_size=300))
def test_text_without_digit_runs_at_signs_or_tokens_is_unchanged(text: str) -> None:
    folded = unicodedata.normalize("NFKC", text)  # fullwidth digits and signs count as what they fold to
    assume(not SEVEN_DIGITS.search(folded) and not TOKENISH.search(folded) and not {"@", "%"} & set(folded))
    p = proc()
    assert p.scrub_text(text) == text
    assert p.counts == Counter()


id_like = st.one_of(
    st.uuids().map(str),
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.binary(min_size=16, max_size=16).map(lambda b: "CA" + b.hex()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers(0, 999_999).map(lambda n: f"{n}ms"),
    st.from_regex(r"[a-z]{1,10}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(id_like, max_size=8).map(" ".join))
def test_ids_timestamps_and_durations_are_unchanged(text: str) -> None:
    assert proc().scrub_text(text) == text


# -- leaks the end-to-end privacy corpus found (tests/privacy) ----------------------------------------
ACCOUNT = "AC0123456789abcdef0123456789abcdef"
E2E_LEAKS = [
    # Brazilian mobiles in their national format, which has no trunk prefix
    ("SMS sent to (11) 91234-5678", "SMS sent to ***5678"),
    ("ligue 11 91234-5678", "ligue ***5678"),
    # thin and narrow no-break spaces (French typography) and tabs, which phonenumbers rejects
    ("caller +33\u202f6\u202f12\u202f34\u202f56\u202f78", "caller ***5678"),
    ("+49\u200930\u200990182000 busy", "***2000 busy"),
    ("tab\t+44\t20\t7946\t0958", "tab\t***0958"),
    # form encoding: `+` is a space
    ("phone=%2B44+20+7946+0958&x=1", "phone=***0958&x=1"),
    ("phone=020+7946+0958", "phone=***0958"),
    ("phone=%28415%29+555-0123", "phone=***0123"),
    ("card=4111+1111+1111+1111", "card=<card>"),
    ("From=%2B15551234567+%2B15557654321", "From=***4567+***4321"),
    # UTF-8 percent escapes and JSON \u escapes between the digits
    ("phone=%2B39%C2%A006%C2%A01234%C2%A05678", "phone=***5678"),
    ('{"phone": "+91\\u00a098765\\u00a043210"}', '{"phone": "***3210"}'),
    # URL credentials whose user is an AccountSid (an id) still go
    (f"https://{ACCOUNT}:0123456789abcdef0123456789abcdef@api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
     f"https://<token>@api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
    # what the caller said or wrote, in Twilio's webhook query strings
    (f"SpeechResult=my+name+is+jane&CallSid={CALL}", f"SpeechResult=<content>&CallSid={CALL}"),
    ("https://agent.example.com/sms?From=%2B15551234567&Body=call+me+back&MessageSid=SM0123456789abcdef0123456789abcdef",
     "https://agent.example.com/sms?From=***4567&Body=<content>&MessageSid=SM0123456789abcdef0123456789abcdef"),
]


@pytest.mark.parametrize(("text", "expected"), E2E_LEAKS, ids=[t for t, _ in E2E_LEAKS])
def test_leaks_found_end_to_end_are_scrubbed(text: str, expected: str) -> None:
    p = proc()
    assert p.scrub_text(text) == expected
    assert p.scrub_text(expected) == expected


@pytest.mark.parametrize("text", ["version 1.2.3+20261123", "sum 1234567+1", "text book", "context=1&textual=2",
                                  "see https://example.com/a+b/1234567"])
def test_plus_and_content_names_alone_change_nothing(text: str) -> None:
    p = proc()
    assert p.scrub_text(text) == text
    assert p.counts == Counter()


def test_content_query_parameters_are_counted_as_content() -> None:
    p = proc()
    p.scrub_text(f"UnstableSpeechResult=hello&TranscriptionText=hi+there&CallSid={CALL}")
    assert p.counts == Counter({"content": 2})


def test_hash_only_gives_a_form_encoded_or_national_number_the_hash_of_its_e164() -> None:
    p = proc(phone_mode="hash_only", hash_key=KEY_A)
    assert p.scrub_text("phone=%2B44+20+7946+0958") == "phone=" + p.scrub_text("+442079460958")
    assert p.scrub_text("(11) 91234-5678") == p.scrub_text("+5511912345678")


def test_back_to_back_aws_key_ids_are_scrubbed_in_one_call() -> None:
    # each key id used to hide the next from the left boundary, one exposed per pass: with four in a row
    # the passes ran out and the second call scrubbed what the first had left (the digits after them)
    text = "AKIAIOSFODNN7EXAMPLE" * 4 + "0000000"
    for p in (proc(), proc(phone_mode="hash_only", hash_key=KEY_A)):
        once = p.scrub_text(text)
        assert "AKIA" not in once and "0000000" not in once
        assert p.scrub_text(once) == once


@pytest.mark.parametrize("secret", [
    "AKIAIOSFODNN7EXAMPLE", "AIzaSyA1234567890abcdefghijklmnopqrstuv", "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop",
])
@pytest.mark.parametrize("copies", [2, 5])
def test_secrets_back_to_back_leave_nothing_in_clear_text(secret: str, copies: int) -> None:
    # a fixed-length or greedy token glued to the next one used to leave that one's body (a JWT's payload and
    # signature, a GitHub token after its `ghp`) in clear text: its start was hidden from every left boundary
    assert proc().scrub_text(f"key: {secret * copies}. next") == "key: <token>. next"
