"""Aggregated call metrics (`patter_*`) on the admin `/metrics`, from finalized calls.

Every family lives in the service's own registry (SelfMetrics) so `/metrics` shows them
next to the `otel_patter_*` self-metrics. Figures come from the envelope (its top-level
side, as the envelope's `cost` and the summary span), so Prometheus, the API and the
trace always agree: `patter_cost_usd_total{component}` adds the envelope's per-line USD
(each rounded half-even to 6 places), so summed over components it can differ from the
envelope's `cost.total` (rounded from the exact sum, as the SDK does) by a few micro-dollars;
`patter_call_cost_usd` observes `cost.total` itself.

Reopened calls: a late span reopens a final call and it is finalized again. Each call's
contribution to every counter is remembered, and a re-finalization adds only the
difference (never a negative one). Per-call observations (`patter_calls_total`, the
duration and cost histograms) are made once, at the first finalization; turn latencies
are a multiset, so only turns not observed before are added. The memory of
contributions is bounded (LRU); a call reopened after it was forgotten, or after a
restart, is first remembered from its state as it was final (`on_reopen`), so it too adds
only the difference (the process before counted the rest).

Label values pass allowlists (`labels.py`); the tenant (resource attribute
`metrics.tenant_attribute`) is capped at `metrics.max_tenants` values, later ones `other`.
"""

from __future__ import annotations

from collections import Counter as Multiset
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from otel_patter.component import Stage
from otel_patter.config import MetricsConfig
from otel_patter.exporters import labels
from otel_patter.exporters.summary import Outcome, outcome, top_side
from otel_patter.pricing import PriceBook
from otel_patter.processors.rollup_state import CallState
from otel_patter.selfmetrics import LabelledChildren

TURN_LATENCY_BUCKETS_MS = (100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000)
CALL_COST_BUCKETS_USD = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CALL_DURATION_BUCKETS_S = (5, 10, 30, 60, 120, 180, 300, 600, 900, 1800, 3600)
MAX_REMEMBERED_CALLS = 100_000


@dataclass(slots=True)
class Contribution:
    tenant: str
    counters: dict[tuple[Any, ...], float] = field(default_factory=dict)
    turns: Multiset[float] = field(default_factory=Multiset)
    disconnect_counted: bool = False


