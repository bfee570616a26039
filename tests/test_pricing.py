"""Pricing equals getpatter 0.7.0's own functions on the same usage, in exact Decimal.

Where we differ from the SDK on purpose, the test says so: usage without a rate is `None`
(unpriced), never the SDK's silent 0.0.
"""

from __future__ import annotations

from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
import yaml
from getpatter import pricing as sdk

from otel_patter.pricing import PriceBook, pricing_key, round6

DEFAULTS = sdk.merge_pricing(None)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load({}, {})


def close(ours: Decimal | None, theirs: float) -> bool:
    """Our exact Decimal agrees with the SDK's float to far below a micro-dollar."""
    assert isinstance(ours, Decimal)
    return abs(float(ours) - theirs) < 1e-12 and round6(ours) == round6(Decimal(str(theirs)))


def as_decimals(table: dict[str, Any]) -> dict[str, Any]:
    """An SDK pricing dict in PriceBook form: units as plain strings, rates as Decimal via str."""
    def conv(k: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {kk: conv(kk, vv) for kk, vv in v.items()}
        if k == "unit":
            return str(v)
        return v if isinstance(v, bool) else Decimal(str(v))
    return {p: conv(p, e) for p, e in table.items()}


# --- the shipped table -------------------------------------------------------------------------------

def test_yaml_mirrors_the_sdk_tables_exactly() -> None:
    shipped = yaml.safe_load(resources.files("otel_patter").joinpath("data/pricing.yaml").read_text())
    assert shipped["version"] == sdk.PRICING_VERSION == "2026.3"
    assert shipped["last_updated"] == sdk.PRICING_LAST_UPDATED
    assert shipped["providers"] == {p: {k: str(v) if k == "unit" else v for k, v in e.items()}
                                    for p, e in sdk.DEFAULT_PRICING.items()}
    assert shipped["llm"] == sdk.LLM_PRICING


def test_loaded_book_holds_every_sdk_rate_as_decimal(book: PriceBook) -> None:
    assert book.version == "2026.3"
    assert book.providers == as_decimals(DEFAULTS)
    assert book.llm == as_decimals(sdk.LLM_PRICING)
    assert book.providers["twilio"]["price"] == Decimal("0.0085")  # via str: no binary-float tail


def _audio_cases() -> list[tuple[str, str | None]]:
    return [(p, m) for p, e in sdk.DEFAULT_PRICING.items() if e["unit"] in ("minute", "1k_chars")
            for m in (None, *e.get("models", {}))]


@pytest.mark.parametrize(("provider", "model"), _audio_cases())
def test_every_per_minute_and_per_1k_chars_rate_prices_like_the_sdk(book: PriceBook, provider: str,
                                                                     model: str | None) -> None:
    if DEFAULTS[provider]["unit"] == "minute":
        ours = book.stt_cost(provider, 97, model)
        theirs = sdk.calculate_stt_cost(provider, 97, DEFAULTS, model)
    else:
        ours = book.tts_cost(provider, 1234, model)
        theirs = sdk.calculate_tts_cost(provider, 1234, DEFAULTS, model)
    assert close(ours, theirs)


CARRIERS = [p for p in sdk.DEFAULT_PRICING if p.startswith(("twilio", "telnyx", "plivo"))]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_every_carrier_prices_a_61_second_call_like_the_sdk(book: PriceBook, carrier: str) -> None:
    usd, _ = book.telephony_cost(carrier, Decimal(61) / Decimal(60))
    assert close(usd, sdk.calculate_telephony_cost(carrier, 61, DEFAULTS))


@pytest.mark.parametrize(("provider", "model"), [(p, m) for p, ms in sdk.LLM_PRICING.items() for m in ms])
def test_every_llm_rate_prices_like_the_sdk(book: PriceBook, provider: str, model: str) -> None:
    ours = book.llm_cost(provider, model, 12_345, 678, cache_read=900, cache_write=40)
    assert close(ours, sdk.calculate_llm_cost(provider, model, 12_345, 678, 900, 40))


# --- STT / TTS -----------------------------------------------------------------------------------------

def test_deepgram_nova_3_is_minutes_times_the_per_minute_rate(book: PriceBook) -> None:
    ours = book.stt_cost("deepgram", 90, "nova-3")
    assert ours == Decimal("0.0072")  # 1.5 min at 0.0048
    assert close(ours, sdk.calculate_stt_cost("deepgram", 90, DEFAULTS, "nova-3"))


def test_versioned_model_takes_the_longest_matching_prefix(book: PriceBook) -> None:
    assert book.resolve_model("stt", "deepgram", "nova-2-phonecall") == "nova-2"  # not "nova"
    assert book.stt_cost("deepgram", 60, "nova-2-phonecall") == Decimal("0.0058")
    assert close(book.stt_cost("deepgram", 60, "nova-2-phonecall"),
                 sdk.calculate_stt_cost("deepgram", 60, DEFAULTS, "nova-2-phonecall"))


def test_without_a_model_the_provider_level_rate_applies(book: PriceBook) -> None:
    assert book.resolve_model("stt", "deepgram", None) is None
    assert book.stt_cost("deepgram", 60) == Decimal("0.0048")


def test_elevenlabs_is_thousands_of_characters_times_the_rate(book: PriceBook) -> None:
    assert book.tts_cost("elevenlabs", 1234) == Decimal("0.0617")
    assert book.tts_cost("elevenlabs", 1234, "eleven_multilingual_v2") == Decimal("0.1234")
    assert close(book.tts_cost("elevenlabs", 1234), sdk.calculate_tts_cost("elevenlabs", 1234, DEFAULTS))


def test_int_float_and_decimal_usage_price_the_same(book: PriceBook) -> None:
    assert book.stt_cost("deepgram", 90) == book.stt_cost("deepgram", 90.0) == Decimal("0.0072")
    assert book.stt_cost("deepgram", Decimal(90)) == Decimal("0.0072")


def test_named_audio_model_matching_nothing_is_unpriced_where_the_sdk_falls_back(book: PriceBook) -> None:
    assert book.stt_cost("deepgram", 60, "acme-asr") is None
    assert sdk.calculate_stt_cost("deepgram", 60, DEFAULTS, "acme-asr") == 0.0048  # the SDK guesses


def test_unknown_provider_is_unpriced_not_zero(book: PriceBook) -> None:
    assert book.stt_cost("acme_stt", 60) is None
    assert book.tts_cost("acme_voice", 400) is None
    assert sdk.calculate_tts_cost("acme_voice", 400, DEFAULTS) == 0.0


def test_a_rate_in_the_wrong_unit_is_no_rate(book: PriceBook) -> None:
    assert book.stt_cost("elevenlabs", 60) is None  # per 1k chars, not per minute
    assert book.tts_cost("deepgram", 400) is None
    assert book.stt_cost("openai_realtime", 60) is None  # per token


# --- provider aliases ------------------------------------------------------------------------------------

def test_span_provider_values_map_to_pricing_keys() -> None:
    assert pricing_key("stt", "cartesia") == "cartesia_stt"
    assert pricing_key("tts", "cartesia") == "cartesia_tts"
    assert pricing_key("tts", "openai") == "openai_tts"
    assert pricing_key("tts", "elevenlabs_rest") == "elevenlabs"
    assert pricing_key("stt", "whisper") == "whisper"
    assert pricing_key("stt", "openai_transcribe") == "openai_transcribe"
    assert pricing_key("llm", "openai") == "openai"
    assert pricing_key("realtime", "openai_realtime") == "openai_realtime"


def test_cartesia_stt_span_is_priced_at_the_cartesia_stt_rate(book: PriceBook) -> None:
    key = pricing_key("stt", "cartesia")
    assert book.stt_cost(key, 120) == Decimal("0.0050")
    assert close(book.stt_cost(key, 120), sdk.calculate_stt_cost("cartesia_stt", 120, DEFAULTS))


def test_telnyx_stt_has_no_rate(book: PriceBook) -> None:
    assert book.stt_cost(pricing_key("stt", "telnyx"), 60) is None


def test_unknown_component_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown component"):
        pricing_key("vision", "openai")


# --- LLM -----------------------------------------------------------------------------------------------

def test_gpt_4o_mini_tokens_are_priced_per_million(book: PriceBook) -> None:
    ours = book.llm_cost("openai", "gpt-4o-mini", 1200, 80, cache_read=1000)
    assert ours == Decimal("0.000303")  # (1200 at 0.15 + 80 at 0.60 + 1000 at 0.075) per 1M
    assert close(ours, sdk.calculate_llm_cost("openai", "gpt-4o-mini", 1200, 80, 1000))


def test_dated_llm_model_is_priced_by_its_longest_prefix(book: PriceBook) -> None:
    assert book.resolve_model("llm", "openai", "gpt-4o-mini-2024-07-18") == "gpt-4o-mini"  # not "gpt-4o"
    ours = book.llm_cost("openai", "gpt-4o-mini-2024-07-18", 1200, 80)
    assert ours == Decimal("0.000228")
    assert close(ours, sdk.calculate_llm_cost("openai", "gpt-4o-mini-2024-07-18", 1200, 80))


def test_llm_model_matching_nothing_is_unpriced_where_the_sdk_says_zero(book: PriceBook) -> None:
    assert book.resolve_model("llm", "openai", "my-finetune-v3") is None
    assert book.llm_cost("openai", "my-finetune-v3", 1000, 10) is None
    assert sdk.calculate_llm_cost("openai", "my-finetune-v3", 1000, 10) == 0.0


def test_llm_provider_without_a_table_is_unpriced(book: PriceBook) -> None:
    assert book.llm_cost("openai_compatible", "gpt-4o-mini", 1000, 10) is None
    assert sdk.calculate_llm_cost("openai_compatible", "gpt-4o-mini", 1000, 10) == 0.0


# --- telephony -----------------------------------------------------------------------------------------

def test_twilio_rounds_up_the_calls_total_minutes(book: PriceBook) -> None:
    usd, billed = book.telephony_cost("twilio", Decimal("0.5") + Decimal("0.6"))  # two spans, summed first
    assert (usd, billed) == (Decimal("0.0170"), Decimal(2))
    assert close(usd, sdk.calculate_telephony_cost("twilio", 66, DEFAULTS))  # 1.1 min in one call


def test_twilio_ceiling_is_of_the_sum_not_of_each_span(book: PriceBook) -> None:
    usd, billed = book.telephony_cost("twilio", Decimal("0.5") + Decimal("0.4"))
    assert (usd, billed) == (Decimal("0.0085"), Decimal(1))  # ceil per span would bill 2 minutes


def test_telnyx_bills_exact_minutes(book: PriceBook) -> None:
    minutes = Decimal(61) / Decimal(60)
    usd, billed = book.telephony_cost("telnyx", minutes)
    assert billed == minutes
    assert close(usd, sdk.calculate_telephony_cost("telnyx", 61, DEFAULTS))


def test_unknown_carrier_is_unpriced_and_bills_its_raw_minutes(book: PriceBook) -> None:
    assert book.telephony_cost("acme_carrier", 1.25) == (None, Decimal("1.25"))


# --- overrides (config `pricing:` / `llm_pricing:`) -----------------------------------------------------

OVERRIDES = [
    {"twilio": {"price": 0.014}},
    {"deepgram": {"models": {"nova-2": {"price": 0.01}}}},
    {"openai_realtime": {"models": {"gpt-realtime": {"text_output_per_token": 0.00002}}}},
    {"acme_stt": {"unit": "minute", "price": 0.004, "models": {"fast": {"price": 0.002}}}},
    {"telnyx": {"unit": "minute", "price": 0.0035}, "elevenlabs": {"price": 0.06}},
]


@pytest.mark.parametrize("overrides", OVERRIDES)
def test_pricing_overrides_merge_exactly_like_sdk_merge_pricing(overrides: dict[str, Any]) -> None:
    assert PriceBook.load(overrides, {}).providers == as_decimals(sdk.merge_pricing(overrides))


def test_price_only_override_keeps_round_up() -> None:
    overrides = {"twilio": {"price": 0.014}}
    usd, billed = PriceBook.load(overrides, {}).telephony_cost("twilio", Decimal(61) / Decimal(60))
    assert (usd, billed) == (Decimal("0.028"), Decimal(2))
    assert close(usd, sdk.calculate_telephony_cost("twilio", 61, sdk.merge_pricing(overrides)))


def test_model_override_replaces_that_models_entry_and_keeps_the_others() -> None:
    overrides = {"deepgram": {"models": {"nova-2": {"price": 0.01}}}}
    book = PriceBook.load(overrides, {})
    merged = sdk.merge_pricing(overrides)
    assert book.stt_cost("deepgram", 60, "nova-2-phonecall") == Decimal("0.01")
    assert book.stt_cost("deepgram", 60, "nova-3") == Decimal("0.0048")
    assert close(book.stt_cost("deepgram", 60, "nova-2-phonecall"),
                 sdk.calculate_stt_cost("deepgram", 60, merged, "nova-2-phonecall"))


def test_partial_model_override_falls_back_to_provider_rates_not_the_models_old_ones() -> None:
    overrides = {"openai_realtime": {"models": {"gpt-realtime": {"text_output_per_token": 0.00002}}}}
    rates = PriceBook.load(overrides, {}).providers["openai_realtime"]["models"]["gpt-realtime"]
    assert rates == {"text_output_per_token": Decimal("0.00002")}  # audio-in now the provider's 0.00001
    assert sdk.merge_pricing(overrides)["openai_realtime"]["models"]["gpt-realtime"] == {
        "text_output_per_token": 0.00002}


def test_llm_override_replaces_the_model_entry_and_adds_new_providers() -> None:
    book = PriceBook.load({}, {"openai": {"gpt-4o-mini": {"input": 0.2, "output": 0.8}},
                               "openai_compatible": {"my-model": {"input": 1, "output": 2}}})
    # the override has no cache_read rate, so cached tokens are priced at 0, as in the SDK
    assert book.llm_cost("openai", "gpt-4o-mini", 1_000_000, 0, cache_read=1_000_000) == Decimal("0.2")
    assert book.llm_cost("openai", "gpt-4o", 1_000_000, 0) == Decimal("2.5")  # untouched
    assert book.llm_cost("openai_compatible", "my-model-v2", 500_000, 500_000) == Decimal("1.5")


def test_loading_leaves_the_override_dicts_untouched() -> None:
    overrides = {"deepgram": {"models": {"nova-2": {"price": 0.01}}}}
    PriceBook.load(overrides, {})
    assert overrides == {"deepgram": {"models": {"nova-2": {"price": 0.01}}}}


# --- realtime --------------------------------------------------------------------------------------------

def test_realtime_minutes_are_unpriced_by_default(book: PriceBook) -> None:
    assert book.realtime_minutes_cost("openai_realtime", 3) is None  # the SDK prices tokens, not minutes
    assert book.realtime_minutes_cost("elevenlabs_convai", 3) is None


def test_realtime_minutes_are_priced_when_configured_per_minute() -> None:
    book = PriceBook.load({"elevenlabs_convai": {"unit": "minute", "price": 0.08}}, {})
    assert book.realtime_minutes_cost("elevenlabs_convai", 3.5) == Decimal("0.280")


# --- rounding for the envelope -------------------------------------------------------------------------

def test_round6_is_half_even_from_the_exact_value() -> None:
    assert round6(Decimal("0.0000125")) == 0.000012
    assert round6(Decimal("0.0000135")) == 0.000014
    assert isinstance(round6(Decimal("0.0170")), float)
