"""A full fake Twilio call through the SDK's real server route (tests/sdk/emit_call.py), in both
span shapes, compared component by component with the SDK's own call log for the same call.

What otel-patter can know is what the spans carry. Where that differs from the SDK's own
figures (research §6.7: STT tail, cached tokens, sentence-level TTS characters, values
overwritten on a framework span), the envelope must name the blind spot in `warnings`.
"""

from __future__ import annotations

import math

import pytest
from getpatter import pricing as sdk

from otel_patter.processors.envelope import percentile
from tests.sdk import emit_call
from tests.sdk.conftest import FullCall, usd6

P = sdk.DEFAULT_PRICING
MODEL = emit_call.LLM_MODEL
SPANS = {"getpatter_only": 37, "fastapi": 31}  # fastapi: 9 patter.billable fewer, 3 framework spans more
COMMON_WARNINGS = ["llm_cached_tokens_full_price", "model_defaulted", "stt_provider_rate", "stt_tail_unmetered",
                   "tts_chars_from_spans", "tts_provider_rate"]
WARNINGS = {"getpatter_only": COMMON_WARNINGS, "fastapi": sorted([*COMMON_WARNINGS, "cost_on_framework_span"])}
# a component whose span-derived cost differs from the SDK's must name one of these (research §6.7)
BLIND_SPOTS = {
    "stt": {"stt_tail_unmetered", "cost_on_framework_span"},
    "tts": {"tts_chars_from_spans", "tts_usage_missing"},
    "llm": {"llm_cached_tokens_full_price", "model_defaulted"},
}


def codes(env: dict) -> list[str]:
    return [w["code"] for w in env["warnings"]]


def only(lines: list[dict]) -> dict:
    assert len(lines) == 1, lines
    return lines[0]


def sdk_stt_seconds(call: FullCall) -> float:
    # the SDK keeps no STT seconds in its call log; its cost is calculate_stt_cost at the deepgram rate
    return call.sdk_meta["cost"]["stt"] / P["deepgram"]["price"] * 60


# -- identity, turns, counts ------------------------------------------------------------------------------
def test_the_call_is_one_final_envelope_with_the_sdk_call_id(full_call: FullCall) -> None:
    env = full_call.envelope
    assert env["call_id"] == full_call.sdk_meta["call_id"] == emit_call.CALL_SID
    assert (env["status"], env["final_reason"]) == ("completed", "hangup_usage")
    assert env["writer"] == "otel-patter"
    assert list(env["sides"]) == ["uut"]
    assert env["counts"]["spans"] == SPANS[full_call.shape]
    assert env["counts"]["errors"] == 0
    assert env["started_at"][:10] == full_call.sdk_meta["started_at"][:10]


def test_turns_tool_calls_and_barge_ins_match_the_sdk_call_log(full_call: FullCall) -> None:
    env = full_call.envelope
    sdk_tool_calls = sum(e["type"] == "tool_call" for e in full_call.sdk_events)
    sdk_barge_ins = sum(e["type"] == "barge_in" for e in full_call.sdk_events)
    assert env["turns"] == full_call.sdk_meta["turns"] == len(full_call.sdk_turns) == 4
    assert env["counts"]["tool_calls"] == sdk_tool_calls == 1
    assert env["counts"]["barge_ins"] == sdk_barge_ins == 1


def test_providers_direction_and_model_match_the_sdk_call_log(full_call: FullCall) -> None:
    env, meta = full_call.envelope, full_call.sdk_meta
    assert env["agent"] == {"stt": "deepgram", "llm": "openai", "tts": "elevenlabs", "model": MODEL}
    assert env["agent"]["model"] == meta["agent"]["model"]
    assert env["telephony_provider"] == meta["telephony_provider"] == "twilio"
    assert env["direction"] == meta["direction"] == "inbound"
    assert env["provider_mode"] == meta["provider_mode"] == "pipeline"


# -- component by component ----------------------------------------------------------------------------------
def test_telephony_equals_the_sdk(full_call: FullCall) -> None:
    env, meta = full_call.envelope, full_call.sdk_meta
    line = only(env["usage"]["telephony"])
    assert (line["provider"], line["billed_minutes"]) == ("twilio", 1.0)
    assert line["billed_minutes"] == math.ceil(meta["duration_ms"] / 60000)
    assert env["cost"]["telephony"] == usd6(sdk.calculate_telephony_cost("twilio", line["minutes"] * 60, P))
    assert env["cost"]["telephony"] == meta["cost"]["telephony"] == 0.0085