class CallMetrics(Stage):
    def __init__(self, cfg: MetricsConfig, registry: CollectorRegistry, book: PriceBook,
                 active_calls: Callable[[], int]) -> None:
        self.cfg = cfg
        self.labeler = labels.Labeler(book)
        self.tenants = labels.TenantCap(cfg.max_tenants)
        self.remembered: OrderedDict[str, Contribution] = OrderedDict()
        r = registry
        self.calls = Counter("patter_calls", "Calls finalized, by status at their first finalization",
                             ["tenant", "status"], registry=r)
        self.active = Gauge("patter_calls_active", "Calls not yet final", registry=r)
        self.active.set_function(lambda: float(active_calls()))
        self.cost = Counter("patter_cost_usd", "USD spent, by component and provider",
                            ["tenant", "component", "provider"], registry=r)
        self.duration = Histogram("patter_call_duration_seconds", "Call duration", ["tenant"],
                                  buckets=CALL_DURATION_BUCKETS_S, registry=r)
        self.turn_latency = Histogram("patter_turn_latency_ms",
                                      "Turn latency (the SDK's patter.latency.ttfb_ms), milliseconds", ["tenant"],
                                      buckets=TURN_LATENCY_BUCKETS_MS, registry=r)
        self.call_cost = Histogram("patter_call_cost_usd", "USD per call (total)", ["tenant"],
                                   buckets=CALL_COST_BUCKETS_USD, registry=r)
        self.stt_seconds = Counter("patter_stt_seconds", "Seconds of audio transcribed", ["tenant", "provider"],
                                   registry=r)
        self.tts_chars = Counter("patter_tts_chars", "Characters synthesized", ["tenant", "provider"], registry=r)
        self.llm_tokens = Counter("patter_llm_tokens", "LLM tokens, direction input or output",
                                  ["tenant", "provider", "model", "direction"], registry=r)
        self.telephony_minutes = Counter("patter_telephony_minutes", "Telephony minutes (as measured, not billed)",
                                         ["tenant", "provider"], registry=r)
        self.errors = Counter("patter_errors", "Failed spans, by the layer that failed", ["tenant", "error_layer"],
                              registry=r)
        self.disconnects = Counter("patter_disconnects", "Calls by how they ended, when a span says it",
                                   ["tenant", "disconnect_reason"], registry=r)
        self._child = LabelledChildren()
        self._families: dict[str, Counter] = {
            "cost": self.cost, "stt": self.stt_seconds, "tts": self.tts_chars, "llm": self.llm_tokens,
            "telephony": self.telephony_minutes, "errors": self.errors,
        }

    # -- what one call adds up to ------------------------------------------------------------
    def _counters(self, envelope: dict[str, Any], out: Outcome) -> dict[tuple[Any, ...], float]:
        lab = self.labeler
        c: dict[tuple[Any, ...], float] = {}

        def add(key: tuple[Any, ...], value: Any) -> None:
            if value:
                c[key] = c.get(key, 0.0) + float(value)

        for component, lines in (envelope.get("usage") or {}).items():
            for line in lines:
                provider = lab.provider(component, line.get("provider"))
                add(("cost", component, provider), line.get("usd"))
                if component == "stt":
                    add(("stt", provider), line.get("seconds"))
                elif component == "tts":
                    add(("tts", provider), line.get("chars"))
                elif component == "telephony":
                    add(("telephony", provider), line.get("minutes"))
                elif component == "llm":
                    model = lab.model(line.get("provider"), line.get("model"))
                    add(("llm", provider, model, "input"), line.get("input_tokens"))
                    add(("llm", provider, model, "output"), line.get("output_tokens"))
        for layer, n in out.error_layers.items():
            add(("errors", layer), n)
        return c

    def on_reopen(self, state: CallState, envelope: Callable[[], dict[str, Any]]) -> None:
        """A final call this process never counted (it was final before a restart) reopens: remember what its
        final revision already added to the counters of the process before, so only the difference is added."""
        if state.call_id in self.remembered:
            return
        env = envelope()
        out = outcome(state, env, self.cfg.tenant_attribute)
        prev = Contribution(self.tenants(out.tenant_raw), self._counters(env, out), Multiset(top_side(state).ttfb_ms),
                            out.disconnect_reason is not None)
        self.remembered[state.call_id] = prev
        if len(self.remembered) > MAX_REMEMBERED_CALLS:
            self.remembered.popitem(last=False)

    def on_final(self, state: CallState, envelope: dict[str, Any]) -> None:
        out = outcome(state, envelope, self.cfg.tenant_attribute)
        prev = self.remembered.get(state.call_id)
        if prev is None:
            prev = Contribution(self.tenants(out.tenant_raw))
            self._first_final(prev.tenant, envelope)
            self.remembered[state.call_id] = prev
            if len(self.remembered) > MAX_REMEMBERED_CALLS:
                self.remembered.popitem(last=False)
        else:
            self.remembered.move_to_end(state.call_id)
        tenant = prev.tenant
        child = self._child
        before = prev.counters
        for key, value in self._counters(envelope, out).items():
            counted = before.get(key)
            # in decimal: 0.01775 - 0.01275 adds 0.005, not 0.004999999999999999
            delta = value if counted is None else float(Decimal(str(value)) - Decimal(str(counted)))
            if delta > 0:
                child(self._families[key[0]], tenant, *key[1:]).inc(delta)
                before[key] = value
        turns = Multiset(top_side(state).ttfb_ms)
        latency = child(self.turn_latency, tenant)
        if prev.turns:
            for v in (turns - prev.turns).elements():
                latency.observe(v)
            prev.turns |= turns
        else:  # the first finalization: all of them, in the same order (no multiset difference and union)
            for v in turns.elements():
                latency.observe(v)
            prev.turns = turns
        if out.disconnect_reason is not None and not prev.disconnect_counted:
            child(self.disconnects, tenant, out.disconnect_reason).inc()
            prev.disconnect_counted = True

    def _first_final(self, tenant: str, envelope: dict[str, Any]) -> None:
        child = self._child
        child(self.calls, tenant, labels.status(envelope.get("status"))).inc()
        child(self.duration, tenant).observe(float(envelope.get("duration_ms") or 0.0) / 1000.0)
        child(self.call_cost, tenant).observe(float((envelope.get("cost") or {}).get("total") or 0.0))
