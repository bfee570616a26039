"""Emit one call's spans with the real getpatter 0.7.0 tracing helpers, in pipeline order.

Run in its own process (``init_tracing`` latches global state):

    PATTER_OTEL_ENABLED=1 OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python emit_direct.py [CALL_ID]

Adapted from the research harness (research/getpatter-sdk-harness/emit_direct.py): the
SDK's own ``init_tracing``, ``patter_call_scope``, ``start_span``, ``record_patter_attrs``,
``PipelineHookExecutor.record_turn_latency`` and ``SpeechEvents`` (for the
``patter.event.*`` span events, the only place a model name appears), two turns long,
exported by the SDK's own OTLP/HTTP exporter to whatever endpoint the environment names.
The constants below are what the test expects to come back; importing this module runs nothing.
"""

from __future__ import annotations

import asyncio
import sys

CALL_ID = "CA" + "0" * 31 + "1"
LLM_MODEL = "gpt-4o-mini"
# per turn: STT seconds (billed at the final transcript), LLM iterations (input, output tokens),
# TTS sentences (characters), (ttfb_ms, turn_ms) latency
TURNS = [
    {"stt_seconds": 2.5, "llm": [(120, 15), (180, 22)], "tts": [30, 25], "latency": (850.0, 1200.0),
     "tool": "lookup_order"},
    {"stt_seconds": 1.75, "llm": [(210, 9)], "tts": [12], "latency": (1250.0, 400.0), "bargein": True},
]
TELEPHONY_SECONDS = 65.0
OUTSIDE_SCOPE_TTS_CHARS = 999  # recorded after the call scope closed: must go nowhere

STT_SECONDS = sum(t["stt_seconds"] for t in TURNS)
TTS_CHARS = sum(sum(t["tts"]) for t in TURNS)
LLM_INPUT_TOKENS = sum(i for t in TURNS for i, _ in t["llm"])
LLM_OUTPUT_TOKENS = sum(o for t in TURNS for _, o in t["llm"])
TTFB_MS = [t["latency"][0] for t in TURNS]
TELEPHONY_MINUTES = TELEPHONY_SECONDS / 60.0
# 1 stt + 1 stt billable + 1 endpoint + 1 outer llm + inner llms + tool + tts + 1 latency billable [+ bargein]
# per turn, and the hang-up billable
SPANS = sum(5 + len(t["llm"]) + len(t["tts"]) + ("tool" in t) + bool(t.get("bargein")) for t in TURNS) + 1


async def emit(call_id: str) -> None:
    from getpatter._speech_events import SpeechEvents
    from getpatter.observability import (
        SPAN_BARGEIN,
        SPAN_ENDPOINT,
        SPAN_LLM,
        SPAN_STT,
        SPAN_TOOL,
        SPAN_TTS,
        init_tracing,
        patter_call_scope,
        record_patter_attrs,
        shutdown_tracing,
        start_span,
    )
    from getpatter.services.pipeline_hooks import PipelineHookExecutor

    if init_tracing() is not True:  # reads PATTER_OTEL_ENABLED and OTEL_EXPORTER_OTLP_ENDPOINT
        raise SystemExit("init_tracing() did not enable tracing: is PATTER_OTEL_ENABLED=1 set?")
    events = SpeechEvents()
    hooks = PipelineHookExecutor(hooks=None)
    cid = {"patter.call.id": call_id}
    with patter_call_scope(call_id=call_id, side="uut"):
        for turn in TURNS:
            # the STT receive loop stamps the audio since the last final transcript; no span is current
            record_patter_attrs({"patter.cost.stt_seconds": turn["stt_seconds"], "patter.stt.provider": "deepgram"})
            await events.fire_user_speech_eos(trigger="vad_silence")  # advances patter.turn.idx
            with start_span(SPAN_STT, {"getpatter.stt.text_len": 12, **cid}):
                pass  # the SDK's STT span is zero-length like this
            with start_span(SPAN_ENDPOINT, cid):
                pass
            with start_span(SPAN_LLM, cid):  # stream_handler's outer LLM span
                for iteration, (tin, tout) in enumerate(turn["llm"]):
                    last = iteration == len(turn["llm"]) - 1
                    with start_span(SPAN_LLM, {"patter.llm.iteration": iteration, "patter.llm.history_size": 0,
                                               **cid}):  # llm_loop's inner LLM span
                        await asyncio.sleep(0.02)
                        if last:  # a tool-call round streams no content token: the event fires once, here
                            await events.fire_llm_first_token(llm_provider="openai", model=LLM_MODEL)
                        record_patter_attrs({"patter.cost.llm_input_tokens": tin,
                                             "patter.cost.llm_output_tokens": tout,
                                             "patter.llm.provider": "openai"})
                        if last:
                            for chars in turn["tts"]:
                                with start_span(SPAN_TTS, {"getpatter.tts.text_len": chars, **cid}):
                                    record_patter_attrs({"patter.cost.tts_chars": chars,
                                                         "patter.tts.provider": "elevenlabs"})
                    if not last and "tool" in turn:
                        with start_span(SPAN_TOOL, {"patter.tool.name": turn["tool"],
                                                    "patter.tool.transport": "handler", **cid}):
                            await asyncio.sleep(0.005)
                await events.fire_agent_speech_ended(speech_duration_ms=100, interrupted=bool(turn.get("bargein")))
            ttfb_ms, turn_ms = turn["latency"]
            hooks.record_turn_latency(ttfb_ms=ttfb_ms, turn_ms=turn_ms)
            if turn.get("bargein"):
                with start_span(SPAN_BARGEIN, cid):
                    pass
        # what TwilioAdapter.record_call_end_cost stamps in the bridge's finally, at hang-up
        record_patter_attrs({"patter.cost.telephony_minutes": TELEPHONY_MINUTES,
                             "patter.telephony": "twilio", "patter.direction": "inbound"})
    record_patter_attrs({"patter.cost.tts_chars": OUTSIDE_SCOPE_TTS_CHARS})  # no scope: a silent no-op
    shutdown_tracing()  # flushes the BatchSpanProcessor: every span is exported before we exit


if __name__ == "__main__":
    asyncio.run(emit(sys.argv[1] if len(sys.argv) > 1 else CALL_ID))
