"""Provider rates and the arithmetic that turns a call's usage into exact USD.

The shipped `data/pricing.yaml` mirrors getpatter 0.7.0's `DEFAULT_PRICING` (here `providers`) and
`LLM_PRICING` (here `llm`); overrides merge the way the SDK's `merge_pricing` does, and model lookup
is the SDK's (exact key, else the longest key the model starts with). Two deliberate differences:
money is `Decimal` end to end (the SDK uses floats), and usage without a rate prices to `None`
("unpriced") where the SDK would silently say 0.0, so a missing rate can never look like a free call.

Every cost method takes a pricing key (see `pricing_key`), not the raw provider value from a span.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from importlib import resources
from typing import Any

import yaml

Number = int | float | Decimal

COMPONENTS = ("stt", "tts", "llm", "telephony", "realtime")

# Span provider values that differ from the SDK's pricing keys (research §1.4, §7): the STT/TTS
# adapters report a short name on spans but are billed under a component-specific key.
# `telnyx_stt` has no rate, so Telnyx STT usage stays visibly unpriced.
_ALIASES: dict[str, dict[str, str]] = {
    "stt": {"cartesia": "cartesia_stt", "telnyx": "telnyx_stt"},
    "tts": {"cartesia": "cartesia_tts", "openai": "openai_tts", "elevenlabs_rest": "elevenlabs"},
}

_SIXTY = Decimal(60)
_THOUSAND = Decimal(1000)
_MILLION = Decimal(1_000_000)
_MICRO = Decimal("0.000001")
# Non-numeric fields of a provider entry; every other leaf is a rate.
_NOT_RATES = ("unit", "round_up", "models")


def pricing_key(component: str, provider: str) -> str:
    """The pricing-table key for a provider value seen on a span of `component`."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
    return _ALIASES.get(component, {}).get(provider, provider)


def dec(x: Number) -> Decimal:
    """Exact Decimal of a number; floats go through `str` so 0.0085 stays 0.0085, not its binary value."""
    return x if isinstance(x, Decimal) else Decimal(str(x))


def round6(d: Decimal) -> float:
    """Half-even to 6 places, then float: the form every money number takes in an envelope."""
    return float(d.quantize(_MICRO, rounding=ROUND_HALF_EVEN))


def _longest_prefix(keys: Any, model: str) -> str | None:
    """The SDK's model lookup: exact key, else the longest key that `model` starts with."""
    if model in keys:
        return model
    best = max((k for k in keys if model.startswith(k)), key=len, default="")
    return best or None


