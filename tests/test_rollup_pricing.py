"""A call's USD equals the SDK's own pricing functions on the same usage, case by case."""

from __future__ import annotations

from pathlib import Path

import pytest
from getpatter import pricing as sdk

from tests.inproc import InProcess
from tests.otlp import T0, span

CALL = "CA0123456789abcdef0123456789abcdef"
UUT = {"service.name": "patter", "service.instance.id": "uut-instance"}
DRIVER = {"service.name": "patter", "service.instance.id": "driver-instance", "patter.side": "driver"}


def cost(attrs: dict, side: str | None = "uut", call: str = CALL, name: str = "patter.billable", **kw) -> object:
    a = {**attrs, "patter.call_id": call}
    if side:
        a["patter.side"] = side
    return span(name, a, **kw)


def llm_inner(tin: int, tout: int, *, provider: str = "openai", model: str | None = None, **kw) -> object:
    first_token = {"gen_ai.request.model": model, "gen_ai.provider.name": provider, "patter.turn.idx": 1}
    events = [("patter.event.llm_first_token", T0 + 70_000_000, first_token)] if model else []
    return cost({"patter.llm.iteration": 0, "patter.llm.history_size": 0, "patter.call.id": CALL,
                 "patter.cost.llm_input_tokens": tin, "patter.cost.llm_output_tokens": tout,
                 "patter.llm.provider": provider}, name="getpatter.llm", events=events, **kw)


@pytest.fixture
def p(tmp_path: Path) -> InProcess:
    return InProcess(tmp_path / "log")


def test_model_known_only_from_the_first_token_event_is_priced_by_prefix(p: InProcess) -> None:
    p.send([llm_inner(1200, 80, model="gpt-4o-mini-2024-07-18")], UUT)
    env = p.final(CALL)
    line = env["usage"]["llm"][0]
    assert line["model"] == "gpt-4o-mini-2024-07-18"
    assert env["cost"]["llm"] == round(sdk.calculate_llm_cost("openai", "gpt-4o-mini-2024-07-18", 1200, 80), 6)
    assert env["cost_complete"] is True


def test_llm_span_without_model_takes_the_model_seen_on_the_call(p: InProcess) -> None:
    p.send([llm_inner(1000, 50, model="gpt-4o"), llm_inner(500, 20)], UUT)
    env = p.final(CALL)
    assert env["usage"]["llm"] == [{"provider": "openai", "model": "gpt-4o", "input_tokens": 1500,
                                    "output_tokens": 70,
                                    "usd": round(sdk.calculate_llm_cost("openai", "gpt-4o", 1500, 70), 6)}]
    assert "model_defaulted" in [w["code"] for w in env["warnings"]]


def test_llm_without_any_model_uses_llm_default_model_with_a_warning(tmp_path: Path) -> None:
    p = InProcess(tmp_path / "log", **{"llm_default_model": {"groq": "llama-3.1-8b-instant"}})
    p.send([llm_inner(4000, 300, provider="groq")], UUT)
    env = p.final(CALL)
    assert env["usage"]["llm"][0]["model"] == "llama-3.1-8b-instant"
    assert env["cost"]["llm"] == round(sdk.calculate_llm_cost("groq", "llama-3.1-8b-instant", 4000, 300), 6)
    assert "model_defaulted" in [w["code"] for w in env["warnings"]]


def test_named_model_matching_nothing_is_unpriced_not_zero(p: InProcess) -> None:
    p.send([llm_inner(1000, 10, model="my-finetune-v3")], UUT)
    env = p.final(CALL)
    assert env["cost_complete"] is False
    assert env["cost"]["llm"] == 0.0
    assert env["unpriced"] == [{"side": "uut", "component": "llm", "reason": "no LLM rate for this provider and model",
                                "provider": "openai", "model": "my-finetune-v3", "input_tokens": 1000,
                                "output_tokens": 10}]


