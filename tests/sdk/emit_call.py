"""A realistic, fully offline Twilio pipeline call through the real getpatter 0.7.0 server route.

    PATTER_OTEL_ENABLED=1 OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \\
        python emit_call.py SDK_LOG_ROOT [--no-fastapi-spans]

Adapted from the research harness (research/getpatter-sdk-harness/emit_call.py), without
its sink: the SDK's own OTLP/HTTP exporter sends to the endpoint the environment names,
and the SDK writes its own call log (metadata.json, transcript.jsonl, events.jsonl) under
SDK_LOG_ROOT. Real code paths: EmbeddedServer._create_app() -> /ws/stream/{call_id} ->
twilio_stream_bridge -> PipelineStreamHandler -> LLMLoop / ToolExecutor ->
CallMetricsAccumulator -> CallLogger, and the OTel spans. Only the network edges are faked
(Deepgram socket, ElevenLabs REST and OpenAI chat via httpx.MockTransport, the Twilio
media stream via starlette's TestClient). Nothing touches the network: the CallSid is
deliberately not a valid `CA`+32-hex SID (so no Twilio price lookup), no Deepgram key is
configured (no usage-API lookup), and PATTER_DASHBOARD_NOTIFY=0 (no POST to :8000).

`--no-fastapi-spans` turns FastAPI's native OTel spans off: the getpatter-only span shape
(as with an older FastAPI). Without it every Patter span nests under `fastapi.endpoint`.
The last stdout line is `RESULT {json}` (frames the SDK sent, the turns it reported).
The module-level constants are what the fake providers bill; importing this module runs nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

CALL_SID = "CA-offline-sim-0001"  # NOT a valid Twilio SID on purpose (see docstring)
CALLER, CALLEE = "+15551234567", "+15557654321"
LLM_MODEL = "gpt-4o-mini"
CALLER_AUDIO_S = 14.0
PCM_BYTES_PER_S = 16000 * 2  # the handler forwards PCM16 @ 16 kHz to STT

# The fake OpenAI's usage per request, in the order the call makes them.
LLM_USAGE = {
    "tool_call": {"prompt_tokens": 180, "completion_tokens": 9, "total_tokens": 189},
    "after_tool": {"prompt_tokens": 210, "completion_tokens": 14, "total_tokens": 224,
                   "prompt_tokens_details": {"cached_tokens": 128}},
    "returns": {"prompt_tokens": 260, "completion_tokens": 31, "total_tokens": 291},
    "never_mind": {"prompt_tokens": 300, "completion_tokens": 5, "total_tokens": 305},
    "goodbye": {"prompt_tokens": 320, "completion_tokens": 6, "total_tokens": 326},
}
LLM_PROMPT_TOKENS = sum(u["prompt_tokens"] for u in LLM_USAGE.values())
LLM_COMPLETION_TOKENS = sum(u["completion_tokens"] for u in LLM_USAGE.values())
LLM_CACHED_TOKENS = sum(u.get("prompt_tokens_details", {}).get("cached_tokens", 0) for u in LLM_USAGE.values())
REPLIES = {
    "after_tool": ["Order 42 ", "shipped yesterday. ", "It should arrive ", "tomorrow."],
    "returns": ["You can return any item within thirty days. ",
                "Just start the return from your account page and print the label. ",
                "Refunds usually post within five business days."],
    "never_mind": ["No problem. ", "Anything else?"],
    "goodbye": ["You're welcome. ", "Goodbye!"],
}


# ---------------------------------------------------------------- Deepgram (fake socket)
def _dg_results(text: str, final: bool, speech_final: bool = False) -> dict[str, Any]:
    return {"type": "Results", "channel": {"alternatives": [{"transcript": text, "confidence": 0.97, "words": []}]},
            "is_final": final, "speech_final": speech_final}


class FakeDeepgramWS:
    """Stands in for the websockets connection; DeepgramSTT's real send/receive/cost code runs on top."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[str | None] = asyncio.Queue()
        self.state = SimpleNamespace(name="OPEN")
        self.audio = 0
        self.q.put_nowait(json.dumps({"type": "Metadata", "request_id": "dg-req-offline"}))
        # (cumulative PCM bytes sent, frames to answer with)
        self.script = [
            (int(0.6 * PCM_BYTES_PER_S), [_dg_results("what is the status", False)]),
            (int(1.2 * PCM_BYTES_PER_S), [_dg_results("what is the status of order 42", True, True)]),
            (int(5.0 * PCM_BYTES_PER_S), [_dg_results("great and can you tell me about returns", True, True)]),
            # ~0.5 s later, while the agent still plays turn 2: a barge-in
            (int(5.5 * PCM_BYTES_PER_S), [_dg_results("actually never mind", True, True)]),
            (int(10.0 * PCM_BYTES_PER_S), [_dg_results("okay thanks goodbye", True, True)]),
        ]

    async def send(self, data: Any) -> None:
        if isinstance(data, bytes | bytearray):
            self.audio += len(data)
            while self.script and self.audio >= self.script[0][0]:
                for frame in self.script.pop(0)[1]:
                    self.q.put_nowait(json.dumps(frame))

    async def close(self) -> None:
        self.state.name = "CLOSED"
        self.q.put_nowait(None)

    def __aiter__(self) -> FakeDeepgramWS:
        return self

    async def __anext__(self) -> str:
        item = await self.q.get()
        if item is None:
            raise StopAsyncIteration
        return item


