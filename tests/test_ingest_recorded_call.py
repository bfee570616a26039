"""The recorded getpatter 0.7.0 call, sent as the SDK sent it, becomes one exact envelope."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from getpatter import pricing as sdk

from tests.otlp import RECORDED_CALL_ID, _load, post, recorded_call
from tests.server import ServerProc


def _sum(attr: str) -> float:
    return sum(s["attrs"].get(attr, 0) for s in _load("recorded_call_getpatter_only.json"))


STT_S = _sum("patter.cost.stt_seconds")
TTS_CHARS = int(_sum("patter.cost.tts_chars"))
LLM_IN = int(_sum("patter.cost.llm_input_tokens"))
LLM_OUT = int(_sum("patter.cost.llm_output_tokens"))
TEL_MIN = _sum("patter.cost.telephony_minutes")


def send_recorded(server: ServerProc, **kw: object) -> None:
    for req in recorded_call(**kw):  # type: ignore[arg-type]
        code, body, _ = post(server.http_endpoint + "/v1/traces", req.SerializeToString())
        assert code == 200, body


@pytest.fixture
def envelope(server: ServerProc) -> dict:
    send_recorded(server)
    return server.wait_final(RECORDED_CALL_ID)


def test_usage_is_the_sum_of_what_the_spans_carried(envelope: dict) -> None:
    u = envelope["usage"]
    assert u["stt"] == [{"provider": "deepgram", "model": None, "seconds": STT_S,
                         "usd": round(STT_S / 60 * 0.0048, 6)}]
    assert u["tts"][0]["chars"] == TTS_CHARS == 255
    assert (u["llm"][0]["provider"], u["llm"][0]["model"]) == ("openai", "gpt-4o-mini")
    assert (u["llm"][0]["input_tokens"], u["llm"][0]["output_tokens"]) == (LLM_IN, LLM_OUT) == (1270, 65)
    assert u["telephony"] == [{"provider": "twilio", "minutes": TEL_MIN, "billed_minutes": 1.0, "usd": 0.0085}]


def test_cost_equals_the_sdk_pricing_functions_on_the_same_usage(envelope: dict) -> None:
    p = sdk.DEFAULT_PRICING
    expected = {
        "stt": sdk.calculate_stt_cost("deepgram", STT_S, p),
        "tts": sdk.calculate_tts_cost("elevenlabs", TTS_CHARS, p),
        "llm": sdk.calculate_llm_cost("openai", "gpt-4o-mini", LLM_IN, LLM_OUT),
        "telephony": sdk.calculate_telephony_cost("twilio", TEL_MIN * 60, p),
        "realtime": 0.0,
    }
    expected["total"] = sum(expected.values())
    # the SDK rounds floats; we round the exact Decimal half-even: at most half a micro-dollar apart
    for component, usd in expected.items():
        assert abs(envelope["cost"][component] - usd) <= 5e-7 + 1e-15, component
    assert envelope["cost_complete"] is True
    assert envelope["unpriced"] == []


def test_money_is_rounded_half_even_from_the_exact_decimal(envelope: dict) -> None:
    # 1270 x 0.15 + 65 x 0.60 per 1M tokens = 0.0002295 exactly; float round() would say 0.000229
    assert envelope["cost"]["llm"] == 0.00023
    exact_total = Decimal(str(STT_S)) / 60 * Decimal("0.0048") + Decimal("0.01275") + Decimal("0.0002295") \
        + Decimal("0.0085")
    assert envelope["cost"]["total"] == float(exact_total.quantize(Decimal("0.000001"), ROUND_HALF_EVEN))


def test_identity_turns_and_counts(envelope: dict) -> None:
    assert envelope["call_id"] == RECORDED_CALL_ID
    assert envelope["writer"] == "otel-patter"
    assert envelope["status"] == "completed"
    assert envelope["final_reason"] == "hangup_usage"
    assert envelope["turns"] == 4
    assert envelope["counts"] == {"spans": 37, "barge_ins": 1, "tool_calls": 1, "errors": 0, "redactions": 0}
    assert envelope["telephony_provider"] == "twilio"
    assert envelope["direction"] == "inbound"
    assert envelope["agent"] == {"stt": "deepgram", "llm": "openai", "tts": "elevenlabs", "model": "gpt-4o-mini"}
    assert list(envelope["sides"]) == ["uut"]


def test_latency_percentiles_interpolate_the_turn_ttfb(envelope: dict) -> None:
    ttfb = sorted(s["attrs"]["patter.latency.ttfb_ms"] for s in _load("recorded_call_getpatter_only.json")
                  if "patter.latency.ttfb_ms" in s["attrs"])
    assert len(ttfb) == 4

    def pct(q: float) -> float:
        pos = (len(ttfb) - 1) * q
        lo = int(pos)
        hi = min(lo + 1, len(ttfb) - 1)
        return round(ttfb[lo] + (ttfb[hi] - ttfb[lo]) * (pos - lo), 3)

    lat = envelope["latency"]
    assert (lat["p50_ms"], lat["p95_ms"], lat["p99_ms"]) == (pct(0.5), pct(0.95), pct(0.99))


def test_envelope_file_is_the_api_answer_with_private_modes(server: ServerProc, envelope: dict) -> None:
    files = server.envelope_files()
    assert len(files) == 1
    call_dir = files[0].parent
    assert call_dir.name == RECORDED_CALL_ID
    assert call_dir.parent.relative_to(server.log_dir / "calls").as_posix() == "2026/11/23"
    assert json.loads(files[0].read_text()) == envelope
    assert files[0].stat().st_mode & 0o777 == 0o600
    assert call_dir.stat().st_mode & 0o777 == 0o700
    wal = (call_dir / "spans.jsonl").read_text().splitlines()
    assert len(wal) == 37
    first = json.loads(wal[0])
    assert (first["schema_version"], first["type"], first["side"]) == ("1.0", "span", "uut")
    assert not (call_dir / "events.jsonl").exists() and not (call_dir / "transcript.jsonl").exists()


def test_resending_every_request_changes_nothing(server: ServerProc, envelope: dict) -> None:
    send_recorded(server)  # a client retry of all four POSTs
    code, again = server.get(f"/api/v1/calls/{RECORDED_CALL_ID}")
    assert code == 200
    assert again == envelope
    wal = next(server.log_dir.glob("calls/*/*/*/*/spans.jsonl")).read_text().splitlines()
    assert len(wal) == 37


def test_fastapi_shape_is_one_call_and_warns_about_overwritten_costs(server: ServerProc) -> None:
    send_recorded(server, fastapi=True, call_id="CAfastapi0001")
    env = server.wait_final("CAfastapi0001")
    assert env["counts"]["spans"] == len(_load("recorded_call_fastapi.json"))
    codes = [w["code"] for w in env["warnings"]]
    assert "cost_on_framework_span" in codes
    # the framework span kept only the last STT value: exactly what arrived is what is priced
    fa = next(s for s in _load("recorded_call_fastapi.json") if s["name"] == "fastapi.endpoint")
    assert env["usage"]["stt"][0]["seconds"] == fa["attrs"]["patter.cost.stt_seconds"]
    assert env["turns"] == 4