def test_stt_is_the_span_seconds_at_the_sdk_rate_and_below_the_sdk(full_call: FullCall) -> None:
    env, meta = full_call.envelope, full_call.sdk_meta
    line = only(env["usage"]["stt"])
    assert (line["provider"], line["model"]) == ("deepgram", None)
    assert env["cost"]["stt"] == line["usd"] == usd6(sdk.calculate_stt_cost("deepgram", line["seconds"], P))
    # the spans never carry the audio after the last final transcript
    assert line["seconds"] < sdk_stt_seconds(full_call) <= emit_call.CALLER_AUDIO_S
    assert env["cost"]["stt"] < meta["cost"]["stt"] == 0.00112
    assert "stt_tail_unmetered" in codes(env)


def test_stt_behind_fastapi_is_only_the_last_value_the_framework_span_kept(fastapi_call: FullCall) -> None:
    env = fastapi_call.envelope
    stt_spans = [s for s in fastapi_call.wal_spans() if "patter.cost.stt_seconds" in s["attributes"]]
    assert [s["name"] for s in stt_spans] == ["fastapi.endpoint"]
    kept = stt_spans[0]["attributes"]["patter.cost.stt_seconds"]
    assert only(env["usage"]["stt"])["seconds"] == kept
    assert kept < sdk_stt_seconds(fastapi_call) / 2  # four final transcripts, one survived
    assert "cost_on_framework_span" in codes(env)


def test_stt_without_a_framework_span_is_the_sum_of_every_final_transcript(getpatter_only_call: FullCall) -> None:
    env = getpatter_only_call.envelope
    stt_spans = [s for s in getpatter_only_call.wal_spans() if "patter.cost.stt_seconds" in s["attributes"]]
    assert [s["name"] for s in stt_spans] == ["patter.billable"] * 4
    total = sum(s["attributes"]["patter.cost.stt_seconds"] for s in stt_spans)
    assert only(env["usage"]["stt"])["seconds"] == pytest.approx(total, abs=1e-9)
    assert 10.0 <= total < 10.1  # 1.2 + 3.8 + 0.5 + 4.5 s of audio by the fake Deepgram's script


def test_tts_is_the_sentence_characters_at_the_sdk_rate_and_below_the_sdk(full_call: FullCall) -> None:
    env, meta = full_call.envelope, full_call.sdk_meta
    line = only(env["usage"]["tts"])
    sdk_chars = sum(t["tts_characters"] for t in full_call.sdk_turns)
    assert (line["provider"], line["model"]) == ("elevenlabs", None)
    # trimmed sentences: 255 characters on spans, 261 in the SDK's full reply texts
    assert (line["chars"], sdk_chars) == (255, 261)
    assert env["cost"]["tts"] == line["usd"] == usd6(sdk.calculate_tts_cost("elevenlabs", line["chars"], P))
    assert meta["cost"]["tts"] == round(sdk.calculate_tts_cost("elevenlabs", sdk_chars, P), 6) == 0.01305
    assert env["cost"]["tts"] < meta["cost"]["tts"]
    assert "tts_chars_from_spans" in codes(env)


def test_llm_prices_cached_tokens_at_the_full_rate_and_is_above_the_sdk_by_exactly_that(full_call: FullCall) -> None:
    env, meta = full_call.envelope, full_call.sdk_meta
    line = only(env["usage"]["llm"])
    tin, tout, cached = emit_call.LLM_PROMPT_TOKENS, emit_call.LLM_COMPLETION_TOKENS, emit_call.LLM_CACHED_TOKENS
    assert (line["provider"], line["model"], line["input_tokens"], line["output_tokens"]) == (
        "openai", MODEL, tin, tout) == ("openai", MODEL, 1270, 65)
    assert env["cost"]["llm"] == line["usd"] == usd6(sdk.calculate_llm_cost("openai", MODEL, tin, tout))
    # the SDK bills the 128 cached prompt tokens at the cache-read rate; no span says how many were cached
    assert meta["cost"]["llm"] == round(  # the SDK's own float rounding
        sdk.calculate_llm_cost("openai", MODEL, tin - cached, tout, cache_read_tokens=cached), 6)
    assert env["cost"]["llm"] > meta["cost"]["llm"]
    assert (env["cost"]["llm"], meta["cost"]["llm"]) == (0.00023, 0.00022)
    assert "llm_cached_tokens_full_price" in codes(env)