def _merge_providers(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """getpatter's `merge_pricing`: each provider shallow-merged, so `round_up` survives a price-only
    override; `models` merged per model, where an override entry *replaces* that model's rates (fields it
    leaves out fall back to the provider level, not to the model's old rates); unknown providers added."""
    merged = copy.deepcopy(base)
    for provider, values in copy.deepcopy(overrides).items():
        target = merged.setdefault(provider, {})
        for k, v in values.items():
            if k == "models" and isinstance(v, dict) and isinstance(target.get("models"), dict):
                target["models"] = {**target["models"], **v}
            else:
                target[k] = v
    return merged


def _merge_llm(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """LLM_PRICING shape: merged per provider and model; an override replaces that model's rates."""
    merged = copy.deepcopy(base)
    for provider, models in copy.deepcopy(overrides).items():
        merged.setdefault(provider, {}).update(models)
    return merged


def _decimals(entry: dict[str, Any]) -> dict[str, Any]:
    """A provider entry with every rate (provider level and per model) as an exact Decimal."""
    out = {k: (v if k in _NOT_RATES else dec(v)) for k, v in entry.items()}
    if isinstance(entry.get("models"), dict):
        out["models"] = {m: _decimals(r) for m, r in entry["models"].items()}
    return out


@dataclass(frozen=True, slots=True)
class PriceBook:
    """The merged rate tables of one configuration, all rates as Decimal."""

    version: str
    last_updated: str
    providers: dict[str, dict[str, Any]]  # DEFAULT_PRICING shape
    llm: dict[str, dict[str, dict[str, Decimal]]]  # LLM_PRICING shape, USD per 1M tokens

    @classmethod
    def load(cls, pricing_overrides: dict[str, Any] | None = None,
             llm_overrides: dict[str, Any] | None = None) -> PriceBook:
        """The shipped tables with config `pricing:` (SDK `Patter(pricing=)` shape) and `llm_pricing:`
        (SDK `LLM_PRICING` shape) merged over them."""
        text = resources.files("otel_patter").joinpath("data/pricing.yaml").read_text(encoding="utf-8")
        shipped = yaml.safe_load(text)
        providers = _merge_providers(shipped["providers"], pricing_overrides or {})
        llm = _merge_llm(shipped["llm"], llm_overrides or {})
        return cls(
            version=str(shipped["version"]),
            last_updated=str(shipped["last_updated"]),
            providers={p: _decimals(e) for p, e in providers.items()},
            llm={p: {m: {k: dec(v) for k, v in r.items()} for m, r in ms.items()} for p, ms in llm.items()},
        )

    def resolve_model(self, component: str, provider: str, model: str | None) -> str | None:
        """The table key `model` is priced under for this component and pricing key; None without a model
        or a match. An empty model is no model, as in the SDK."""
        if not model:
            return None
        models = self.providers.get(provider, {}).get("models")
        table = self.llm.get(provider) if component == "llm" else models
        return _longest_prefix(table, model) if table else None

    def _rates(self, provider: str, model: str | None) -> dict[str, Any] | None:
        """Provider-level rates overlaid with the matched model's; None when a named model matches nothing
        (the SDK would fall back to the provider rate, which for STT/TTS would be a guess)."""
        entry = self.providers.get(provider)
        if entry is None:
            return None
        rates = {k: v for k, v in entry.items() if k != "models"}
        if model:  # "" is no model, as in the SDK
            key = _longest_prefix(entry.get("models") or {}, model)
            if key is None:
                return None
            rates.update(entry["models"][key])
        return rates

    def _price(self, provider: str, model: str | None, unit: str) -> Decimal | None:
        rates = self._rates(provider, model)
        if rates is None or rates.get("unit") != unit:
            return None
        return rates.get("price")

    def stt_cost(self, provider: str, seconds: Number, model: str | None = None) -> Decimal | None:
        """USD for `seconds` of audio: minutes * price per minute (SDK `calculate_stt_cost`)."""
        price = self._price(provider, model, "minute")
        return None if price is None else dec(seconds) / _SIXTY * price

    def tts_cost(self, provider: str, chars: Number, model: str | None = None) -> Decimal | None:
        """USD for `chars` synthesized characters: thousands * price per 1k (SDK `calculate_tts_cost`)."""
        price = self._price(provider, model, "1k_chars")
        return None if price is None else dec(chars) / _THOUSAND * price

    def llm_cost(self, provider: str, model: str, input_tokens: Number, output_tokens: Number,
                 cache_read: Number = 0, cache_write: Number = 0) -> Decimal | None:
        """USD for token counts at USD-per-1M rates (SDK `calculate_llm_cost`); None when the provider
        or model has no entry, where the SDK says 0.0. A missing cache rate prices those tokens at 0,
        as in the SDK."""
        key = self.resolve_model("llm", provider, model)
        if key is None:
            return None
        rates = self.llm[provider][key]
        usage = {"input": input_tokens, "output": output_tokens, "cache_read": cache_read,
                 "cache_write": cache_write}
        return sum((dec(n) / _MILLION * rates.get(k, Decimal(0)) for k, n in usage.items()), Decimal(0))

    def telephony_cost(self, provider: str, total_minutes: Number) -> tuple[Decimal | None, Decimal]:
        """(USD, billed minutes) for a call's total minutes on one carrier. `round_up` carriers bill
        whole minutes; the ceiling is taken of the total, since spans split the call but the carrier
        bills it once. No model lookup, as in the SDK's `calculate_telephony_cost`."""
        minutes = dec(total_minutes)
        price = self._price(provider, None, "minute")
        if price is None:
            return None, minutes
        if self.providers[provider].get("round_up"):
            minutes = minutes.to_integral_value(rounding=ROUND_CEILING)
        return minutes * price, minutes

    def realtime_minutes_cost(self, provider: str, minutes: Number) -> Decimal | None:
        """USD for realtime session minutes. The SDK prices realtime by tokens, which are never on
        spans, so this is None unless the configuration gives the provider a `unit: minute` rate."""
        price = self._price(provider, None, "minute")
        return None if price is None else dec(minutes) * price
