"""The SDK's own tracing helpers (tests/sdk/emit_direct.py) export to otel-patter: one exact envelope."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from getpatter import pricing as sdk

from tests.sdk import emit_direct as sent
from tests.sdk.conftest import run_sdk_script, usd6
from tests.server import ServerProc

P = sdk.DEFAULT_PRICING


@pytest.fixture(scope="module")
def envelope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    server = ServerProc(tmp_path_factory.mktemp("direct")).start()
    try:
        run_sdk_script(server, "emit_direct.py", sent.CALL_ID)
        yield server.wait_final(sent.CALL_ID, timeout=30)
    finally:
        server.stop()


def test_the_call_is_identified_and_final_on_its_hangup_usage(envelope: dict) -> None:
    assert envelope["call_id"] == sent.CALL_ID
    assert (envelope["status"], envelope["final_reason"]) == ("completed", "hangup_usage")
    assert (envelope["telephony_provider"], envelope["direction"]) == ("twilio", "inbound")
    assert envelope["agent"] == {"stt": "deepgram", "llm": "openai", "tts": "elevenlabs", "model": "gpt-4o-mini"}
    assert list(envelope["sides"]) == ["uut"]


def test_usage_is_what_the_helpers_recorded_inside_the_call_scope(envelope: dict) -> None:
    u = envelope["usage"]
    assert [(x["provider"], x["seconds"]) for x in u["stt"]] == [("deepgram", sent.STT_SECONDS)] == [("deepgram", 4.25)]
    # the 999 characters recorded after the scope closed went nowhere
    assert [(x["provider"], x["chars"]) for x in u["tts"]] == [("elevenlabs", sent.TTS_CHARS)] == [("elevenlabs", 67)]
    assert [(x["provider"], x["model"], x["input_tokens"], x["output_tokens"]) for x in u["llm"]] == [
        ("openai", "gpt-4o-mini", sent.LLM_INPUT_TOKENS, sent.LLM_OUTPUT_TOKENS)] == [
        ("openai", "gpt-4o-mini", 510, 46)]
    assert [(x["provider"], x["minutes"], x["billed_minutes"]) for x in u["telephony"]] == [
        ("twilio", sent.TELEPHONY_MINUTES, 2.0)]
    assert "realtime" not in u


def test_cost_equals_the_sdk_pricing_functions_on_the_same_usage(envelope: dict) -> None:
    stt = sdk.calculate_stt_cost("deepgram", sent.STT_SECONDS, P)
    tts = sdk.calculate_tts_cost("elevenlabs", sent.TTS_CHARS, P)
    llm = sdk.calculate_llm_cost("openai", "gpt-4o-mini", sent.LLM_INPUT_TOKENS, sent.LLM_OUTPUT_TOKENS)
    tel = sdk.calculate_telephony_cost("twilio", sent.TELEPHONY_SECONDS, P)
    assert tel == 0.017  # 65 s: two started minutes at 0.0085
    assert envelope["cost"] == {"stt": usd6(stt), "tts": usd6(tts), "llm": usd6(llm), "telephony": usd6(tel),
                                "realtime": 0.0, "total": usd6(stt + tts + llm + tel)}
    assert envelope["cost"]["total"] == 0.020794
    assert (envelope["cost_complete"], envelope["unpriced"]) == (True, [])


def test_turns_and_counts(envelope: dict) -> None:
    assert envelope["turns"] == len(sent.TURNS) == 2
    assert envelope["counts"] == {"spans": sent.SPANS, "barge_ins": 1, "tool_calls": 1, "errors": 0,
                                  "redactions": 0}
    assert sent.SPANS == 19


def test_latency_percentiles_come_from_the_turn_ttfb(envelope: dict) -> None:
    lat = envelope["latency"]
    assert sent.TTFB_MS == [850.0, 1250.0]
    # linear interpolation between closest ranks over [850, 1250]
    assert (lat["p50_ms"], lat["p95_ms"], lat["p99_ms"]) == (1050.0, 1230.0, 1246.0)
    assert lat["turn_p50_ms"] == 800.0  # turn_ms 1200 and 400
    assert lat["llm_ttft_p50_ms"] >= 20.0  # the first token came after a 20 ms sleep in the inner LLM span


def test_the_blind_spots_of_span_derived_cost_are_named(envelope: dict) -> None:
    assert [w["code"] for w in envelope["warnings"]] == [
        "llm_cached_tokens_full_price",
        "model_defaulted",  # the tool-call round streams no token, so its span names no model
        "stt_provider_rate",
        "stt_tail_unmetered",
        "tts_chars_from_spans",
        "tts_provider_rate",
    ]
