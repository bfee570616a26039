"""Price a call's aggregates and shape them into the envelope of DESIGN.md.

Money stays `Decimal` until the last step; every number written is rounded half-even
to 6 places from the exact value, and totals are rounded from the exact sum, as the
SDK's `CallMetricsAccumulator._compute_cost` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from otel_patter.pricing import PriceBook, pricing_key, round6
from otel_patter.processors.reconcile import apply_sdk_view, sdk_llm_models
from otel_patter.processors.rollup_state import CallState, GroupAgg

COMPONENTS = ("stt", "tts", "llm", "telephony", "realtime")
SCHEMA_VERSION = "1.0"
WRITER = "otel-patter"


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    llm: dict[str, str]
    stt: dict[str, str]
    tts: dict[str, str]

    @staticmethod
    def lookup(table: dict[str, str], provider: str, key: str) -> str | None:
        return table.get(provider) or table.get(key)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    return percentiles(values, (q,))[0]


def percentiles(values: list[float], qs: tuple[float, ...]) -> list[float | None]:
    """`percentile` at each of `qs`, sorting once."""
    if not values:
        return [None] * len(qs)
    s = sorted(values)
    last = len(s) - 1
    out: list[float | None] = []
    for q in qs:
        pos = last * q
        lo = math.floor(pos)
        hi = min(lo + 1, last)
        out.append(round(s[lo] + (s[hi] - s[lo]) * (pos - lo), 3))
    return out


def iso_ms(ns: int) -> str | None:
    if ns <= 0:
        return None
    # "YYYY-MM-DDTHH:MM:SS.mmm" (truncated, as strftime + microsecond // 1000), ~1 µs cheaper than strftime
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")[:23] + "Z"


class _Pricer:
    """Prices one side's usage; collects unpriced lines and warnings as it goes."""

    def __init__(self, book: PriceBook, defaults: ModelDefaults, call_models: dict[str, str],
                 side: str, warnings: dict[str, str], sdk_models: dict[str, str] | None = None) -> None:
        self.sdk_models = sdk_models or {}  # {provider: model} the SDK's own call report names (sdk_ingest)
        self.book = book
        self.defaults = defaults
        self.call_models = call_models
        self.side = side
        self.warnings = warnings
        self.unpriced: list[dict[str, Any]] = []
        self.cost: dict[str, Decimal] = dict.fromkeys(COMPONENTS, Decimal(0))

    def _charge(self, component: str, usd: Decimal | None, line: dict[str, Any], reason: str) -> None:
        if usd is None:
            self.unpriced.append({"side": self.side, "component": component, "reason": reason,
                                  **{k: v for k, v in line.items() if k != "usd"}})
            self.warnings["unpriced_usage"] = "usage without a rate is listed in `unpriced`"
            line["usd"] = None
            return
        self.cost[component] += usd
        line["usd"] = round6(usd)

    def _audio_model(self, component: str, table: dict[str, str], provider: str, key: str) -> str | None:
        model = ModelDefaults.lookup(table, provider, key)
        if model is None:
            self.warnings.setdefault(
                f"{component}_provider_rate",
                f"{component.upper()} model is never on spans; priced {provider} at its provider-level rate "
                f"(set {component}_default_model)",
            )
        return model

    def usage(self, g: GroupAgg) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for provider, seconds in sorted(g.stt.items()):
            key = pricing_key("stt", provider)
            model = self._audio_model("stt", self.defaults.stt, provider, key)
            line: dict[str, Any] = {"provider": provider, "model": model, "seconds": float(seconds)}
            self._charge("stt", self.book.stt_cost(key, seconds, model), line, "no STT rate")
            out.setdefault("stt", []).append(line)
        for provider, chars in sorted(g.tts.items()):
            key = pricing_key("tts", provider)
            model = self._audio_model("tts", self.defaults.tts, provider, key)
            line = {"provider": provider, "model": model, "chars": int(chars)}
            self._charge("tts", self.book.tts_cost(key, chars, model), line, "no TTS rate")
            out.setdefault("tts", []).append(line)
        merged: dict[tuple[str, str | None], list[int]] = {}
        for (provider, model), (tin, tout) in sorted(g.llm.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            model = model or self._default_llm_model(provider)
            acc = merged.setdefault((provider, model), [0, 0])
            acc[0] += tin
            acc[1] += tout
        for (provider, model), (tin, tout) in merged.items():
            line = {"provider": provider, "model": model, "input_tokens": tin, "output_tokens": tout}
            usd = None if model is None else self.book.llm_cost(pricing_key("llm", provider), model, tin, tout)
            reason = "no LLM model" if model is None else "no LLM rate for this provider and model"
            self._charge("llm", usd, line, reason)
            out.setdefault("llm", []).append(line)
        for provider, minutes in sorted(g.telephony.items()):
            usd, billed = self.book.telephony_cost(pricing_key("telephony", provider), minutes)
            line = {"provider": provider, "minutes": float(minutes), "billed_minutes": float(billed)}
            self._charge("telephony", usd, line, "no telephony rate")
            out.setdefault("telephony", []).append(line)
        for provider, minutes in sorted(g.realtime.items()):
            line = {"provider": provider, "minutes": float(minutes)}
            usd = self.book.realtime_minutes_cost(pricing_key("realtime", provider), minutes)
            self._charge("realtime", usd, line, "realtime is priced by tokens, which are not on spans")
            out.setdefault("realtime", []).append(line)
        for code, present, text in (
            ("stt_tail_unmetered", bool(g.stt),
             "STT seconds are emitted at each final transcript; audio after the last one is on no span"),
            ("llm_cached_tokens_full_price", bool(g.llm),
             "LLM input tokens on spans include cached tokens and are priced at the full input rate"),
            ("tts_chars_from_spans", bool(g.tts),
             "TTS characters are per synthesized sentence (trimmed, fillers and interrupted sentences included)"),
            ("tts_usage_missing", g.tts_spans > 0 and not g.tts,
             "TTS spans carried no characters (ElevenLabs WebSocket TTS emits none); TTS is unpriced"),
        ):
            if present:
                self.warnings[code] = text
        if g.framework_cost_spans:
            self.warnings["cost_on_framework_span"] = (
                f"{g.framework_cost_spans} framework span(s) carried patter.cost/latency attributes; "
                "the SDK overwrites earlier values there, so earlier turns' STT seconds and latencies are lost"
            )
        return out

    def _default_llm_model(self, provider: str) -> str | None:
        model = self.call_models.get(provider)
        if model is not None:
            self.warnings["model_defaulted"] = (
                "LLM model not on some spans; used the model seen on the call's other LLM spans"
            )
            return model
        model = self.sdk_models.get(provider)
        if model is not None:
            self.warnings["model_defaulted"] = (
                "LLM model not on spans; used the model the SDK's call report names (agent.model)"
            )
            return model
        model = ModelDefaults.lookup(self.defaults.llm, provider, pricing_key("llm", provider))
        if model is not None:
            self.warnings["model_defaulted"] = f"LLM model not on spans; used llm_default_model {model}"
        return model

    def cost_dict(self) -> dict[str, float]:
        total = sum(self.cost.values(), Decimal(0))
        return {**{c: round6(v) for c, v in self.cost.items()}, "total": round6(total)}


def _latency(g: GroupAgg) -> dict[str, Any]:
    p50, p95, p99 = percentiles(g.ttfb_ms, (0.50, 0.95, 0.99))
    return {
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "llm_ttft_p50_ms": percentile(g.ttft_ms, 0.50),
        "turn_p50_ms": percentile(g.turn_ms, 0.50),
        # each turn's ttfb (the figures behind p50/p95/p99), in the order the turns started
        "turns_ms": [round(v, 3) for _, v in sorted(g.ttfb_turns, key=lambda t: t[0])],
    }


def _counts(g: GroupAgg) -> dict[str, int]:
    return {"spans": g.spans, "barge_ins": g.barge_ins, "tool_calls": g.tool_calls, "errors": g.errors,
            "redactions": g.redactions}


def _first(d: dict[str, Any]) -> str | None:
    return max(d, key=lambda k: d[k]) if d else None


def build_envelope(state: CallState, book: PriceBook, defaults: ModelDefaults) -> dict[str, Any]:
    sides = state.sides()
    call_models: dict[str, str] = {}
    for g in sides.values():
        for provider, model in g.llm:
            if model:
                call_models.setdefault(provider, model)
    warnings = dict(state.warnings)  # build-time warnings are recomputed on every build
    priced: dict[str, tuple[_Pricer, dict[str, Any]]] = {}
    sdk_models = sdk_llm_models(state)
    for side, g in sides.items():
        pricer = _Pricer(book, defaults, call_models, side, warnings, sdk_models)
        priced[side] = (pricer, pricer.usage(g))
    top_side = "uut" if "uut" in sides else next(iter(sides), "uut")
    top = sides.get(top_side, GroupAgg())
    top_pricer, top_usage = priced.get(top_side, (_Pricer(book, defaults, {}, top_side, {}), {}))
    unpriced = [u for p, _ in priced.values() for u in p.unpriced]
    if len(sides) == 1:  # the usual call: one side is all of it (read only below, so no merged copy)
        all_groups = next(iter(sides.values()))
    else:
        all_groups = GroupAgg()
        for g in sides.values():
            all_groups.merge(g)
    # per side once: the top-level figures repeat the top side's (copied, so no two envelope keys share a dict)
    side_cost = {side: p.cost_dict() for side, (p, _u) in priced.items()}
    side_latency = {side: _latency(g) for side, g in sides.items()}
    top_cost = dict(side_cost[top_side]) if top_side in side_cost else top_pricer.cost_dict()
    top_latency = side_latency.get(top_side)
    top_latency = _latency(top) if top_latency is None else {**top_latency,
                                                             "turns_ms": list(top_latency["turns_ms"])}

    duration_ms = max(0.0, (state.end_ns - state.start_ns) / 1e6) if state.start_ns else 0.0
    tel_minutes = sum(top.telephony.values(), Decimal(0))
    duration_ms = round(max(duration_ms, float(tel_minutes) * 60000.0), 1)
    if state.final:
        # "idle": nothing says this call ended; it only went quiet (its uut side had no hang-up or root end)
        ended = top.hangup or top.root_ended or state.final_reason == "finalize_request"
        status = "error" if all_groups.root_error else ("completed" if ended else "idle")
    else:
        status = "in_progress"
    realtime_provider = _first(top.realtime)
    envelope = {
        "schema_version": SCHEMA_VERSION,
        "writer": WRITER,
        "revision": state.revision,
        "call_id": state.call_id,
        "trace_id": state.trace_id,
        # `test.run_id` resource values seen on any side (a suite sets it to find its calls)
        "test_run_id": sorted(all_groups.test_run_ids),
        "started_at": iso_ms(state.start_ns),
        "ended_at": iso_ms(state.end_ns),
        "duration_ms": duration_ms,
        "status": status,
        "final_reason": state.final_reason if state.final else None,
        "caller": "",
        "callee": "",
        "direction": all_groups.direction or "inbound",
        "telephony_provider": _first(top.telephony) or "",
        "provider_mode": all_groups.provider_mode or (realtime_provider or "pipeline"),
        "agent": {
            "stt": _first(top.stt),
            "llm": _first({p: n for (p, _m), (n, _o) in top.llm.items()}),
            "tts": _first(top.tts),
            "model": call_models.get(_first({p: n for (p, _m), (n, _o) in top.llm.items()}) or ""),
        },
        "turns": top.turns,
        "cost": top_cost,
        "cost_complete": not unpriced,
        "unpriced": unpriced,
        "usage": top_usage,
        "latency": top_latency,
        "sides": {
            side: {
                "cost": side_cost[side],
                "usage": usage,
                "turns": sides[side].turns,
                "latency": side_latency[side],
                "counts": _counts(sides[side]),
                "test_run_id": sorted(sides[side].test_run_ids),
            }
            for side, (p, usage) in sorted(priced.items())
        },
        "counts": _counts(all_groups),
        "warnings": [{"code": c, "text": t} for c, t in sorted(warnings.items())],
        "error": all_groups.root_error,
        "pricing_version": book.version,
    }
    # the SDK's own call report (sdk_ingest), when one came: caller/callee (redacted), direction, `reconciliation`
    return apply_sdk_view(envelope, state, book)
