"""One small getpatter 0.7.0-shaped call, built by hand so tests know its exact USD and latency.

Prices (otel_patter/data/pricing.yaml 2026.3): deepgram STT $0.0048/min, twilio $0.0085/min rounded up
to whole minutes, openai gpt-4o-mini $0.15 / $0.60 per 1M input / output tokens.
"""

from __future__ import annotations

from typing import Any

from tests.otlp import T0, post, request, span
from tests.server import ServerProc

INSTANCE = "10fed054-98ac-4b2b-b2e8-65a6fca6b7eb"
DRIVER_INSTANCE = "5d1e2c7a-3f0b-4c8e-9a61-2b7f4e8d0c13"
S = 1_000_000_000


def call_id(n: int) -> str:
    """A Twilio-shaped CallSid."""
    return f"CA{n:032x}"


def resource(side: str = "uut", run_id: str | None = None, instance: str = INSTANCE) -> dict[str, Any]:
    res: dict[str, Any] = {"service.name": "patter", "service.instance.id": instance, "patter.side": side}
    if run_id is not None:
        res["test.run_id"] = run_id
    return res


def turn_spans(cid: str, ttfb_ms: list[float], *, start: int = T0, stt_seconds_per_turn: float = 7.5,
               tokens: tuple[int, int] = (300, 40), model: str = "gpt-4o-mini") -> list:
    """Per turn: an STT span with its seconds, an LLM span with its tokens, a billable span with its ttfb."""
    spans = []
    for i, ttfb in enumerate(ttfb_ms):
        t = start + i * 5 * S
        spans.append(span("getpatter.stt", {"patter.call.id": cid, "patter.cost.stt_seconds": stt_seconds_per_turn,
                                            "patter.stt.provider": "deepgram", "patter.turn.idx": i},
                          start=t, dur_ms=400))
        spans.append(span("getpatter.llm", {"patter.call.id": cid, "patter.llm.provider": "openai",
                                            "patter.llm.model": model, "patter.cost.llm_input_tokens": tokens[0],
                                            "patter.cost.llm_output_tokens": tokens[1], "patter.turn.idx": i},
                          start=t + 500_000_000, dur_ms=300))
        spans.append(span("patter.billable", {"patter.call_id": cid, "patter.latency.ttfb_ms": ttfb,
                                              "patter.turn.idx": i}, start=t + S, dur_ms=0))
    return spans


def hangup_span(cid: str, minutes: float, *, start: int = T0) -> Any:
    return span("patter.billable", {"patter.call_id": cid, "patter.cost.telephony_minutes": minutes,
                                    "patter.telephony": "twilio", "patter.direction": "inbound"},
                start=start + int(minutes * 60 * S), dur_ms=0)


def send(server: ServerProc, spans: list, res: dict[str, Any] | None = None) -> None:
    code, body, _ = post(server.http_endpoint + "/v1/traces", request(spans, res or resource()).SerializeToString())
    assert code == 200, body


def send_call(server: ServerProc, cid: str, ttfb_ms: list[float], *, minutes: float | None = 0.5,
              start: int = T0, side: str = "uut", run_id: str | None = None, model: str = "gpt-4o-mini",
              instance: str | None = None) -> None:
    """A whole call; with `minutes`, its hang-up usage too (so it is final `final_grace` later)."""
    spans = turn_spans(cid, ttfb_ms, start=start, model=model)
    if minutes is not None:
        spans.append(hangup_span(cid, minutes, start=start))
    send(server, spans, resource(side, run_id, instance or (INSTANCE if side == "uut" else DRIVER_INSTANCE)))