def test_every_component_that_differs_from_the_sdk_names_its_blind_spot(full_call: FullCall) -> None:
    env, meta = full_call.envelope, full_call.sdk_meta
    assert env["cost"]["telephony"] == meta["cost"]["telephony"]
    for component, blind_spots in BLIND_SPOTS.items():
        if env["cost"][component] != meta["cost"][component]:
            assert blind_spots & set(codes(env)), (component, env["cost"][component], meta["cost"][component])
    assert codes(env) == WARNINGS[full_call.shape]


def test_total_is_the_exact_sum_and_everything_is_priced(full_call: FullCall) -> None:
    env = full_call.envelope
    c = env["cost"]
    assert c["realtime"] == 0.0
    assert abs(c["total"] - (c["stt"] + c["tts"] + c["llm"] + c["telephony"])) <= 2e-6
    assert (env["cost_complete"], env["unpriced"]) == (True, [])
    assert env["sides"]["uut"]["cost"] == c


# -- latency -------------------------------------------------------------------------------------------------
def test_latency_without_a_framework_span_is_the_sdk_turn_percentiles(getpatter_only_call: FullCall) -> None:
    env, meta = getpatter_only_call.envelope, getpatter_only_call.sdk_meta
    totals = [t["latency"]["total_ms"] for t in getpatter_only_call.sdk_turns]
    lat = env["latency"]
    for q, key in ((0.50, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
        assert lat[key] == percentile(totals, q)
        assert abs(lat[key] - meta["latency"][key]) <= 0.05 + 1e-9  # the SDK rounds to 1 decimal


def test_latency_behind_fastapi_is_only_the_last_turn(fastapi_call: FullCall) -> None:
    env = fastapi_call.envelope
    last_turn = fastapi_call.sdk_turns[-1]["latency"]["total_ms"]
    assert env["latency"]["p50_ms"] == env["latency"]["p95_ms"] == env["latency"]["p99_ms"] == last_turn
    assert "cost_on_framework_span" in codes(env)


# -- the files -------------------------------------------------------------------------------------------------
def test_a_separate_log_dir_holds_our_envelope_as_metadata_json(getpatter_only_call: FullCall) -> None:
    call = getpatter_only_call
    assert call.envelope_path.name == "metadata.json"
    assert call.envelope_path.read_text().count('"writer": "otel-patter"') == 1
    assert sorted(p.name for p in call.call_dir.iterdir()) == ["metadata.json", "spans.jsonl"]
    assert len(call.wal_spans()) == SPANS["getpatter_only"]


def test_a_shared_log_dir_keeps_the_sdk_metadata_and_puts_ours_beside_it(fastapi_call: FullCall) -> None:
    call = fastapi_call
    assert call.sdk_root == call.server.log_dir
    assert call.envelope_path.name == "otel-patter.json"
    assert sorted(p.name for p in call.call_dir.iterdir()) == [
        "events.jsonl", "metadata.json", "otel-patter.json", "spans.jsonl", "transcript.jsonl"]
    meta = call.sdk_meta  # still the SDK's own file, as the SDK last wrote it at call end
    assert "writer" not in meta
    assert (meta["status"], meta["turns"], set(meta["cost"])) == (
        "completed", 4, {"stt", "tts", "llm", "telephony", "total", "llm_cached_savings"})
    code, listed = call.server.get("/api/v1/calls")
    assert code == 200
    assert [c["call_id"] for c in listed["calls"]] == [emit_call.CALL_SID]


def test_the_callers_numbers_never_reach_our_files(full_call: FullCall) -> None:
    sdk_files = {full_call.call_dir / n for n in ("metadata.json", "transcript.jsonl", "events.jsonl")
                 } if full_call.shape == "fastapi" else set()
    ours = [p for p in full_call.server.log_dir.rglob("*") if p.is_file() and p not in sdk_files]
    assert full_call.call_dir / "spans.jsonl" in ours
    for path in ours:
        text = path.read_text(errors="replace")
        for number in (emit_call.CALLER, emit_call.CALLEE):
            assert number[2:] not in text, path
    assert full_call.envelope["caller"] == full_call.envelope["callee"] == ""
