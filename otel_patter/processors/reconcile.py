"""Reconciliation: the SDK's own call report beside otel-patter's span-derived envelope.

`apply_sdk_view(envelope, state, book)` (called last by `build_envelope`) fills what only the SDK's
report knows (redacted caller/callee, the resolved direction, providers, the SDK's start and end)
and adds `reconciliation`:

    "reconciliation": {
      "reports": ["call_start", "call_end"],          # the SDK reports received for this call
      "sdk":   {"stt", "tts", "llm", "telephony", "total", "llm_cached_savings"} | null,
      "spans": {"stt", "tts", "llm", "telephony", "total"},   # ours; llm includes realtime, as the SDK's does
      "difference": {"stt": {"usd", "pct", "causes", "unexplained"}, ..., "total": {...}} | null,
      "tolerance_usd": 0.001,
      "mismatch": true | false | null,                # some |difference| > tolerance_usd
      "sdk_duration_ms", "sdk_turns", "sdk_providers", "sdk_models", "sdk_latency"
    }

`difference.usd` is spans - SDK (positive: otel-patter says more) and `pct` is that over the SDK's
figure (null when the SDK's is 0). `causes` are the known blind spots (research §6.7) that explain
a difference of that sign, with the codes of `warnings`: `stt_tail_unmetered`,
`cost_on_framework_span`, `tts_chars_from_spans`, `tts_usage_missing`,
`llm_cached_tokens_full_price`, `stt_provider_rate` / `tts_provider_rate` / `model_defaulted` /
`llm_model_differs` (a model priced differently from the one the SDK names), `unpriced_usage`,
`no_usage_on_spans`, and for telephony `telephony_carrier_price` (the SDK billed the carrier's
actual price: its figure is not the rate table at its own duration) or `telephony_duration`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from otel_patter.pricing import PriceBook, pricing_key, round6
from otel_patter.processors.rollup_state import CallState

COMPARED = ("stt", "tts", "llm", "telephony")
_MINUTE = Decimal(60)


def _d(v: Any) -> Decimal:
    return Decimal(str(v or 0))


def _pct(diff: Decimal, sdk: Decimal) -> float | None:
    if sdk == 0:
        return 0.0 if diff == 0 else None
    return round(float(diff / sdk * 100), 2)


def _rate_differs(book: PriceBook, component: str, provider: str, ours: str | None, sdk_model: str | None) -> bool:
    """Whether the SDK's model for this provider has another rate than the one we priced with."""
    if not sdk_model or sdk_model == ours:
        return False
    key = pricing_key(component, provider)
    cost = book.stt_cost if component == "stt" else book.tts_cost
    return cost(key, 60, ours) != cost(key, 60, sdk_model)


def _causes(component: str, diff: Decimal, env: dict[str, Any], sdk: dict[str, Any], book: PriceBook,
            models: dict[str, str]) -> list[str]:
    warned = {w["code"] for w in env.get("warnings") or ()}
    lines = (env.get("usage") or {}).get(component, [])
    if component == "llm":
        lines = lines + (env.get("usage") or {}).get("realtime", [])
    unpriced = any(u.get("component") in ((component, "realtime") if component == "llm" else (component,))
                   and u.get("side") == "uut" for u in env.get("unpriced") or ())
    out: list[str] = []
    if diff < 0:
        if not lines:
            out.append("no_usage_on_spans")
        if unpriced:
            out.append("unpriced_usage")
    if component == "stt":
        if diff < 0:
            out += [c for c in ("stt_tail_unmetered", "cost_on_framework_span") if c in warned]
        if "stt_provider_rate" in warned and any(
                _rate_differs(book, "stt", ln["provider"], ln.get("model"), models.get("stt")) for ln in lines):
            out.append("stt_provider_rate")
    elif component == "tts":
        if "tts_chars_from_spans" in warned:
            out.append("tts_chars_from_spans")
        if diff < 0 and "tts_usage_missing" in warned:
            out.append("tts_usage_missing")
        if "tts_provider_rate" in warned and any(
                _rate_differs(book, "tts", ln["provider"], ln.get("model"), models.get("tts")) for ln in lines):
            out.append("tts_provider_rate")
    elif component == "llm":
        if diff > 0 and "llm_cached_tokens_full_price" in warned:
            out.append("llm_cached_tokens_full_price")
        sdk_model = models.get("llm")
        if sdk_model and any(ln.get("model") not in (None, sdk_model) for ln in lines if "input_tokens" in ln):
            out.append("model_defaulted" if "model_defaulted" in warned else "llm_model_differs")
    elif component == "telephony":
        provider = (sdk.get("providers") or {}).get("telephony")
        duration = sdk.get("duration_seconds")
        if provider and duration is not None:
            table, _ = book.telephony_cost(pricing_key("telephony", provider), _d(duration) / _MINUTE)
            if table is None or round6(table) != float(sdk["cost"].get("telephony", 0.0)):
                out.append("telephony_carrier_price")
            elif lines:
                out.append("telephony_duration")
    return out


