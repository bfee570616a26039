"""gRPC, HTTP protobuf and HTTP JSON (each the real OTel exporter) deliver identical envelopes."""

from __future__ import annotations

from pathlib import Path

import pytest
from getpatter import pricing as sdk

from otel_patter import simulate
from tests.otlp import T0
from tests.server import ServerProc


def _run(server: ServerProc, protocol: str, shape: str = "0.7", calls: int = 2) -> tuple[dict[str, dict], list]:
    endpoint = server.grpc_endpoint if protocol == "grpc" else server.http_endpoint
    plans = simulate.build_calls(calls, shape=shape, seed=7, start_ns=T0)
    sent = simulate.emit(plans, endpoint=endpoint, protocol=protocol)
    return {c.call_id: server.wait_final(c.call_id) for c in sent}, sent


@pytest.fixture(scope="module")
def by_protocol(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, dict], list]]:
    out = {}
    for protocol in ("grpc", "http", "http/json"):
        s = ServerProc(tmp_path_factory.mktemp(protocol.replace("/", "_"))).start()
        try:
            out[protocol] = _run(s, protocol)
        finally:
            s.stop()
    return out


@pytest.mark.parametrize("protocol", ["http", "http/json"])
def test_every_transport_gives_the_envelopes_grpc_gives(by_protocol: dict, protocol: str) -> None:
    assert by_protocol[protocol][0] == by_protocol["grpc"][0]


def test_simulated_usage_is_what_the_envelope_prices(by_protocol: dict) -> None:
    envelopes, sent = by_protocol["grpc"]
    for call in sent:
        side = envelopes[call.call_id]["sides"][call.side]
        usage = side["usage"]
        for provider, seconds in call.usage["stt_seconds"].items():
            line = next(x for x in usage["stt"] if x["provider"] == provider)
            assert line["seconds"] == pytest.approx(seconds, abs=1e-9)
        for provider, chars in call.usage["tts_chars"].items():
            assert next(x for x in usage["tts"] if x["provider"] == provider)["chars"] == chars
        tokens = [sum(v[0] for v in call.usage["llm"].values()), sum(v[1] for v in call.usage["llm"].values())]
        assert [sum(x["input_tokens"] for x in usage["llm"]), sum(x["output_tokens"] for x in usage["llm"])] == tokens
        assert side["turns"] == call.turns
        assert side["counts"]["spans"] == call.spans
        assert side["counts"]["barge_ins"] == call.barge_ins
        assert side["counts"]["tool_calls"] == call.tool_calls
        for provider, minutes in call.usage["telephony_minutes"].items():
            tel = sdk.calculate_telephony_cost(provider, minutes * 60, sdk.DEFAULT_PRICING)
            assert side["cost"]["telephony"] == round(tel, 6)


def test_both_sides_of_a_simulated_call_are_kept_apart(by_protocol: dict) -> None:
    envelopes, sent = by_protocol["grpc"]
    env = envelopes[sent[0].call_id]
    assert sorted(env["sides"]) == ["driver", "uut"]
    assert env["cost"] == env["sides"]["uut"]["cost"]
    assert env["sides"]["driver"]["cost"]["telephony"] == 0.0


@pytest.mark.parametrize("shape", ["0.6", "fastapi"])
def test_other_shapes_roll_up_one_call_each(server: ServerProc, shape: str, tmp_path: Path) -> None:
    envelopes, sent = _run(server, "grpc", shape=shape, calls=1)
    uut = next(c for c in sent if c.side == "uut")
    env = envelopes[uut.call_id]
    assert env["sides"]["uut"]["counts"]["spans"] == uut.spans
    assert env["sides"]["uut"]["turns"] == uut.turns
    assert env["status"] == "completed"
    if shape == "0.6":
        assert env["final_reason"] == "root_span_end"
    else:
        assert "cost_on_framework_span" in [w["code"] for w in env["warnings"]]
