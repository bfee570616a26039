"""`otel-patter simulate`: realistic Patter calls through the real OpenTelemetry SDK and OTLP exporters.

Each side of a call is played by its own `TracerProvider` (one per "process": the unit under test,
and, optionally, the driver that calls it), with a `BatchSpanProcessor` in front of the real
`OTLPSpanExporter` for the chosen protocol. Spans carry explicit start and end times, so a call
spans realistic seconds without sleeping, and they are started and ended in time order across all
calls of a side, so the batch processor exports children before parents and mixes concurrent calls
in one request, as a real Patter server does.

Shapes (see research/getpatter-sdk.md §2 and §6, and the recorded call in the harness artifacts):

- ``0.7``: what getpatter 0.7.0 sends with no framework span: every top-level span is a root in its
  own trace; `getpatter.*` spans carry `patter.call.id`; cost and latency that no getpatter span
  holds become zero-length `patter.billable` roots (scope `getpatter.observability`) with
  `patter.call_id` / `patter.side`.
- ``0.6``: the seeds' documented shape: one `getpatter.call` root (`getpatter.call.id`,
  `getpatter.call.direction`, `getpatter.call.provider_mode`) over every span of the call, child spans
  with `getpatter.*` attributes, `patter.cost.*` on the span doing the billable work.
- ``fastapi``: the 0.7.0 call behind FastAPI's native OpenTelemetry: `WS /ws/stream/{call_id}`
  (SERVER) -> `fastapi.endpoint` holds every Patter span in one trace, and the fallback cost and
  latency attributes land on `fastapi.endpoint`, where later values overwrite earlier ones.

Everything is deterministic from the seed, trace and span ids included (unless `random_ids`), so
sending the same plans twice is a client retry that a collector must deduplicate.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Span, SpanKind, set_span_in_context

AttrValue = str | bool | int | float
Attrs = dict[str, AttrValue]

SHAPES = ("0.7", "0.6", "fastapi")
PROTOCOLS = ("grpc", "http", "http/json")
SIDES = ("uut", "driver")
DEFAULT_ENDPOINTS = {"grpc": "http://127.0.0.1:4317", "http": "http://127.0.0.1:4318",
                     "http/json": "http://127.0.0.1:4318"}

SCOPE_PATTER = "patter"  # getpatter's tracer: trace.get_tracer(service_name)
SCOPE_BILLABLE = "getpatter.observability"  # record_patter_attrs' fallback span
SCOPE_FASTAPI = "fastapi"  # FastAPI's native OpenTelemetry

US = 1_000
MS = 1_000_000
S = 1_000_000_000
STT_SAMPLE_RATE = 16_000  # stt_seconds = bytes since the last final / (rate * bytes per sample)
BLANK_ID_EVERY = 10  # one call in ten has an inner LLM span with `patter.call.id: ""`
TOOLS = ("lookup_order", "check_availability", "transfer_call", "get_account_balance")
FASTAPI_HANDLER = "getpatter.server.EmbeddedServer._create_app.<locals>.twilio_stream_handler"


class SimulationError(RuntimeError):
    """The exporters did not deliver every span (refused, unreachable, or dropped)."""


@dataclass(frozen=True)
class _Providers:
    stt: str
    tts: str
    llm: str
    model: str
    telephony: str | None


_PROVIDERS = {
    "uut": _Providers(stt="deepgram", tts="elevenlabs", llm="openai", model="gpt-4o-mini", telephony="twilio"),
    "driver": _Providers(stt="deepgram", tts="openai_tts", llm="openai", model="gpt-4o-mini", telephony=None),
}


# -- the span tree a plan plays ----------------------------------------------------------------------
@dataclass(frozen=True)
class SpanEvent:
    name: str
    attrs: Attrs
    at_ns: int


@dataclass(frozen=True)
class AttrUpdate:
    """Attributes set on a live span later (`record_patter_attrs` on the current span)."""

    attrs: Attrs
    at_ns: int


@dataclass(eq=False)
class SpanNode:
    name: str
    scope: str
    start_ns: int
    end_ns: int
    attrs: Attrs = field(default_factory=dict)
    kind: SpanKind = SpanKind.INTERNAL
    events: list[SpanEvent] = field(default_factory=list)
    updates: list[AttrUpdate] = field(default_factory=list)
    children: list[SpanNode] = field(default_factory=list)

    def walk(self) -> list[SpanNode]:
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out

    def final_attrs(self) -> Attrs:
        """The attributes the span ends with: later updates overwrite earlier values, as the SDK does."""
        attrs = dict(self.attrs)
        for u in sorted(self.updates, key=lambda u: u.at_ns):
            attrs.update(u.attrs)
        return attrs


@dataclass
class SimulatedCall:
    call_id: str
    side: str  # "uut" | "driver"
    shape: str
    turns: int
    # exact totals put on spans (what a correct per-call rollup must find):
    # {"stt_seconds": {provider: float}, "tts_chars": {provider: int},
    #  "llm": {(provider, model | None): [input_tokens, output_tokens]}, "telephony_minutes": {provider: float}}
    usage: dict[str, Any]
    ttfb_ms: list[float]  # the patter.latency.ttfb_ms values the spans end with, in time order
    barge_ins: int
    tool_calls: int
    spans: int
    traces: int = 0  # distinct trace ids (0.7: one per root span; 0.6 and fastapi: 1)
    span_names: dict[str, int] = field(default_factory=dict)
    service_instance_id: str = ""
    start_ns: int = 0
    end_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        usage = dict(self.usage)
        usage["llm"] = [{"provider": p, "model": m, "input_tokens": v[0], "output_tokens": v[1]}
                        for (p, m), v in self.usage["llm"].items()]
        return {"call_id": self.call_id, "side": self.side, "shape": self.shape, "turns": self.turns,
                "spans": self.spans, "traces": self.traces, "span_names": self.span_names,
                "usage": usage, "ttfb_ms": self.ttfb_ms, "barge_ins": self.barge_ins,
                "tool_calls": self.tool_calls, "service_instance_id": self.service_instance_id,
                "start_ns": self.start_ns, "end_ns": self.end_ns}

    def line(self) -> str:
        u = self.usage
        parts = [f"{self.call_id} {self.side:<6} shape={self.shape} turns={self.turns} spans={self.spans} "
                 f"traces={self.traces}"]
        parts += [f"stt_seconds[{p}]={v:.4f}" for p, v in u["stt_seconds"].items()]
        parts += [f"tts_chars[{p}]={v}" for p, v in u["tts_chars"].items()]
        parts += [f"llm[{p}/{m or '?'}]={v[0]}/{v[1]}" for (p, m), v in u["llm"].items()]
        parts += [f"telephony_minutes[{p}]={v:.6f}" for p, v in u["telephony_minutes"].items()]
        parts.append("ttfb_ms=[" + ",".join(f"{v:g}" for v in self.ttfb_ms) + "]")
        return " ".join(parts)


@dataclass(eq=False)
class CallPlan:
    """One side of one call: the span trees to play and what they add up to."""

    call_id: str
    side: str
    shape: str
    index: int
    turns: int
    service_instance_id: str
    id_seed: int
    roots: list[SpanNode]

    @property
    def start_ns(self) -> int:
        return min(r.start_ns for r in self.roots)

    @property
    def end_ns(self) -> int:
        return max(r.end_ns for r in self.roots)

    def nodes(self) -> list[SpanNode]:
        return [n for r in self.roots for n in r.walk()]

    def expected(self) -> SimulatedCall:
        nodes = self.nodes()
        finals = [(n, n.final_attrs()) for n in nodes]
        models: dict[str, str] = {}
        for n in nodes:
            for e in n.events:
                if e.name == "patter.event.llm_first_token":
                    models.setdefault(str(e.attrs["gen_ai.provider.name"]), str(e.attrs["gen_ai.request.model"]))
        stt: dict[str, list[float]] = {}
        tts: dict[str, int] = {}
        llm: dict[tuple[str, str | None], list[int]] = {}
        tel: dict[str, list[float]] = {}
        ttfb: list[tuple[int, float]] = []
        for n, a in sorted(finals, key=lambda f: f[0].start_ns):
            if "patter.cost.stt_seconds" in a:
                stt.setdefault(str(a.get("patter.stt.provider", "")), []).append(float(a["patter.cost.stt_seconds"]))
            if "patter.cost.tts_chars" in a:
                p = str(a.get("patter.tts.provider", ""))
                tts[p] = tts.get(p, 0) + int(a["patter.cost.tts_chars"])
            if "patter.cost.llm_input_tokens" in a or "patter.cost.llm_output_tokens" in a:
                p = str(a.get("patter.llm.provider", ""))
                model = next((str(e.attrs["gen_ai.request.model"]) for e in n.events
                              if e.name == "patter.event.llm_first_token"), None) or models.get(p)
                tot = llm.setdefault((p, model), [0, 0])
                tot[0] += int(a.get("patter.cost.llm_input_tokens", 0))
                tot[1] += int(a.get("patter.cost.llm_output_tokens", 0))
            if "patter.cost.telephony_minutes" in a:
                tel.setdefault(str(a.get("patter.telephony", "")), []).append(float(a["patter.cost.telephony_minutes"]))
            if "patter.latency.ttfb_ms" in a:
                at = max([n.start_ns] + [u.at_ns for u in n.updates if "patter.latency.ttfb_ms" in u.attrs])
                ttfb.append((at, float(a["patter.latency.ttfb_ms"])))
        names = Counter(n.name for n in nodes)
        return SimulatedCall(
            call_id=self.call_id, side=self.side, shape=self.shape, turns=self.turns,
            usage={"stt_seconds": {p: math.fsum(v) for p, v in stt.items()}, "tts_chars": tts, "llm": llm,
                   "telephony_minutes": {p: math.fsum(v) for p, v in tel.items()}},
            ttfb_ms=[v for _, v in sorted(ttfb, key=lambda x: x[0])],
            barge_ins=names["getpatter.bargein"], tool_calls=names["getpatter.tool"], spans=len(nodes),
            traces=len(self.roots), span_names=dict(sorted(names.items())),
            service_instance_id=self.service_instance_id, start_ns=self.start_ns, end_ns=self.end_ns)


# -- the call's timeline, independent of how it is rendered into spans --------------------------------
@dataclass
class _Tts:
    start: int
    end: int
    chars: int
    first_audio: int | None
    under_outer: bool  # 0.7: flushed after the inner LLM span closed, so a child of the outer one


@dataclass
class _Iter:
    start: int
    end: int
    first_chunk: int
    text: bool  # produced the reply text (else a tool call)
    input_tokens: int
    output_tokens: int
    history: int
    blank_id: bool = False


@dataclass
class _Turn:
    idx: int
    user_start: int
    speech_end: int
    final: int
    stt_seconds: float
    stt_text_len: int
    stt_confidence: float
    bargein: tuple[int, int, int, int] | None  # start, end, interrupted turn idx, cancelled text length
    stt_span: tuple[int, int]
    endpoint: tuple[int, int]
    outer: tuple[int, int]
    iters: list[_Iter]
    tool: tuple[int, int, str] | None
    tts: list[_Tts]
    latency_at: int
    ttfb_ms: float
    turn_ms: float
    playback_end: int


@dataclass
class _Timeline:
    call_id: str
    side: str
    prov: _Providers
    t0: int  # the media WebSocket is accepted
    media_start: int
    turns: list[_Turn]
    hangup: int
    telephony_minutes: float | None


def _ms(rng: random.Random, lo: float, hi: float) -> int:
    return int(rng.uniform(lo, hi) * MS)


def _us(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi) * US


def _timeline(rng: random.Random, call_id: str, side: str, n_turns: int, t0: int, *, media_start: int,
              tool_turn: int | None, barge_turn: int | None, blank_turn: int | None) -> _Timeline:
    prov = _PROVIDERS[side]
    last_final = media_start
    # the first-message greeting plays first and opens no span
    prev_playback_end = media_start + _ms(rng, 1500, 3500)
    history = 0
    turns: list[_Turn] = []
    for k in range(1, n_turns + 1):
        prev = turns[-1] if turns else None
        if k == barge_turn and prev is not None:  # the caller talks over the previous reply
            first_audio = prev.tts[0].first_audio or prev.tts[0].start
            user_start = first_audio + int((prev.playback_end - first_audio) * rng.uniform(0.3, 0.6))
        else:
            user_start = prev_playback_end + _ms(rng, 300, 1500)
        speech_end = user_start + _ms(rng, 700, 2800)
        final = speech_end + _ms(rng, 200, 600)
        if prev is not None:
            final = max(final, prev.latency_at + _ms(rng, 50, 200))
        samples = round((final - last_final) * STT_SAMPLE_RATE / S)
        stt_seconds = samples / STT_SAMPLE_RATE
        last_final = final
        t = final + _us(rng, 150, 300)
        bargein = None
        if k == barge_turn and prev is not None:
            b1 = t + _us(rng, 180, 380)
            cancelled = int(sum(x.chars for x in prev.tts) * rng.uniform(0.2, 0.7))
            bargein = (t, b1, prev.idx, cancelled)
            t = b1 + _us(rng, 300, 700)
        stt_span = (t, t + _us(rng, 20, 80))
        t = stt_span[1] + _us(rng, 100, 250)
        endpoint = (t, t + _us(rng, 50, 200))
        outer_start = endpoint[1] + _us(rng, 100, 300)
        t = outer_start + _us(rng, 100, 600)
        iters: list[_Iter] = []
        tool = None
        prompt = 140 + rng.randint(0, 60) + history * rng.randint(18, 30)  # the prompt grows with history
        if k == tool_turn:
            out0 = rng.randint(8, 25)
            chunk0 = t + _ms(rng, 250, 600)
            it0_end = chunk0 + _ms(rng, 80, 300)
            iters.append(_Iter(t, it0_end, chunk0, False, prompt, out0, history))
            tool_start = it0_end + _us(rng, 200, 800)
            tool = (tool_start, tool_start + _ms(rng, 40, 350), rng.choice(TOOLS))
            t = tool[1] + _us(rng, 300, 900)
            prompt += out0 + rng.randint(20, 60)  # the tool call and its result
        first_token = t + _ms(rng, 220, 700)
        out = rng.randint(12, 60)
        stream_end = first_token + out * _ms(rng, 8, 20)
        n_sent = rng.choice((1, 2, 2, 3))
        flush_after = n_sent >= 2 and rng.random() < 0.5
        ts = first_token + _ms(rng, 80, 250)  # the first sentence is complete
        tts: list[_Tts] = []
        inner_end = 0
        for j in range(n_sent):
            if j == n_sent - 1 and flush_after:
                inner_end = max(stream_end, tts[-1].end + _us(rng, 200, 3000))
                ts = inner_end + _us(rng, 300, 2000)
            dur = _ms(rng, 180, 520)
            fa = ts + int(dur * rng.uniform(0.3, 0.6)) if j == 0 else None
            tts.append(_Tts(ts, ts + dur, rng.randint(8, 90), fa, j == n_sent - 1 and flush_after))
            ts = ts + dur + _ms(rng, 1, 30)
        if not flush_after:
            inner_end = max(stream_end, tts[-1].end + _us(rng, 200, 3000))
        iters.append(_Iter(t, inner_end, first_token, True, prompt, out, history, blank_id=k == blank_turn))
        outer_end = max(inner_end, tts[-1].end) + _us(rng, 200, 1500)
        latency_at = outer_end + _us(rng, 400, 2000)
        first_audio = tts[0].first_audio or tts[0].start
        chars = sum(x.chars for x in tts)
        playback_end = max(first_audio + chars * _ms(rng, 55, 75), latency_at + MS)
        turns.append(_Turn(
            idx=k, user_start=user_start, speech_end=speech_end, final=final, stt_seconds=stt_seconds,
            stt_text_len=rng.randint(10, 60), stt_confidence=round(rng.uniform(0.82, 0.99), 3),
            bargein=bargein, stt_span=stt_span, endpoint=endpoint, outer=(outer_start, outer_end),
            iters=iters, tool=tool, tts=tts, latency_at=latency_at,
            ttfb_ms=round((first_audio - user_start) / MS, 1),
            turn_ms=round((tts[-1].end - tts[0].start) / MS, 1), playback_end=playback_end))
        prev_playback_end = playback_end
        history += 4 if tool else 2
    hangup = prev_playback_end + _ms(rng, 800, 2500)
    minutes = (hangup - media_start) / S / 60 if prov.telephony else None  # raw, not rounded (§6.7)
    return _Timeline(call_id, side, prov, t0, media_start, turns, hangup, minutes)


# -- renderers: timeline -> span trees ----------------------------------------------------------------
@dataclass(frozen=True)
class _Fallback:
    """`record_patter_attrs` / a speech event with no getpatter span current."""

    at_ns: int
    attrs: Attrs | None = None
    event: SpanEvent | None = None


def _items_07(tl: _Timeline) -> list[SpanNode | _Fallback]:
    """The 0.7.0 pipeline's spans and fallback records, before deciding where the fallbacks land."""
    cid, side, prov = tl.call_id, tl.side, tl.prov
    tags: Attrs = {"patter.call_id": cid, "patter.side": side}
    items: list[SpanNode | _Fallback] = []
    for turn in tl.turns:
        items.append(_Fallback(turn.final, {"patter.cost.stt_seconds": turn.stt_seconds,
                                            "patter.stt.provider": prov.stt, **tags}))
        items.append(_Fallback(turn.final + 100 * US, event=SpanEvent(
            "patter.event.user_speech_eos", {"patter.eos.trigger": "vad_silence"}, turn.final + 100 * US)))
        if turn.bargein:
            b0, b1, interrupted, _ = turn.bargein
            items.append(SpanNode("getpatter.bargein", SCOPE_PATTER, b0, b1, {"patter.call.id": cid}, events=[
                SpanEvent("patter.event.agent_speech_ended", {"patter.turn.idx": interrupted,
                                                              "patter.speech.duration_ms": 0,
                                                              "patter.turn.interrupted": True}, b1 - 10 * US)]))
        items.append(SpanNode("getpatter.stt", SCOPE_PATTER, *turn.stt_span,
                              {"getpatter.stt.text_len": turn.stt_text_len, "patter.call.id": cid}))
        items.append(SpanNode("getpatter.endpoint", SCOPE_PATTER, *turn.endpoint, {"patter.call.id": cid}))
        o0, o1 = turn.outer
        outer = SpanNode("getpatter.llm", SCOPE_PATTER, o0, o1, {"patter.call.id": cid}, events=[
            SpanEvent("patter.event.agent_speech_ended", {"patter.turn.idx": turn.idx,
                                                          "patter.speech.duration_ms": (o1 - o0) // MS,
                                                          "patter.turn.interrupted": False}, o1 - 20 * US)])
        text_iter: SpanNode | None = None
        for i, it in enumerate(turn.iters):
            node = SpanNode("getpatter.llm", SCOPE_PATTER, it.start, it.end, {
                "patter.llm.iteration": i, "patter.llm.history_size": it.history,
                "patter.call.id": "" if it.blank_id else cid,
                "patter.cost.llm_input_tokens": it.input_tokens, "patter.cost.llm_output_tokens": it.output_tokens,
                "patter.llm.provider": prov.llm, **tags})
            if it.text:
                node.events.append(SpanEvent("patter.event.llm_first_token", {
                    "gen_ai.request.model": prov.model, "gen_ai.provider.name": prov.llm,
                    "patter.turn.idx": turn.idx}, it.first_chunk))
                text_iter = node
            outer.children.append(node)
            if i == 0 and turn.tool:
                t0, t1, name = turn.tool
                outer.children.append(SpanNode("getpatter.tool", SCOPE_PATTER, t0, t1, {
                    "patter.tool.name": name, "patter.tool.transport": "handler", "patter.call.id": cid}))
        assert text_iter is not None
        for x in turn.tts:
            node = SpanNode("getpatter.tts", SCOPE_PATTER, x.start, x.end, {
                "getpatter.tts.text_len": x.chars, "patter.call.id": cid, "patter.cost.tts_chars": x.chars,
                "patter.tts.provider": prov.tts, **tags})
            if x.first_audio is not None:
                node.events.append(SpanEvent("patter.event.tts_first_audio", {
                    "patter.turn.idx": turn.idx, "patter.tts.provider": prov.tts}, x.first_audio))
                items.append(_Fallback(x.first_audio + 50 * US, event=SpanEvent(
                    "patter.event.agent_speech_started", {"patter.turn.idx": turn.idx,
                                                          "patter.tts.provider": prov.tts,
                                                          "patter.engine": "pipeline"}, x.first_audio + 50 * US)))
            (outer if x.under_outer else text_iter).children.append(node)
        items.append(outer)
        items.append(_Fallback(turn.latency_at, {"patter.latency.ttfb_ms": turn.ttfb_ms,
                                                 "patter.latency.turn_ms": turn.turn_ms, **tags}))
    if tl.telephony_minutes is not None and tl.prov.telephony:
        items.append(_Fallback(tl.hangup, {"patter.cost.telephony_minutes": tl.telephony_minutes,
                                           "patter.telephony": tl.prov.telephony,
                                           "patter.direction": "inbound", **tags}))
    return items


