"""Metric label values pass value allowlists (DESIGN.md "PII hygiene"): off-list values become `other`.

A label value is a time series forever, and it leaves the process: only values from a
closed vocabulary, or from the pricing table, are ever used. Providers are kept when
their pricing key is in the price book, LLM models when they match a priced model
(reported as the table key, so `gpt-4o-mini-2024-07-18` is `gpt-4o-mini`), else
`{vendor}-other`. Tenants are free text: printable, bounded, and capped in number.
"""

from __future__ import annotations

import re
from typing import Any

from otel_patter.pricing import PriceBook, pricing_key

OTHER = "other"
ERROR_LAYERS = ("stt", "llm", "tts", "carrier", "config", "internal", "none", "other")
DISCONNECT_REASONS = ("hangup_local", "hangup_remote", "error", "timeout", "no_answer", "busy", "completed",
                      "other")
STATUSES = ("completed", "error", "idle", "in_progress")
COMPONENTS = ("stt", "tts", "llm", "telephony", "realtime")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,63}")


def enum_label(value: Any, allowed: tuple[str, ...]) -> str:
    v = value.strip().lower() if isinstance(value, str) else ""
    return v if v in allowed else OTHER


def error_layer(value: Any) -> str:
    return enum_label(value, ERROR_LAYERS)


def disconnect_reason(value: Any) -> str:
    return enum_label(value, DISCONNECT_REASONS)


def status(value: Any) -> str:
    return enum_label(value, STATUSES)


class Labeler:
    """Provider and model label values checked against one price book."""

    def __init__(self, book: PriceBook) -> None:
        self.book = book

    def provider(self, component: str, provider: Any) -> str:
        if not isinstance(provider, str) or not provider or component not in COMPONENTS:
            return OTHER
        key = pricing_key(component, provider)
        table = self.book.llm if component == "llm" else self.book.providers
        return provider if key in table else OTHER

    def model(self, provider: Any, model: Any) -> str:
        """The priced model key, else `{vendor}-other` (`other-other` for an unknown vendor)."""
        vendor = self.provider("llm", provider)
        if vendor != OTHER and isinstance(model, str) and model:
            key = self.book.resolve_model("llm", pricing_key("llm", vendor), model)
            if key is not None:
                return key
        return f"{vendor}-other"


class TenantCap:
    """At most `max_tenants` distinct tenant values; later ones (and malformed ones) are `other`.

    "" (no tenant on the call) is always allowed and never takes a slot.
    """

    def __init__(self, max_tenants: int) -> None:
        self.max_tenants = max_tenants
        self.seen: set[str] = set()

    def __call__(self, tenant: Any) -> str:
        if tenant is None or tenant == "":
            return ""
        if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant) or tenant == OTHER:
            return OTHER
        if tenant in self.seen:
            return tenant
        if len(self.seen) >= self.max_tenants:
            return OTHER
        self.seen.add(tenant)
        return tenant