def test_unknown_provider_is_unpriced(p: InProcess) -> None:
    p.send([cost({"patter.cost.tts_chars": 400, "patter.tts.provider": "acme_voice"})], UUT)
    env = p.final(CALL)
    assert env["cost_complete"] is False
    assert env["unpriced"][0]["provider"] == "acme_voice"
    assert env["usage"]["tts"][0]["usd"] is None


def test_provider_alias_prices_cartesia_stt(p: InProcess) -> None:
    p.send([cost({"patter.cost.stt_seconds": 90.0, "patter.stt.provider": "cartesia"})], UUT)
    env = p.final(CALL)
    assert env["cost"]["stt"] == round(sdk.calculate_stt_cost("cartesia_stt", 90.0, sdk.DEFAULT_PRICING), 6)
    assert env["cost_complete"] is True


def test_twilio_round_up_applies_to_the_call_total_across_two_spans(p: InProcess) -> None:
    p.send([cost({"patter.cost.telephony_minutes": 0.5, "patter.telephony": "twilio"}),
            cost({"patter.cost.telephony_minutes": 0.6, "patter.telephony": "twilio"})], UUT)
    env = p.final(CALL)
    assert env["usage"]["telephony"] == [{"provider": "twilio", "minutes": 1.1, "billed_minutes": 2.0,
                                          "usd": 0.017}]
    assert env["cost"]["telephony"] == round(sdk.calculate_telephony_cost("twilio", 66.0, sdk.DEFAULT_PRICING), 6)


def test_sdk_shaped_override_keeps_round_up(tmp_path: Path) -> None:
    p = InProcess(tmp_path / "log", **{"pricing": {"twilio": {"price": 0.014}}})
    p.send([cost({"patter.cost.telephony_minutes": 61 / 60, "patter.telephony": "twilio"})], UUT)
    env = p.final(CALL)
    merged = sdk.merge_pricing({"twilio": {"price": 0.014}})
    assert env["cost"]["telephony"] == round(sdk.calculate_telephony_cost("twilio", 61.0, merged), 6) == 0.028


def test_driver_and_uut_sides_are_kept_apart(p: InProcess) -> None:
    p.send([cost({"patter.cost.tts_chars": 1000, "patter.tts.provider": "elevenlabs"}),
            cost({"patter.cost.telephony_minutes": 1.0, "patter.telephony": "twilio"})], UUT)
    p.send([cost({"patter.cost.tts_chars": 2000, "patter.tts.provider": "openai_tts"}, side=None),
            span("getpatter.llm", {"patter.call.id": CALL})], DRIVER)
    env = p.final(CALL)
    assert env["sides"]["uut"]["cost"]["tts"] == 0.05
    assert env["sides"]["driver"]["cost"]["tts"] == 0.03
    assert env["cost"] == env["sides"]["uut"]["cost"]
    assert env["sides"]["driver"]["counts"]["spans"] == 2
    assert env["sides"]["uut"]["counts"]["spans"] == 2


def test_stage_spans_without_side_follow_what_their_instance_declared(p: InProcess) -> None:
    p.send([span("getpatter.bargein", {"patter.call.id": CALL})], DRIVER | {"patter.side": ""})
    p.send([cost({"patter.cost.tts_chars": 10, "patter.tts.provider": "elevenlabs"}, side="driver")],
           DRIVER | {"patter.side": ""})
    env = p.final(CALL)
    assert list(env["sides"]) == ["driver"]
    assert env["sides"]["driver"]["counts"]["barge_ins"] == 1


def test_realtime_minutes_are_unpriced_unless_configured(p: InProcess) -> None:
    p.send([cost({"patter.cost.realtime_minutes": 2.0, "patter.realtime.provider": "openai_realtime"})], UUT)
    env = p.final(CALL)
    assert env["cost_complete"] is False
    assert env["unpriced"][0]["component"] == "realtime"