def _render_07(tl: _Timeline, rng: random.Random) -> list[SpanNode]:
    roots: list[SpanNode] = []
    for item in _items_07(tl):
        if isinstance(item, SpanNode):
            roots.append(item)
        elif item.attrs is not None:  # a zero-length root `patter.billable`; events with no span vanish
            roots.append(SpanNode("patter.billable", SCOPE_BILLABLE, item.at_ns,
                                  item.at_ns + _us(rng, 20, 60), dict(item.attrs)))
    return roots


def _render_fastapi(tl: _Timeline, rng: random.Random) -> list[SpanNode]:
    items = _items_07(tl)
    last = max(max(i.end_ns for i in items if isinstance(i, SpanNode)),
               max(i.at_ns for i in items if isinstance(i, _Fallback)))
    dep0 = tl.t0 + _ms(rng, 4, 6)
    dep = SpanNode("fastapi.dependencies", SCOPE_FASTAPI, dep0, dep0 + _us(rng, 250, 500),
                   {"code.function.name": FASTAPI_HANDLER})
    ep_end = last + _ms(rng, 1, 3)
    endpoint = SpanNode("fastapi.endpoint", SCOPE_FASTAPI, dep.end_ns + _us(rng, 50, 150), ep_end,
                        {"code.function.name": FASTAPI_HANDLER})
    for item in items:
        if isinstance(item, SpanNode):
            endpoint.children.append(item)
        elif item.attrs is not None:
            endpoint.updates.append(AttrUpdate(dict(item.attrs), item.at_ns))
        if isinstance(item, _Fallback) and item.event is not None:
            endpoint.events.append(item.event)
    ws = SpanNode("WS /ws/stream/{call_id}", SCOPE_FASTAPI, tl.t0, ep_end + _us(rng, 80, 300), {
        "server.address": "127.0.0.1", "server.port": 8000, "url.scheme": "ws",
        "network.protocol.name": "websocket", "http.route": "/ws/stream/{call_id}"}, kind=SpanKind.SERVER,
        children=[dep, endpoint])
    return [ws]


