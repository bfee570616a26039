"""Typed, validated configuration (DESIGN.md "Configuration and CLI").

The schema is a tree of frozen dataclasses. `load_config` reads YAML (or nothing),
expands `${env:VAR}` / `${env:VAR:-default}`, applies env overrides and CLI overrides
(precedence CLI > env > file > default) and validates, raising `ConfigError` whose
message names the offending path (e.g. `rollup.idle_timeout: expected a duration`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config value is wrong; `str()` starts with the dotted path of the value."""


@dataclass(frozen=True)
class Endpoint:
    endpoint: str | None  # "host:port"; None disables the listener


@dataclass(frozen=True)
class OtlpReceiverConfig:
    grpc: Endpoint = Endpoint("localhost:4317")
    http: Endpoint = Endpoint("localhost:4318")
    max_request_bytes: int = 16 * 1024 * 1024  # after decompression


@dataclass(frozen=True)
class ReceiversConfig:
    otlp: OtlpReceiverConfig = OtlpReceiverConfig()


@dataclass(frozen=True)
class AdminConfig:
    endpoint: str | None = "localhost:4319"


@dataclass(frozen=True)
class StoreConfig:
    log_dir: str = "auto"  # resolved to an absolute path by load_config
    redact_phone: str = "mask"  # mask | hash_only | full
    retention_days: int = 30
    fsync: bool = False


@dataclass(frozen=True)
class RollupConfig:
    idle_timeout: float = 30.0  # seconds
    final_grace: float = 6.0
    pending_timeout: float = 30.0  # how long a span without call id waits for its trace


@dataclass(frozen=True)
class PiiConfig:
    allow_keys: tuple[str, ...] = ()  # extra exact keys or `prefix.*` patterns to keep
    deny_keys: tuple[str, ...] = ()  # extra exact keys or patterns to drop
    redact_ip: bool = False
    phone_mode: str = "mask"  # mask | hash_only (for values inside telemetry)


@dataclass(frozen=True)
class ForwardTarget:
    name: str
    endpoint: str
    protocol: str = "grpc"  # grpc | http
    headers: tuple[tuple[str, str], ...] = ()
    compression: str | None = None
    timeout: float = 10.0
    insecure: bool = True


@dataclass(frozen=True)
class Config:
    receivers: ReceiversConfig = ReceiversConfig()
    admin: AdminConfig = AdminConfig()
    store: StoreConfig = StoreConfig()
    rollup: RollupConfig = RollupConfig()
    pii: PiiConfig = PiiConfig()
    # SDK `Patter(pricing=)` shape, merged over the shipped table like the SDK's merge_pricing
    pricing: dict[str, Any] = field(default_factory=dict)
    # SDK `LLM_PRICING` shape: {provider: {model: {input, output, cache_read?, cache_write?}}}
    llm_pricing: dict[str, Any] = field(default_factory=dict)
    llm_default_model: dict[str, str] = field(default_factory=dict)
    stt_default_model: dict[str, str] = field(default_factory=dict)
    tts_default_model: dict[str, str] = field(default_factory=dict)
    forward: tuple[ForwardTarget, ...] = ()
    log_level: str = "info"