def reconciliation(env: dict[str, Any], state: CallState, book: PriceBook) -> dict[str, Any] | None:
    sdk_reports = state.sdk
    if sdk_reports is None:
        return None
    end = sdk_reports.end or {}
    sdk_cost = end.get("cost")
    ours = env.get("cost") or {}
    spans = {c: ours.get(c, 0.0) for c in COMPARED}
    spans["llm"] = round6(_d(ours.get("llm")) + _d(ours.get("realtime")))
    spans["total"] = ours.get("total", 0.0)
    out: dict[str, Any] = {
        "reports": [k for k in ("initiated", "call_start", "call_end") if k in sdk_reports.reports],
        "sdk": dict(sdk_cost) if sdk_cost else None,
        "spans": spans,
        "difference": None,
        "tolerance_usd": sdk_reports.tolerance_usd,
        "mismatch": None,
        "sdk_duration_ms": None if end.get("duration_seconds") is None else round(end["duration_seconds"] * 1000, 1),
        "sdk_turns": end.get("turns"),
        "sdk_providers": dict(sdk_reports.value("providers") or {}),
        "sdk_models": dict(sdk_reports.value("models") or {}),
        "sdk_latency": dict(end.get("latency") or {}),
    }
    if not sdk_cost:
        return out
    models = out["sdk_models"]
    tolerance = _d(sdk_reports.tolerance_usd)
    diffs: dict[str, Any] = {}
    mismatch = False
    all_causes: list[str] = []
    for component in (*COMPARED, "total"):
        theirs = _d(sdk_cost.get(component))
        diff = _d(spans[component]) - theirs
        if component == "total":
            causes = sorted(set(all_causes))
        else:
            causes = _causes(component, diff, env, end, book, models) if diff != 0 else []
            all_causes += causes
        diffs[component] = {"usd": round6(diff), "pct": _pct(diff, theirs), "causes": causes,
                            "unexplained": diff != 0 and not causes}
        mismatch = mismatch or abs(diff) > tolerance
    out["difference"] = diffs
    out["mismatch"] = mismatch
    return out


def apply_sdk_view(env: dict[str, Any], state: CallState, book: PriceBook) -> dict[str, Any]:
    """Fill what only the SDK's reports know, and add `reconciliation` (null without reports)."""
    sdk = state.sdk
    if sdk is None:
        env["reconciliation"] = None
        return env
    for name in ("caller", "callee"):
        v = sdk.value(name)
        if isinstance(v, str) and v:
            env[name] = v
    # spans say `patter.direction: inbound` on every call (hard-coded in 0.7.0); the SDK's report resolves it
    direction = sdk.value("direction")
    if direction:
        env["direction"] = direction
    providers = sdk.value("providers") or {}
    if not env.get("telephony_provider") and providers.get("telephony"):
        env["telephony_provider"] = providers["telephony"]
    mode = sdk.value("provider_mode")
    if mode and not (env.get("sides") or {}):
        env["provider_mode"] = mode
    agent = env.get("agent") or {}
    for component in ("stt", "llm", "tts"):
        if not agent.get(component) and providers.get(component):
            agent[component] = providers[component]
    models = sdk.value("models") or {}
    if not agent.get("model") and models.get("llm"):
        agent["model"] = models["llm"]
    end = sdk.end
    if end is not None:
        if not env.get("turns") and end.get("turns"):
            env["turns"] = end["turns"]
        if env.get("error") is None and end.get("error_code"):
            env["error"] = end["error_code"]
        if end.get("duration_seconds") is not None:
            env["duration_ms"] = max(float(env.get("duration_ms") or 0.0), round(end["duration_seconds"] * 1000, 1))
        if state.final and env.get("status") == "idle":
            env["status"] = "completed"  # the SDK said the call ended
    env["reconciliation"] = reconciliation(env, state, book)
    return env


def sdk_llm_models(state: CallState) -> dict[str, str]:
    """{llm provider: model} from the SDK's report: the call-level model (`agent.model`) for pricing."""
    if state.sdk is None:
        return {}
    provider = (state.sdk.value("providers") or {}).get("llm")
    model = (state.sdk.value("models") or {}).get("llm")
    return {provider: model} if provider and model else {}


def format_reconciliation(envelope: dict[str, Any]) -> list[str]:
    """`calls show` lines: otel-patter's USD beside the SDK's own, per component (none without a report)."""
    rec = envelope.get("reconciliation")
    if not rec:
        return []
    if not rec.get("sdk"):
        return [f"  sdk report: {', '.join(rec.get('reports') or [])} (no call_end cost yet)"]
    out = [f"  {'reconcile':<10} {'spans':>10} {'sdk':>10} {'diff':>10} {'pct':>8}  causes"
           + ("  (MISMATCH over ${:.6f})".format(rec["tolerance_usd"]) if rec.get("mismatch") else "")]
    for component in (*COMPARED, "total"):
        d = rec["difference"][component]
        pct = "" if d["pct"] is None else f"{d['pct']:+.2f}%"
        causes = ", ".join(d["causes"]) or ("unexplained" if d["unexplained"] else "")
        out.append(f"  {component:<10} {rec['spans'][component]:>10.6f} {rec['sdk'].get(component, 0.0):>10.6f} "
                   f"{d['usd']:>+10.6f} {pct:>8}  {causes}")
    return out