def _render_06(tl: _Timeline, rng: random.Random) -> list[SpanNode]:
    cid, side, prov = tl.call_id, tl.side, tl.prov
    tags: Attrs = {"patter.call_id": cid, "patter.side": side}
    kids: list[SpanNode] = []
    for turn in tl.turns:
        if turn.bargein:
            b0, b1, _, cancelled = turn.bargein
            kids.append(SpanNode("getpatter.bargein", SCOPE_PATTER, b0, b1, {
                "getpatter.call.id": cid, "getpatter.bargein.cancelled_text_len": cancelled}))
        kids.append(SpanNode("getpatter.stt", SCOPE_PATTER, *turn.stt_span, {
            "getpatter.call.id": cid, "getpatter.stt.text_len": turn.stt_text_len,
            "getpatter.stt.confidence": turn.stt_confidence, "patter.cost.stt_seconds": turn.stt_seconds,
            "patter.stt.provider": prov.stt, **tags}))
        kids.append(SpanNode("getpatter.endpoint", SCOPE_PATTER, *turn.endpoint, {
            "getpatter.call.id": cid,
            "getpatter.endpoint.silence_ms": round((turn.final - turn.speech_end) / MS, 1)}))
        for i, it in enumerate(turn.iters):
            end = max(it.end, *(x.end + _us(rng, 200, 1500) for x in turn.tts)) if it.text else it.end
            node = SpanNode("getpatter.llm", SCOPE_PATTER, it.start, end, {
                "getpatter.call.id": cid, "getpatter.llm.iteration": i, "getpatter.llm.history_size": it.history,
                "getpatter.llm.ttft_ms": round((it.first_chunk - it.start) / MS, 1),
                "patter.cost.llm_input_tokens": it.input_tokens, "patter.cost.llm_output_tokens": it.output_tokens,
                "patter.llm.provider": prov.llm, **tags})
            if it.text:
                for x in turn.tts:
                    node.children.append(SpanNode("getpatter.tts", SCOPE_PATTER, x.start, x.end, {
                        "getpatter.call.id": cid, "getpatter.tts.text_len": x.chars,
                        "patter.cost.tts_chars": x.chars, "patter.tts.provider": prov.tts, **tags}))
                # the turn's latency is stamped on the LLM span that wraps it, when the turn completes
                node.updates.append(AttrUpdate({"patter.latency.ttfb_ms": turn.ttfb_ms,
                                                "patter.latency.turn_ms": turn.turn_ms, **tags}, end - 10 * US))
            kids.append(node)
            if i == 0 and turn.tool:
                t0, t1, name = turn.tool
                kids.append(SpanNode("getpatter.tool", SCOPE_PATTER, t0, t1, {
                    "getpatter.call.id": cid, "getpatter.tool.name": name, "getpatter.tool.transport": "handler"}))
    end = max([tl.hangup] + [k.end_ns for k in kids]) + _ms(rng, 1, 4)
    root = SpanNode("getpatter.call", SCOPE_PATTER, tl.t0, end, {
        "getpatter.call.id": cid, "getpatter.call.direction": "inbound" if side == "uut" else "outbound",
        "getpatter.call.provider_mode": "pipeline"}, children=kids)
    if tl.telephony_minutes is not None and prov.telephony:
        root.updates.append(AttrUpdate({"patter.cost.telephony_minutes": tl.telephony_minutes,
                                        "patter.telephony": prov.telephony, "patter.direction": "inbound",
                                        **tags}, tl.hangup))
    return [root]