# ---------------------------------------------------------------- ElevenLabs and OpenAI (mock HTTP)
def _eleven_handler(request: Any) -> Any:
    import httpx

    text = json.loads(request.content)["text"]
    n = max(800, 8000 * len(text) // 25)  # ~1 s of mu-law 8 kHz per 25 characters
    return httpx.Response(200, content=b"\xff" * n, headers={"content-type": "audio/basic"})


def _sse(chunks: list[dict[str, Any]]) -> Any:
    import httpx

    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


def _chunk(delta: dict[str, Any] | None = None, usage: dict[str, Any] | None = None,
           finish: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"id": "chatcmpl-offline", "object": "chat.completion.chunk", "created": 0,
                         "model": LLM_MODEL}
    c["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        c["usage"] = usage
    return c


def _openai_handler(request: Any) -> Any:
    last = json.loads(request.content)["messages"][-1]
    content = last.get("content") or ""
    if last["role"] == "tool":
        key = "after_tool"
    elif "order" in content:
        tc = {"index": 0, "id": "call_offline_1", "type": "function",
              "function": {"name": "lookup_order", "arguments": "{\"order_id\": \"42\"}"}}
        return _sse([_chunk({"role": "assistant", "tool_calls": [tc]}), _chunk({}, finish="tool_calls"),
                     _chunk(usage=LLM_USAGE["tool_call"])])
    elif "returns" in content:
        key = "returns"
    elif "never mind" in content:
        key = "never_mind"
    else:
        key = "goodbye"
    chunks = [_chunk({"role": "assistant", "content": ""})]
    chunks += [_chunk({"content": w}) for w in REPLIES[key]]
    chunks += [_chunk({}, finish="stop"), _chunk(usage=LLM_USAGE[key])]
    return _sse(chunks)


async def lookup_order(arguments: dict[str, Any], call_context: dict[str, Any]) -> str:
    await asyncio.sleep(0.05)
    return json.dumps({"order_id": arguments.get("order_id"), "status": "shipped"})


# ---------------------------------------------------------------- the call
def run_call(log_root: str, fastapi_spans: bool) -> dict[str, Any]:
    os.environ["PATTER_LOG_DIR"] = log_root
    os.environ["PATTER_DASHBOARD_NOTIFY"] = "0"  # else the SDK POSTs to 127.0.0.1:8000/api/dashboard/ingest
    os.environ["PATTER_TELEMETRY_DISABLED"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"

    import httpx
    from getpatter._speech_events import SpeechEvents
    from getpatter.local_config import LocalConfig
    from getpatter.models import Agent
    from getpatter.observability import init_tracing, shutdown_tracing
    from getpatter.providers.deepgram_stt import DeepgramSTT
    from getpatter.providers.elevenlabs_tts import ElevenLabsTTS
    from getpatter.server import EmbeddedServer
    from getpatter.services.llm_loop import OpenAILLMProvider
    from openai import AsyncOpenAI
    from starlette.testclient import TestClient

    if init_tracing() is not True:
        raise SystemExit("init_tracing() did not enable tracing: is PATTER_OTEL_ENABLED=1 set?")

    class OfflineDeepgramSTT(DeepgramSTT):
        async def connect(self) -> None:  # only the socket is faked
            self._ws = FakeDeepgramWS()

    tts = ElevenLabsTTS(api_key="el-dummy")
    tts._client = httpx.AsyncClient(base_url="https://api.elevenlabs.io/v1",
                                    transport=httpx.MockTransport(_eleven_handler))
    llm = OpenAILLMProvider(api_key="sk-dummy", model=LLM_MODEL)
    llm._client = AsyncOpenAI(api_key="sk-dummy",
                              http_client=httpx.AsyncClient(transport=httpx.MockTransport(_openai_handler)))
    agent = Agent(
        system_prompt="You are a helpful order-status agent.",
        model=LLM_MODEL,
        provider="pipeline",
        stt=OfflineDeepgramSTT(api_key="dg-dummy", encoding="linear16", sample_rate=16000),
        tts=tts,
        llm=llm,
        tools=({"name": "lookup_order", "description": "Look up an order",
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                "handler": lookup_order},),
    )
    config = LocalConfig(
        telephony_provider="twilio",
        twilio_sid="AC" + "0" * 32,  # dummy; never used for network (see docstring)
        twilio_token="dummy-token",
        phone_number=CALLEE,
        require_signature=False,
        persist_root=log_root,
    )
    server = EmbeddedServer(config=config, agent=agent, dashboard=True)
    turns: list[dict[str, Any]] = []

    async def on_metrics(data: dict[str, Any]) -> None:
        t = data["turn"]
        turns.append({"turn_index": t.turn_index, "agent_text": t.agent_text})

    server.on_metrics = on_metrics
    server.speech_events = SpeechEvents()  # as Patter.serve() does: patter.event.* span events
    app = server._create_app()
    if not fastapi_spans:
        # test-only switch: FastAPI >= 0.16x ships native OTel spans around the WS route
        app._native_telemetry.config["tracing"] = False
        app._native_telemetry.config["operation_spans"] = False

    received = {"media": 0, "mark": 0, "clear": 0, "other": 0}
    stop_reader = threading.Event()
    t0 = time.monotonic()
    with TestClient(app) as client, client.websocket_connect(
            f"/ws/stream/{CALL_SID}?caller=%2B15551234567&callee=%2B15557654321") as ws:

        def reader() -> None:
            while not stop_reader.is_set():
                try:
                    msg = json.loads(ws.receive_text())
                except Exception:
                    return
                ev = msg.get("event", "other")
                received[ev if ev in received else "other"] += 1
                if ev == "mark":  # Twilio echoes a mark once its audio played
                    ws.send_text(json.dumps({"event": "mark", "streamSid": "MZoffline",
                                             "mark": {"name": msg["mark"]["name"]}}))

        threading.Thread(target=reader, daemon=True).start()
        ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send_text(json.dumps({
            "event": "start", "streamSid": "MZoffline",
            "start": {"callSid": CALL_SID, "streamSid": "MZoffline", "accountSid": config.twilio_sid,
                      "customParameters": {"caller": CALLER, "callee": CALLEE},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        frame = base64.b64encode(b"\x7f" * 160).decode()  # 20 ms of mu-law
        for i in range(int(CALLER_AUDIO_S / 0.02)):
            ws.send_text(json.dumps({"event": "media", "streamSid": "MZoffline",
                                     "media": {"track": "inbound", "chunk": str(i), "timestamp": str(i * 20),
                                               "payload": frame}}))
            time.sleep(0.02)
        ws.send_text(json.dumps({"event": "stop", "streamSid": "MZoffline", "stop": {"callSid": CALL_SID}}))
        time.sleep(1.0)
        stop_reader.set()
    call_s = time.monotonic() - t0
    shutdown_tracing()  # flushes the BatchSpanProcessor: every span is exported before we exit
    return {"call_seconds": round(call_s, 1), "frames": received, "turns": turns}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        raise SystemExit(__doc__)
    result = run_call(args[0], fastapi_spans="--no-fastapi-spans" not in sys.argv)
    print("RESULT " + json.dumps(result), flush=True)