_RENDERERS = {"0.7": _render_07, "0.6": _render_06, "fastapi": _render_fastapi}


def _check(node: SpanNode) -> None:
    """Children start after and end before their parent; events and updates fall inside the span."""
    if not node.start_ns < node.end_ns:
        raise ValueError(f"{node.name}: empty span")
    for x in [*node.events, *node.updates]:
        if not node.start_ns <= x.at_ns <= node.end_ns:
            raise ValueError(f"{node.name}: event or update outside the span")
    for c in node.children:
        if not (node.start_ns < c.start_ns and c.end_ns < node.end_ns):
            raise ValueError(f"{c.name} not nested in {node.name}")
        _check(c)


def _shift(node: SpanNode, delta: int) -> None:
    node.start_ns += delta
    node.end_ns += delta
    node.events = [SpanEvent(e.name, e.attrs, e.at_ns + delta) for e in node.events]
    node.updates = [AttrUpdate(u.attrs, u.at_ns + delta) for u in node.updates]
    for c in node.children:
        _shift(c, delta)


def _instance_id(seed: int, side: str) -> str:
    return str(uuid.UUID(int=random.Random(f"otel-patter:{seed}:instance:{side}").getrandbits(128), version=4))


def build_calls(n: int, *, shape: str = "0.7", turns: int = 4, seed: int = 0, with_driver: bool = True,
                start_ns: int | None = None) -> list[CallPlan]:
    """Plans for `n` calls (and their driver sides), deterministic from `seed`.

    Calls start 0.3-2.5 s apart. With `start_ns`, the first call's media WebSocket opens then;
    without, the timeline is placed so that the last span ends one second ago.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    if n < 0 or turns < 1:
        raise ValueError("need n >= 0 and turns >= 1")
    rng = random.Random(f"otel-patter:{seed}")
    plans: list[CallPlan] = []
    offset = 0
    for i in range(n):
        call_id = f"CA{rng.getrandbits(128):032x}"
        sides = ("uut", "driver") if with_driver else ("uut",)
        for side in sides:
            crng = random.Random(f"otel-patter:{seed}:{i}:{side}")
            t0 = offset + (0 if side == "uut" else _ms(crng, 50, 400))
            if side == "uut":
                tl = _timeline(crng, call_id, side, turns, t0, media_start=t0 + _ms(crng, 7, 9),
                               tool_turn=1, barge_turn=3 if turns >= 3 else None,
                               blank_turn=1 if (i % BLANK_ID_EVERY == 0 and shape != "0.6") else None)
            else:
                tl = _timeline(crng, call_id, side, max(1, turns // 2), t0, media_start=t0 + _ms(crng, 7, 9),
                               tool_turn=None, barge_turn=None, blank_turn=None)
            roots = _RENDERERS[shape](tl, crng)
            for r in roots:
                _check(r)
            plans.append(CallPlan(call_id=call_id, side=side, shape=shape, index=i, turns=len(tl.turns),
                                  service_instance_id=_instance_id(seed, side), id_seed=crng.getrandbits(64),
                                  roots=roots))
        offset += _ms(rng, 300, 2500)
    if plans:
        delta = start_ns if start_ns is not None else time.time_ns() - S - max(p.end_ns for p in plans)
        for p in plans:
            for r in p.roots:
                _shift(r, delta)
    return plans


# -- playing plans through the SDK ------------------------------------------------------------------
class _PlanIdGenerator(IdGenerator):
    """Trace and span ids from the plan being played, so a plan always sends the same ids."""

    def __init__(self) -> None:
        self.rng = random.Random(0)

    def generate_span_id(self) -> int:
        while not (v := self.rng.getrandbits(64)):
            pass
        return v

    def generate_trace_id(self) -> int:
        while not (v := self.rng.getrandbits(128)):
            pass
        return v


class _CountingExporter(SpanExporter):
    """Delegates to the real exporter and counts what it delivered."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        with self._lock:
            self.batches.append(len(spans))
            if result is SpanExportResult.SUCCESS:
                self.exported += len(spans)
            else:
                self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _with_scheme(endpoint: str) -> str:
    return endpoint if "://" in endpoint else "http://" + endpoint


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a base endpoint (`/v1/traces` appended unless already there)."""
    ep = _with_scheme(endpoint).rstrip("/")
    return ep if ep.endswith("/v1/traces") else ep + "/v1/traces"


def make_exporter(protocol: str, endpoint: str, headers: Mapping[str, str] | None = None, *,
                  gzip: bool = False, timeout: float = 10.0) -> SpanExporter:
    """The real OTLP span exporter for `protocol`, given its endpoint explicitly."""
    hdrs = dict(headers) if headers else None
    if protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        ep = _with_scheme(endpoint)
        return GrpcExporter(endpoint=ep, insecure=not ep.startswith("https://"), headers=hdrs, timeout=timeout,
                            compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression)
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=traces_url(endpoint), headers=hdrs, timeout=timeout,
                            compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression)
    if protocol == "http/json":
        try:
            from opentelemetry.exporter.otlp.common.http import Compression as JsonCompression
            from opentelemetry.exporter.otlp.json.http import OTLPSpanExporter as JsonExporter
        except ImportError as e:  # an optional (test) dependency
            raise SimulationError("protocol http/json needs opentelemetry-exporter-otlp-json-http") from e
        return JsonExporter(endpoint=traces_url(endpoint), headers=hdrs, timeout=timeout,
                            compression=JsonCompression.GZIP if gzip else JsonCompression.NONE)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")


_START, _EVENT, _UPDATE, _END = 0, 1, 2, 3


def _actions(plan_idx: int, plan: CallPlan) -> list[tuple[int, int, int, int, SpanNode, SpanNode | None, Any]]:
    out: list[tuple[int, int, int, int, SpanNode, SpanNode | None, Any]] = []

    def visit(node: SpanNode, parent: SpanNode | None) -> None:
        out.append((node.start_ns, plan_idx, len(out), _START, node, parent, None))
        marks: list[tuple[int, int, Any]] = [(e.at_ns, _EVENT, e) for e in node.events]
        marks += [(u.at_ns, _UPDATE, u) for u in node.updates]
        for at, kind, payload in sorted(marks, key=lambda m: m[0]):
            out.append((at, plan_idx, len(out), kind, node, parent, payload))
        for c in node.children:
            visit(c, node)
        out.append((node.end_ns, plan_idx, len(out), _END, node, parent, None))

    for r in plan.roots:
        visit(r, None)
    return out


def _play_side(side: str, plans: list[CallPlan], exporter: SpanExporter, random_ids: bool) -> _CountingExporter:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    attrs: dict[str, str] = {"service.name": "patter", "service.instance.id": plans[0].service_instance_id}
    if side == "driver":
        attrs["patter.side"] = "driver"
    ids = _PlanIdGenerator()
    provider = TracerProvider(resource=Resource.create(attrs), sampler=ALWAYS_ON, shutdown_on_exit=False,
                              id_generator=None if random_ids else ids)
    counting = _CountingExporter(exporter)
    total = sum(len(p.nodes()) for p in plans)
    provider.add_span_processor(BatchSpanProcessor(
        counting, max_queue_size=max(2048, total + 1), schedule_delay_millis=5000, max_export_batch_size=512,
        export_timeout_millis=30000))
    tracers = {s: provider.get_tracer(s) for s in (SCOPE_PATTER, SCOPE_BILLABLE, SCOPE_FASTAPI)}
    rngs = [random.Random(p.id_seed) for p in plans]
    acts = [a for i, p in enumerate(plans) for a in _actions(i, p)]
    acts.sort(key=lambda a: (a[0], a[1], a[2]))
    live: dict[int, Span] = {}
    try:
        for at, plan_idx, _, kind, node, parent, payload in acts:
            if kind == _START:
                ids.rng = rngs[plan_idx]
                ctx = set_span_in_context(live[id(parent)], Context()) if parent is not None else Context()
                live[id(node)] = tracers[node.scope].start_span(
                    node.name, context=ctx, kind=node.kind, attributes=node.attrs, start_time=at)
            elif kind == _EVENT:
                live[id(node)].add_event(payload.name, payload.attrs, timestamp=at)
            elif kind == _UPDATE:
                live[id(node)].set_attributes(payload.attrs)
            else:
                live.pop(id(node)).end(end_time=at)
        provider.force_flush(timeout_millis=60_000)
    finally:
        provider.shutdown()
    if counting.exported != total:
        raise SimulationError(f"{side}: {counting.exported} of {total} spans delivered "
                              f"({counting.failed} refused or unreachable)")
    return counting


def emit(plans: Sequence[CallPlan], *, endpoint: str, protocol: str = "grpc",
         headers: Mapping[str, str] | None = None, gzip: bool = False, random_ids: bool = False,
         timeout: float = 10.0, exporter: Callable[[], SpanExporter] | None = None) -> list[SimulatedCall]:
    """Send `plans` through one TracerProvider per side, flush, shut down; return what was sent.

    `exporter` makes each side's exporter instead of `make_exporter` (tests wrap the real one, e.g.
    to resend what was not acknowledged). Raises `SimulationError` when not every span was delivered.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    for side in SIDES:
        mine = [p for p in plans if p.side == side]
        if mine:
            exp = exporter() if exporter is not None else make_exporter(protocol, endpoint, headers, gzip=gzip,
                                                                        timeout=timeout)
            _play_side(side, mine, exp, random_ids)
    return [p.expected() for p in plans]


def run(calls: int, endpoint: str, protocol: str, shape: str, turns: int, seed: int) -> list[SimulatedCall]:
    return emit(build_calls(calls, shape=shape, turns=turns, seed=seed), endpoint=endpoint, protocol=protocol)


# -- CLI ----------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("simulate", help="send realistic Patter calls through the real OTLP exporters")
    _add_arguments(p)
    p.set_defaults(func=_cmd)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=1, help="number of calls (default 1)")
    p.add_argument("--endpoint", default=None,
                   help="OTLP endpoint (default http://127.0.0.1:4317 for grpc, http://127.0.0.1:4318 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument("--shape", choices=SHAPES, default="0.7",
                   help="0.7: getpatter 0.7.0; 0.6: the documented getpatter.call root; fastapi: 0.7.0 behind FastAPI")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="same seed, same calls and span ids")
    p.add_argument("--no-driver", action="store_true", help="send only the unit-under-test side")
    p.add_argument("--header", action="append", default=[], metavar="KEY=VALUE", help="exporter header")
    p.add_argument("--gzip", action="store_true", help="compress requests")
    p.add_argument("--random-ids", action="store_true", help="random trace and span ids (the SDK default)")
    p.add_argument("--json", action="store_true", help="print the calls as JSON")


def _cmd(args: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    for h in args.header:
        key, sep, value = h.partition("=")
        if not sep:
            print(f"error: --header wants KEY=VALUE, got {h!r}", file=sys.stderr)
            return 2
        headers[key.strip()] = value.strip()
    endpoint = args.endpoint or DEFAULT_ENDPOINTS[args.protocol]
    try:
        plans = build_calls(args.calls, shape=args.shape, turns=args.turns, seed=args.seed,
                            with_driver=not args.no_driver)
        sent = emit(plans, endpoint=endpoint, protocol=args.protocol, headers=headers or None, gzip=args.gzip,
                    random_ids=args.random_ids)
    except (SimulationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([c.to_json() for c in sent], indent=2))
    else:
        for c in sent:
            print(c.line())
        print(f"sent {sum(c.spans for c in sent)} spans of {len({c.call_id for c in sent})} calls to {endpoint} "
              f"({args.protocol})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otel-patter simulate", description=__doc__.splitlines()[0])
    _add_arguments(p)
    return _cmd(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
