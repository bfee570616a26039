"""Typed, validated configuration (DESIGN.md "Configuration and CLI").

The schema is a tree of frozen dataclasses. `load_config` reads YAML (or nothing),
expands `${env:VAR}` / `${env:VAR:-default}`, applies env overrides and CLI overrides
(precedence CLI > env > file > default) and validates, raising `ConfigError` whose
message names the offending path (e.g. `rollup.idle_timeout: expected a duration`).

All errors are collected and reported together, one `path: message` per line. A path is
a dotted key (`receivers.otlp.grpc.endpoint`, `forward[0].headers`), the name of the
environment variable a value came from (`PATTER_LOG_RETENTION_DAYS`), or the config
file itself for errors about the file as a whole.

Environment variables read here (nothing else, and never `OTEL_EXPORTER_OTLP_*`, which
points at us):

- `OTEL_PATTER_CONFIG`: the config file when no path is given.
- `OTEL_PATTER_LOG_DIR`, then `PATTER_LOG_DIR`: `store.log_dir`.
- `PATTER_LOG_RETENTION_DAYS`: `store.retention_days` (negative is clamped to 0, as the SDK does).
- `PATTER_LOG_REDACT_PHONE`: `mask` or `hash_only` set `store.redact_phone` and `pii.phone_mode`.
  Anything else, including the SDK's default `full`, is ignored with a note: raw phone numbers
  are only ever written when our own config says `store.redact_phone: full`.
- `OTEL_PATTER_LOG_LEVEL`: `log_level`.
- `OTEL_PATTER_FORWARD_ENDPOINT` (+ `OTEL_PATTER_FORWARD_PROTOCOL`, `OTEL_PATTER_FORWARD_HEADERS`
  as `k=v,k2=v2`): one more forward target named `env`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import platformdirs
import yaml

APP_NAME = "otel-patter"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is wrong; `str()` starts with the dotted path of the value.

    `errors` holds every problem found as `(path, message)` pairs; `str()` is one
    `path: message` line per problem.
    """

    def __init__(self, errors: str | Sequence[tuple[str, str]]) -> None:
        if isinstance(errors, str):
            path, _, message = errors.partition(": ")
            self.errors: tuple[tuple[str, str], ...] = ((path, message),) if message else (("", errors),)
        else:
            self.errors = tuple(errors)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.errors))


@dataclass(frozen=True)
class TlsConfig:
    """TLS on a listener: our certificate and key (PEM); with `client_ca_file`, clients must show a
    certificate that CA signed (mTLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True)
class ClientTlsConfig:
    """TLS to a downstream: `ca_file` verifies its certificate (a private CA; the system's CAs without it), and
    `cert_file` + `key_file` are ours when it asks for one (mTLS). The OpenTelemetry Collector's exporter names."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Endpoint:
    endpoint: str | None  # "host:port"; None disables the listener
    # OTLP listeners: when set, requests want `Authorization: Bearer <token>` (gRPC: `authorization` metadata)
    auth_token: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class OtlpReceiverConfig:
    grpc: Endpoint = Endpoint("localhost:4317")
    http: Endpoint = Endpoint("localhost:4318")
    max_request_bytes: int = 16 * 1024 * 1024  # after decompression
    # HTTP: a request's head and body must arrive within this (slow or stalled clients are cut off), and an
    # idle keep-alive connection is closed after it; gRPC: the connection handshake, and the grace RPCs in
    # flight get when a connection reaches max_connection_age
    read_timeout: float = 30.0
    max_connection_age: float = 600.0  # gRPC: connections are recycled (GOAWAY) after this


@dataclass(frozen=True)
class LimitsConfig:
    # soft memory limit: over it (resident set size), receivers refuse with UNAVAILABLE / 503 + Retry-After
    memory_mib: int | None = None


@dataclass(frozen=True)
class ReceiversConfig:
    otlp: OtlpReceiverConfig = OtlpReceiverConfig()


@dataclass(frozen=True)
class AdminConfig:
    endpoint: str | None = "localhost:4319"
    # when set, the API and the page want `Authorization: Bearer <token>` (/healthz, /readyz stay open)
    auth_token: str | None = field(default=None, repr=False)
    metrics_auth: bool = False  # true: /metrics wants the token too
    tls: TlsConfig | None = None  # HTTPS (and mTLS with client_ca_file) on the admin port


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
    headers: tuple[tuple[str, str], ...] = ()  # names lower-cased
    compression: str | None = None  # "gzip" or None
    timeout: float = 10.0
    insecure: bool = True  # when not configured: True for http://, False for https://
    tls: ClientTlsConfig | None = None  # a private CA and/or our client certificate (needs insecure: false)
    queue_max_bytes: int = 256 * 1024 * 1024  # persistent queue bound; when full the oldest data is dropped
    retry_initial_interval: float = 1.0  # exponential backoff (x2, with jitter) from here ...
    retry_max_interval: float = 30.0  # ... up to here, for as long as the queue holds the data
    # queued requests of one signal leave in one send, concatenated up to this many bytes (0: one request a send);
    # below the 4 MiB a gRPC server takes by default
    batch_max_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class MetricsConfig:
    tenant_attribute: str = "tenant.id"  # resource attribute naming the tenant of a call
    max_tenants: int = 100  # distinct tenant label values; later tenants are counted as `other`
    # `otlp_push: {interval: 60s, downstreams: [name, ...]}`: push the `patter_*` metrics as OTLP through
    # those forward targets' queues (all targets when the list is empty); interval 0 (default) is off
    otlp_push_interval: float = 0.0
    otlp_push_downstreams: tuple[str, ...] = ()


@dataclass(frozen=True)
class SdkIngestConfig:
    """The SDK's own call reports (`notify_dashboard`: POST /api/dashboard/ingest), as a sidecar. Off by default.

    getpatter 0.7.0 always posts to 127.0.0.1:8000, so only a loopback endpoint can receive it.
    """

    endpoint: str | None = None  # "127.0.0.1:8000" turns it on; null disables
    tolerance_usd: float = 0.001  # a component (or total) further than this from the SDK's figure is a mismatch
    max_body_bytes: int = 4 * 1024 * 1024  # a call_end report carries every turn; bigger bodies are refused (413)


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
    metrics: MetricsConfig = MetricsConfig()
    sdk_ingest: SdkIngestConfig = SdkIngestConfig()
    limits: LimitsConfig = LimitsConfig()
    log_level: str = "info"
    # `serve` after SIGTERM/SIGINT: stop accepting, drain in-flight requests, flush; exit within this
    shutdown_timeout: float = 10.0
    # things the operator should hear about at start (ignored env values, `full` phone numbers)
    notes: tuple[str, ...] = ()


# -- vocabularies ---------------------------------------------------------------------------------
REDACT_PHONE_MODES = ("mask", "hash_only", "full")
PII_PHONE_MODES = ("mask", "hash_only")
PROTOCOLS = ("grpc", "http")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
PRICING_UNITS = ("minute", "1k_chars", "token")
REALTIME_RATE_KEYS = ("audio_input_per_token", "audio_output_per_token", "text_input_per_token",
                      "text_output_per_token", "cached_audio_input_per_token", "cached_text_input_per_token")
PRICING_ENTRY_KEYS = ("unit", "price", "round_up", "models", *REALTIME_RATE_KEYS)
LLM_RATE_KEYS = ("input", "output", "cache_read", "cache_write")
MAX_REQUEST_BYTES_LIMIT = 2**31 - 1  # grpc's max_receive_message_length is an int32
MIN_QUEUE_BYTES = 64 * 1024
MAX_QUEUE_BYTES = 1024**4
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_TENANTS = 100_000
MAX_SDK_REPORT_BYTES = 64 * 1024 * 1024
SDK_NOTIFY_PORT = 8000  # getpatter 0.7.0 `notify_dashboard` posts to 127.0.0.1:8000, nowhere else
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_DAYS = 1_000_000  # far beyond any retention, well inside datetime.timedelta
MAX_DURATION = 366 * 86400.0  # one year: longer timeouts are typos, and huge ones overflow event loops
MAX_LISTENER_TIMEOUT = 86400.0
MIN_MEMORY_MIB = 32  # the process itself needs about 60 MiB: a smaller limit would refuse everything
MAX_MEMORY_MIB = 1024 * 1024
MAX_SHUTDOWN_TIMEOUT = 3600.0  # orchestrators kill a stopping process long before (k8s default grace: 30 s)

_ENV_REF = re.compile(r"\$\$|\$\{env:([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(b|kb|kib|mb|mib|gb|gib)?", re.IGNORECASE)
_SIZE_FACTORS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
                 "gb": 1000**3, "gib": 1024**3}
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_KEY_PATTERN = re.compile(r"\S+")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL_WORDS = ("null", "none", "off", "~")


class _Invalid:
    """Marks a value that failed validation (an error has been recorded)."""


INVALID = _Invalid()


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(allowed)})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    """Validates a raw (parsed YAML) tree into the typed schema, collecting every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[tuple[str, str]] = []
        self.labels: dict[str, str] = {}  # dotted path -> env var name the value came from
        self.literal: set[str] = set()  # paths whose strings are not `${env:}`-expanded (env / CLI values)

    # -- plumbing ---------------------------------------------------------------------------------
    def error(self, path: str, message: str) -> _Invalid:
        self.errors.append((self.labels.get(path, path), message))
        return INVALID

    def mapping(self, value: Any, path: str, allowed: Sequence[str] | None = None) -> dict[str, Any] | None:
        """A mapping with string keys (None reads as empty); unknown keys are errors when `allowed`."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path or "<top level>", f"expected a mapping, got {_show(value)}")
            return None
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.error(_join(path, str(k)), f"keys must be strings, got {_show(k)}")
                continue
            if allowed is not None and k not in allowed:
                self.error(_join(path, k), _suggest(k, allowed))
                continue
            out[k] = v
        return out

    def get(self, m: Mapping[str, Any], key: str, path: str, conv: Callable[[Any, str], T | _Invalid],
            default: T) -> T:
        if key not in m:
            return default
        value = conv(m[key], _join(path, key))
        return default if isinstance(value, _Invalid) else value

    # -- scalars ----------------------------------------------------------------------------------
    def expand(self, value: str, path: str) -> str | _Invalid:
        if path in self.literal or "$" not in value:
            return value
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            ref = m.group(1)
            name, sep, default = ref.partition(":-")
            if not _ENV_NAME.fullmatch(name):
                missing.append(f"bad environment reference ${{env:{ref}}}")
                return ""
            got = self.env.get(name)
            if sep and not got:
                return default
            if got is None:
                missing.append(f"environment variable {name} is not set (write ${{env:{name}:-default}} "
                               "to give a default)")
                return ""
            return got

        out = _ENV_REF.sub(sub, value)
        if missing:
            for problem in missing:
                self.error(path, problem)
            return INVALID
        if "${env:" in _ENV_REF.sub("", value):
            return self.error(path, "unterminated ${env:...} reference")
        return out

    def string(self, value: Any, path: str) -> str | _Invalid:
        if not isinstance(value, str):
            return self.error(path, f"expected a string, got {_show(value)}")
        return self.expand(value, path)

    def nonempty(self, value: Any, path: str) -> str | _Invalid:
        s = self.string(value, path)
        if isinstance(s, str) and not s.strip():
            return self.error(path, "must not be empty")
        return s

    def choice(self, options: Sequence[str]) -> Callable[[Any, str], str | _Invalid]:
        def conv(value: Any, path: str) -> str | _Invalid:
            s = self.string(value, path)
            if isinstance(s, _Invalid):
                return s
            norm = s.strip().lower()
            if norm == "warn" and "warning" in options:
                norm = "warning"
            if norm not in options:
                return self.error(path, f"expected one of {' | '.join(options)}, got {_show(s)}")
            return norm

        return conv

    def integer(self, value: Any, path: str) -> int | _Invalid:
        if isinstance(value, bool):
            return self.error(path, f"expected an integer, got {_show(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            s = self.expand(value, path)
            if isinstance(s, _Invalid):
                return s
            if re.fullmatch(r"\s*[-+]?\d{1,18}\s*", s):
                return int(s)
            return self.error(path, f"expected an integer, got {_show(s)}")
        return self.error(path, f"expected an integer, got {_show(value)}")

    def non_negative_int(self, value: Any, path: str) -> int | _Invalid:
        n = self.integer(value, path)
        if isinstance(n, int) and not 0 <= n <= MAX_DAYS:
            return self.error(path, f"must be 0-{MAX_DAYS}, got {_show(n)}")
        return n

    def boolean(self, value: Any, path: str) -> bool | _Invalid:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            s = self.expand(value, path)
            if isinstance(s, _Invalid):
                return s
            if s.strip().lower() in _TRUE:
                return True
            if s.strip().lower() in _FALSE:
                return False
            return self.error(path, f"expected true or false, got {_show(s)}")
        return self.error(path, f"expected true or false, got {_show(value)}")

    def duration(self, value: Any, path: str, *, positive: bool = False) -> float | _Invalid:
        """`30s`, `500ms`, `2m`, `1h`, or a bare number of seconds."""
        seconds: float
        if isinstance(value, bool):
            return self.error(path, f"expected a duration such as 30s, 500ms, 2m, 1h, got {_show(value)}")
        if isinstance(value, int | float):
            seconds = _to_float(value)
        elif isinstance(value, str):
            s = self.expand(value, path)
            if isinstance(s, _Invalid):
                return s
            m = _DURATION.fullmatch(s.strip())
            if not m:
                return self.error(path, f"expected a duration such as 30s, 500ms, 2m, 1h, got {_show(s)}")
            unit = (m.group(2) or "s").lower()
            number = float(m.group(1))
            seconds = number / 1000.0 if unit == "ms" else number * _DURATION_FACTORS[unit]
        else:
            return self.error(path, f"expected a duration such as 30s, 500ms, 2m, 1h, got {_show(value)}")
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
            return self.error(path, f"expected a duration from 0 to 366 days, got {_show(value)}")
        if positive and seconds == 0:
            return self.error(path, "must be longer than 0")
        return seconds

    def positive_duration(self, value: Any, path: str) -> float | _Invalid:
        return self.duration(value, path, positive=True)

    def shutdown_timeout(self, value: Any, path: str) -> float | _Invalid:
        """How long `serve` may take to stop after SIGTERM: more than 0, at most 1h."""
        seconds = self.positive_duration(value, path)
        if isinstance(seconds, float) and seconds > MAX_SHUTDOWN_TIMEOUT:
            return self.error(path, f"must be at most 1h (an orchestrator kills the process long before), "
                                    f"got {_show(value)}")
        return seconds

    def size(self, value: Any, path: str, limit: int = MAX_REQUEST_BYTES_LIMIT, *,
             zero: bool = False) -> int | _Invalid:
        """A positive byte count (or 0, with `zero`): an integer, or `16MiB`, `512KiB`, `1MB`, ..."""
        n: float
        if isinstance(value, bool):
            return self.error(path, f"expected a size in bytes such as 16MiB, got {_show(value)}")
        if isinstance(value, int):
            n = value
            fraction = False
        elif isinstance(value, str):
            s = self.expand(value, path)
            if isinstance(s, _Invalid):
                return s
            m = _SIZE.fullmatch(s.strip())
            if not m:
                return self.error(path, f"expected a size in bytes such as 16MiB, got {_show(s)}")
            product = float(m.group(1)) * _SIZE_FACTORS[(m.group(2) or "b").lower()]
            n = int(product) if math.isfinite(product) else limit + 1
            fraction = 0 < product < 1
        else:
            return self.error(path, f"expected a size in bytes such as 16MiB, got {_show(value)}")
        if zero and fraction:  # not 0 (which turns the feature off)
            return self.error(path, f"must be 0 or at least 1 byte, got {_show(value)}")
        if n < 0 or (n == 0 and not zero):
            return self.error(path, f"must be {'at least' if zero else 'more than'} 0 bytes, got {_show(value)}")
        if n > limit:
            return self.error(path, f"must be at most {limit} bytes, got {_show(value)}")
        return int(n)

    def rate(self, value: Any, path: str) -> float | int | _Invalid:
        """A price: a finite, non-negative number (numeric strings, e.g. from `${env:}`, read as float)."""
        if isinstance(value, bool):
            return self.error(path, f"expected a price (a number), got {_show(value)}")
        n: float | int
        if isinstance(value, int | float):
            n = value
        elif isinstance(value, str):
            s = self.expand(value, path)
            if isinstance(s, _Invalid):
                return s
            try:
                n = float(s.strip())
            except ValueError:
                return self.error(path, f"expected a price (a number), got {_show(s)}")
        else:
            return self.error(path, f"expected a price (a number), got {_show(value)}")
        if not math.isfinite(_to_float(n)) or n < 0:
            return self.error(path, f"expected a finite, non-negative price, got {_show(value)}")
        return n

    def endpoint(self, value: Any, path: str) -> str | _Invalid | None:
        """`host:port` (port 1-65535; IPv6 as `[::1]:4317`), or null / `none` / `off` to disable."""
        if value is None:
            return None
        s = self.string(value, path)
        if isinstance(s, _Invalid):
            return s
        s = s.strip()
        if s.lower() in _NULL_WORDS:
            return None
        problem = _endpoint_problem(s)
        if problem:
            return self.error(path, f"{problem}, got {_show(s)}")
        return s

    def url(self, value: Any, path: str) -> str | _Invalid:
        """`http(s)://host[:port][/path]`."""
        s = self.string(value, path)
        if isinstance(s, _Invalid):
            return s
        s = s.strip()
        try:
            u = urllib.parse.urlsplit(s)
            port = u.port
        except ValueError as e:
            return self.error(path, f"expected http(s)://host:port[/path], got {_show(s)} ({e})")
        if u.scheme not in ("http", "https") or not u.hostname:
            return self.error(path, f"expected http(s)://host:port[/path], got {_show(s)}")
        if port == 0:
            return self.error(path, f"port must be 1-65535, got {_show(s)}")
        if u.query or u.fragment:
            return self.error(path, f"expected no query or fragment, got {_show(s)}")
        host = u.hostname
        if ":" in host:
            try:
                ipaddress.IPv6Address(host.split("%", 1)[0])
            except ValueError:
                return self.error(path, f"bad IPv6 address in {_show(s)}")
        elif not _HOSTNAME.fullmatch(host):
            return self.error(path, f"bad host name in {_show(s)}")
        return s

    def log_dir(self, value: Any, path: str) -> str | _Invalid:
        s = self.nonempty(value, path)
        if isinstance(s, _Invalid):
            return s
        return resolve_log_dir(s)

    # -- collections ------------------------------------------------------------------------------
    def key_list(self, value: Any, path: str) -> tuple[str, ...] | _Invalid:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            return self.error(path, f"expected a list of attribute keys, got {_show(value)}")
        out: list[str] = []
        for i, item in enumerate(value):
            s = self.string(item, f"{path}[{i}]")
            if isinstance(s, _Invalid):
                continue
            if not _KEY_PATTERN.fullmatch(s):
                self.error(f"{path}[{i}]", f"expected a key or pattern without spaces, got {_show(s)}")
                continue
            out.append(s)
        return tuple(out)

    def str_map(self, value: Any, path: str) -> dict[str, str] | _Invalid:
        m = self.mapping(value, path)
        if m is None:
            return INVALID
        out: dict[str, str] = {}
        for k, v in m.items():
            s = self.nonempty(v, _join(path, k))
            if isinstance(s, str):
                out[k] = s.strip()
        return out

    def pricing(self, value: Any, path: str) -> dict[str, Any] | _Invalid:
        """SDK `Patter(pricing=)` shape: {provider: {unit?, price?, round_up?, models?, *_per_token?}}."""
        providers = self.mapping(value, path)
        if providers is None:
            return INVALID
        out: dict[str, Any] = {}
        for provider, entry in providers.items():
            p_path = _join(path, provider)
            parsed = self._pricing_entry(entry, p_path, allow_models=True)
            if parsed is not None:
                out[provider] = parsed
        return out

    def _pricing_entry(self, value: Any, path: str, *, allow_models: bool) -> dict[str, Any] | None:
        keys = PRICING_ENTRY_KEYS if allow_models else tuple(k for k in PRICING_ENTRY_KEYS if k != "models")
        if value is None:
            self.error(path, "expected a mapping of rates, got None")
            return None
        m = self.mapping(value, path, keys)
        if m is None:
            return None
        out: dict[str, Any] = {}
        for k, v in m.items():
            k_path = _join(path, k)
            parsed: Any
            if k == "unit":
                parsed = self.choice(PRICING_UNITS)(v, k_path)
            elif k == "round_up":
                parsed = self.boolean(v, k_path)
            elif k == "models":
                models = self.mapping(v, k_path)
                if models is None:
                    continue
                parsed = {}
                for model, rates in models.items():
                    entry = self._pricing_entry(rates, _join(k_path, model), allow_models=False)
                    if entry is not None:
                        parsed[model] = entry
            else:
                parsed = self.rate(v, k_path)
            if not isinstance(parsed, _Invalid):
                out[k] = parsed
        return out

    def llm_pricing(self, value: Any, path: str) -> dict[str, Any] | _Invalid:
        """SDK `LLM_PRICING` shape, USD per 1M tokens: {provider: {model: {input, output, cache_*?}}}."""
        providers = self.mapping(value, path)
        if providers is None:
            return INVALID
        out: dict[str, Any] = {}
        for provider, models_raw in providers.items():
            p_path = _join(path, provider)
            if models_raw is None:
                self.error(p_path, "expected a mapping of models, got None")
                continue
            models = self.mapping(models_raw, p_path)
            if models is None:
                continue
            parsed_models: dict[str, Any] = {}
            for model, rates_raw in models.items():
                m_path = _join(p_path, model)
                if rates_raw is None:
                    self.error(m_path, "expected a mapping with input and output, got None")
                    continue
                rates = self.mapping(rates_raw, m_path, LLM_RATE_KEYS)
                if rates is None:
                    continue
                for required in ("input", "output"):
                    if required not in rates:
                        self.error(_join(m_path, required), "missing (USD per 1M tokens)")
                parsed: dict[str, Any] = {}
                for k, v in rates.items():
                    r = self.rate(v, _join(m_path, k))
                    if not isinstance(r, _Invalid):
                        parsed[k] = r
                parsed_models[model] = parsed
            out[provider] = parsed_models
        return out

    def headers(self, value: Any, path: str) -> tuple[tuple[str, str], ...] | _Invalid:
        m = self.mapping(value, path)
        if m is None:
            return INVALID
        out: dict[str, str] = {}
        for k, v in m.items():
            k_path = _join(path, k)
            if not _HEADER_NAME.fullmatch(k):
                self.error(k_path, "not a valid header name")
                continue
            s = self.string(v, k_path)
            if isinstance(s, _Invalid):
                continue
            if "\n" in s or "\r" in s:
                self.error(k_path, "header values must not contain line breaks")
                continue
            if k.lower() in out:
                self.error(k_path, "header given twice (names are case-insensitive)")
                continue
            out[k.lower()] = s
        return tuple(out.items())

    # -- sections ---------------------------------------------------------------------------------
    def config(self, raw: Mapping[str, Any]) -> Config:
        top = self.mapping(raw, "", [f.name for f in _fields(Config) if f.name != "notes"]) or {}
        d = Config()
        return Config(
            receivers=self.receivers(top.get("receivers"), "receivers"),
            admin=self.admin(top.get("admin"), "admin"),
            store=self.store(top.get("store"), "store"),
            rollup=self.rollup(top.get("rollup"), "rollup"),
            pii=self.pii(top.get("pii"), "pii"),
            pricing=self.get(top, "pricing", "", self.pricing, d.pricing),
            llm_pricing=self.get(top, "llm_pricing", "", self.llm_pricing, d.llm_pricing),
            llm_default_model=self.get(top, "llm_default_model", "", self.str_map, d.llm_default_model),
            stt_default_model=self.get(top, "stt_default_model", "", self.str_map, d.stt_default_model),
            tts_default_model=self.get(top, "tts_default_model", "", self.str_map, d.tts_default_model),
            forward=self.forward_list(top.get("forward"), "forward"),
            metrics=self.metrics_section(top.get("metrics"), "metrics"),
            sdk_ingest=self.sdk_ingest(top.get("sdk_ingest"), "sdk_ingest"),
            limits=self.limits(top.get("limits"), "limits"),
            log_level=self.get(top, "log_level", "", self.choice(LOG_LEVELS), d.log_level),
            shutdown_timeout=self.get(top, "shutdown_timeout", "", self.shutdown_timeout, d.shutdown_timeout),
        )

    def receivers(self, value: Any, path: str) -> ReceiversConfig:
        m = self.mapping(value, path, ["otlp"]) or {}
        return ReceiversConfig(otlp=self.otlp(m.get("otlp"), _join(path, "otlp")))

    def otlp(self, value: Any, path: str) -> OtlpReceiverConfig:
        d = OtlpReceiverConfig()
        m = self.mapping(value, path, ["grpc", "http", "max_request_bytes", "read_timeout",
                                       "max_connection_age"]) or {}
        return OtlpReceiverConfig(
            grpc=self.listener(m, "grpc", path, d.grpc),
            http=self.listener(m, "http", path, d.http),
            max_request_bytes=self.get(m, "max_request_bytes", path, self.size, d.max_request_bytes),
            read_timeout=self.get(m, "read_timeout", path, self.listener_timeout, d.read_timeout),
            max_connection_age=self.get(m, "max_connection_age", path, self.listener_timeout,
                                        d.max_connection_age),
        )

    def listener_timeout(self, value: Any, path: str) -> float | _Invalid:
        """More than 0, at most 1 day (grpc takes milliseconds as an int32)."""
        seconds = self.positive_duration(value, path)
        if isinstance(seconds, float) and seconds > MAX_LISTENER_TIMEOUT:
            return self.error(path, f"must be at most 24h, got {_show(value)}")
        return seconds

    def listener(self, m: Mapping[str, Any], key: str, path: str, default: Endpoint) -> Endpoint:
        if key not in m:
            return default
        if m[key] is None:  # `grpc: null` disables the listener, like `grpc: {endpoint: null}`
            return Endpoint(None)
        lpath = _join(path, key)
        sub = self.mapping(m[key], lpath, ["endpoint", "auth_token", "tls"]) or {}
        token = None if sub.get("auth_token") is None else self.get(sub, "auth_token", lpath, self.auth_token, None)
        return Endpoint(self.get(sub, "endpoint", lpath, self.endpoint, default.endpoint), auth_token=token,
                        tls=self.tls(sub.get("tls"), _join(lpath, "tls")))

    def tls(self, value: Any, path: str) -> TlsConfig | None:
        """`{cert_file, key_file, client_ca_file?}`: readable PEM files (paths expand `~`)."""
        if value is None:
            return None
        keys = [f.name for f in _fields(TlsConfig)]
        m = self.mapping(value, path, keys)
        if m is None:
            return None
        files = self._pem_files(m, path, keys, required=("cert_file", "key_file"))
        if files["cert_file"] is None or files["key_file"] is None:
            return None
        return TlsConfig(cert_file=files["cert_file"], key_file=files["key_file"],
                         client_ca_file=files["client_ca_file"])

    def client_tls(self, value: Any, path: str) -> ClientTlsConfig | None:
        """`{ca_file?, cert_file?, key_file?}` of a forward target: readable PEM files, cert and key together."""
        if value is None:
            return None
        keys = [f.name for f in _fields(ClientTlsConfig)]
        m = self.mapping(value, path, keys)
        if m is None:
            return None
        files = self._pem_files(m, path, keys, required=())
        if any(m.get(k) is not None and files[k] is None for k in keys):
            return None  # a file that cannot be read (the error is recorded)
        if (m.get("cert_file") is None) != (m.get("key_file") is None):
            missing = "key_file" if m.get("key_file") is None else "cert_file"
            self.error(_join(path, missing), "missing: a client certificate needs both cert_file and key_file")
            return None
        if not any(m.get(k) is not None for k in keys):
            self.error(path, "empty: give ca_file, or cert_file and key_file, or both")
            return None
        return ClientTlsConfig(**files)

    def _pem_files(self, m: Mapping[str, Any], path: str, keys: list[str],
                   required: tuple[str, ...]) -> dict[str, str | None]:
        """Each of `keys` as a readable file's absolute path (None when absent: an error when `required`)."""
        files: dict[str, str | None] = {}
        for key in keys:
            if m.get(key) is None:
                if key in required:
                    self.error(_join(path, key), "missing (a PEM file)")
                files[key] = None
            else:
                files[key] = self.get(m, key, path, self.readable_file, None)
        return files

    def readable_file(self, value: Any, path: str) -> str | _Invalid:
        s = self.nonempty(value, path)
        if isinstance(s, _Invalid):
            return s
        full = os.path.abspath(os.path.expanduser(s.strip()))
        if not os.path.isfile(full):
            return self.error(path, f"no such file: {_show(full)}")
        if not os.access(full, os.R_OK):
            return self.error(path, f"not readable: {_show(full)}")
        return full

    def limits(self, value: Any, path: str) -> LimitsConfig:
        m = self.mapping(value, path, [f.name for f in _fields(LimitsConfig)]) or {}
        memory = None
        if m.get("memory_mib") is not None:
            n = self.integer(m["memory_mib"], _join(path, "memory_mib"))
            if isinstance(n, int) and not MIN_MEMORY_MIB <= n <= MAX_MEMORY_MIB:
                self.error(_join(path, "memory_mib"), f"must be {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB} (MiB), or null "
                                                      f"for no limit, got {_show(n)}")
            elif isinstance(n, int):
                memory = n
        return LimitsConfig(memory_mib=memory)

    def admin(self, value: Any, path: str) -> AdminConfig:
        m = self.mapping(value, path, [f.name for f in _fields(AdminConfig)]) or {}
        token = None if m.get("auth_token") is None else self.get(m, "auth_token", path, self.auth_token, None)
        metrics_auth = self.get(m, "metrics_auth", path, self.boolean, AdminConfig().metrics_auth)
        if metrics_auth and m.get("auth_token") is None:
            self.error(_join(path, "metrics_auth"), "true needs admin.auth_token")
        return AdminConfig(endpoint=self.get(m, "endpoint", path, self.endpoint, AdminConfig().endpoint),
                           auth_token=token, metrics_auth=metrics_auth, tls=self.tls(m.get("tls"), _join(path, "tls")))

    def auth_token(self, value: Any, path: str) -> str | _Invalid:
        """A bearer token: 1-4096 visible ASCII characters. Errors never show the value."""
        if not isinstance(value, str):
            return self.error(path, f"expected a string, got {type(value).__name__}")
        s = self.expand(value, path)
        if isinstance(s, _Invalid):
            return s
        if not s:
            return self.error(path, "must not be empty (leave it out or null to disable auth)")
        if len(s) > 4096 or not all("!" <= c <= "~" for c in s):
            return self.error(path, "must be 1-4096 visible ASCII characters (no spaces)")
        return s

    def store(self, value: Any, path: str) -> StoreConfig:
        d = StoreConfig()
        m = self.mapping(value, path, [f.name for f in _fields(StoreConfig)]) or {}
        return StoreConfig(
            log_dir=self.get(m, "log_dir", path, self.log_dir, resolve_log_dir(d.log_dir)),
            redact_phone=self.get(m, "redact_phone", path, self.choice(REDACT_PHONE_MODES), d.redact_phone),
            retention_days=self.get(m, "retention_days", path, self.non_negative_int, d.retention_days),
            fsync=self.get(m, "fsync", path, self.boolean, d.fsync),
        )

    def rollup(self, value: Any, path: str) -> RollupConfig:
        d = RollupConfig()
        m = self.mapping(value, path, [f.name for f in _fields(RollupConfig)]) or {}
        return RollupConfig(
            idle_timeout=self.get(m, "idle_timeout", path, self.positive_duration, d.idle_timeout),
            final_grace=self.get(m, "final_grace", path, self.duration, d.final_grace),
            pending_timeout=self.get(m, "pending_timeout", path, self.positive_duration, d.pending_timeout),
        )

    def pii(self, value: Any, path: str) -> PiiConfig:
        d = PiiConfig()
        m = self.mapping(value, path, [f.name for f in _fields(PiiConfig)]) or {}
        return PiiConfig(
            allow_keys=self.get(m, "allow_keys", path, self.key_list, d.allow_keys),
            deny_keys=self.get(m, "deny_keys", path, self.key_list, d.deny_keys),
            redact_ip=self.get(m, "redact_ip", path, self.boolean, d.redact_ip),
            phone_mode=self.get(m, "phone_mode", path, self.choice(PII_PHONE_MODES), d.phone_mode),
        )

    def forward_list(self, value: Any, path: str) -> tuple[ForwardTarget, ...]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            self.error(path, f"expected a list of targets, got {_show(value)}")
            return ()
        out: list[ForwardTarget] = []
        names: set[str] = set()
        for i, item in enumerate(value):
            target = self.forward_target(item, f"{path}[{i}]", names)
            if target is not None:
                out.append(target)
        return tuple(out)

    def forward_target(self, value: Any, path: str, names: set[str]) -> ForwardTarget | None:
        """One target; `names` collects the names seen so far (a repeated one is an error)."""
        keys = [f.name for f in _fields(ForwardTarget)]
        if value is None:
            self.error(path, "expected a mapping with name and endpoint, got None")
            return None
        m = self.mapping(value, path, keys)
        if m is None:
            return None
        ok = True
        for required in ("name", "endpoint"):
            if required not in m:
                self.error(_join(path, required), "missing")
                ok = False
        name = self.get(m, "name", path, self.target_name, "")
        if name in names:
            self.error(_join(path, "name"), f"duplicate target name {name!r}")
            ok = False
        elif name:
            names.add(name)
        endpoint = self.get(m, "endpoint", path, self.url, "")
        protocol = self.get(m, "protocol", path, self.choice(PROTOCOLS), _infer_protocol(endpoint))
        headers = self.get(m, "headers", path, self.headers, ())
        compression = self.get(m, "compression", path, self.compression, None)
        timeout = self.get(m, "timeout", path, self.positive_duration, 10.0)
        insecure = self.get(m, "insecure", path, self.boolean, not endpoint.lower().startswith("https:"))
        tls = self.client_tls(m.get("tls"), _join(path, "tls"))
        if tls is not None and insecure:
            self.error(_join(path, "tls"), "set, but the target is insecure (plaintext, or TLS unverified): use an "
                                           "https:// endpoint or insecure: false")
            ok = False
        d = ForwardTarget("", "")
        queue_max = self.get(m, "queue_max_bytes", path, self.queue_size, d.queue_max_bytes)
        retry_initial = self.get(m, "retry_initial_interval", path, self.positive_duration,
                                 d.retry_initial_interval)
        retry_max = self.get(m, "retry_max_interval", path, self.positive_duration, d.retry_max_interval)
        if retry_max < retry_initial:
            self.error(_join(path, "retry_max_interval"), "must not be shorter than retry_initial_interval")
            ok = False
        batch_max = self.get(m, "batch_max_bytes", path, self.batch_size, d.batch_max_bytes)
        if not ok or not name or not endpoint:
            return None
        return ForwardTarget(name=name, endpoint=endpoint, protocol=protocol, headers=headers,
                             compression=compression, timeout=timeout, insecure=insecure, tls=tls,
                             queue_max_bytes=queue_max, retry_initial_interval=retry_initial,
                             retry_max_interval=retry_max, batch_max_bytes=batch_max)

    def batch_size(self, value: Any, path: str) -> int | _Invalid:
        """A forward batch bound: 0 (off) or a size up to 64MiB."""
        return self.size(value, path, limit=MAX_BATCH_BYTES, zero=True)

    def queue_size(self, value: Any, path: str) -> int | _Invalid:
        """A forward queue bound: a size (`256MiB`) from 64KiB to 1TiB."""
        n = self.size(value, path, limit=MAX_QUEUE_BYTES)
        if isinstance(n, int) and n < MIN_QUEUE_BYTES:
            return self.error(path, f"must be at least {MIN_QUEUE_BYTES} bytes (64KiB), got {_show(value)}")
        return n

    def metrics_section(self, value: Any, path: str) -> MetricsConfig:
        d = MetricsConfig()
        allowed = [f.name for f in _fields(MetricsConfig) if not f.name.startswith("otlp_push")] + ["otlp_push"]
        m = self.mapping(value, path, allowed) or {}
        max_tenants = self.get(m, "max_tenants", path, self.integer, d.max_tenants)
        if not 0 <= max_tenants <= MAX_TENANTS:
            self.error(_join(path, "max_tenants"), f"must be 0-{MAX_TENANTS}, got {_show(max_tenants)}")
            max_tenants = d.max_tenants
        push_path = _join(path, "otlp_push")
        push = self.mapping(m.get("otlp_push"), push_path, ["interval", "downstreams"]) or {}
        interval = self.get(push, "interval", push_path, self.duration, d.otlp_push_interval)
        if 0 < interval < 1:
            self.error(_join(push_path, "interval"), "must be 0 (off) or at least 1s")
        names = self.get(push, "downstreams", push_path, self.key_list, d.otlp_push_downstreams)
        return MetricsConfig(
            tenant_attribute=self.get(m, "tenant_attribute", path, self.nonempty, d.tenant_attribute).strip(),
            max_tenants=max_tenants,
            otlp_push_interval=interval,
            otlp_push_downstreams=names,
        )

    def sdk_ingest(self, value: Any, path: str) -> SdkIngestConfig:
        d = SdkIngestConfig()
        m = self.mapping(value, path, [f.name for f in _fields(SdkIngestConfig)]) or {}
        endpoint = self.get(m, "endpoint", path, self.endpoint, d.endpoint)
        if endpoint is not None:
            host = endpoint.rpartition(":")[0]
            host = host.strip("[]").lower()
            if not (host in _LOOPBACK_HOSTS or host.startswith("127.")):
                self.error(_join(path, "endpoint"),
                           f"must be a loopback address (127.0.0.1:{SDK_NOTIFY_PORT}): the SDK posts its call "
                           f"reports to 127.0.0.1 only, and they carry phone numbers and transcripts, "
                           f"got {_show(endpoint)}")
                endpoint = None
        tolerance = self.get(m, "tolerance_usd", path, self.rate, d.tolerance_usd)
        return SdkIngestConfig(
            endpoint=endpoint,
            tolerance_usd=float(tolerance),
            max_body_bytes=self.get(m, "max_body_bytes", path,
                                    lambda v, p: self.size(v, p, limit=MAX_SDK_REPORT_BYTES), d.max_body_bytes),
        )

    def target_name(self, value: Any, path: str) -> str | _Invalid:
        s = self.string(value, path)
        if isinstance(s, str) and not _TARGET_NAME.fullmatch(s):
            return self.error(path, f"expected letters, digits, '_', '.', '-' (at most 64), got {_show(s)}")
        return s

    def compression(self, value: Any, path: str) -> str | _Invalid | None:
        if value is None:
            return None
        s = self.choice(("gzip", "none"))(value, path)
        return None if s == "none" else s


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def _to_float(n: float | int) -> float:
    try:
        return float(n)
    except OverflowError:  # an int beyond float range
        return math.inf


def _endpoint_problem(s: str) -> str | None:
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        if not sep:
            return "expected [ipv6]:port"
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return "bad IPv6 address"
    else:
        host, sep, port = s.rpartition(":")
        if not sep or not host:
            return "expected host:port"
        if ":" in host:
            return "expected host:port (write IPv6 addresses as [::1]:4317)"
        if not _HOSTNAME.fullmatch(host):
            return "bad host name in host:port"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return "port must be 1-65535"
    return None


def split_endpoint(endpoint: str, default_host: str = "localhost") -> tuple[str, int]:
    """`host:port` / `[v6]:port` (validated by the config loader) -> (host without brackets, port)."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]") or default_host, int(port)


def _infer_protocol(endpoint: str) -> str:
    """`http` when the URL says so (port 4318, or a path such as /v1/traces); else `grpc`."""
    try:
        u = urllib.parse.urlsplit(endpoint)
        port = u.port
    except ValueError:
        return "grpc"
    if port == 4318 or u.path not in ("", "/"):
        return "http"
    return "grpc"


def resolve_log_dir(value: str) -> str:
    """`auto` (any case, spaces around) -> the data dir of app `otel-patter`; else an absolute path."""
    if value.strip().lower() == "auto":
        return platformdirs.user_data_dir(APP_NAME, appauthor=False)
    return os.path.abspath(os.path.expanduser(value))


# -- raw-tree editing (copy-on-write, so YAML aliases never share an override) --------------------
def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> bool:
    """Set `a.b.c` in `raw`; False when something on the way is not a mapping (the file error is reported)."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, Mapping):
            return False
        child = dict(child)
        node[part] = child
        node = child
    node[parts[-1]] = value
    return True


# -- YAML -----------------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reports duplicate keys instead of silently keeping the last one."""

    duplicates: list[tuple[int, str]]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            try:
                key = self.construct_object(key_node, deep=deep)
                hash(key)
            except (TypeError, yaml.YAMLError):
                continue
            if key in seen:
                self.duplicates.append((key_node.start_mark.line + 1, str(key)))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError([(path, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([(path, f"cannot read: {e}")]) from None
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # the reader already rejects some characters here
        loader.duplicates = []
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError([(path, f"invalid YAML: {' '.join(str(e).split())}")]) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as e:
        raise ConfigError([(path, f"invalid YAML: {type(e).__name__}: {e}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise ConfigError([(f"{path}:{line}", f"duplicate key {key!r}") for line, key in loader.duplicates])
    return data


# -- env overrides --------------------------------------------------------------------------------
def _env_overrides(env: Mapping[str, str], reader: _Reader, notes: list[str]) -> list[tuple[str, Any, str]]:
    """(dotted key, value, env var name) from the environment, in the order they apply."""
    out: list[tuple[str, Any, str]] = []
    for var in ("PATTER_LOG_DIR", "OTEL_PATTER_LOG_DIR"):  # later wins: OTEL_PATTER_LOG_DIR first
        if env.get(var, "").strip():
            out.append(("store.log_dir", env[var], var))
    days = env.get("PATTER_LOG_RETENTION_DAYS", "").strip()
    if days:
        if re.fullmatch(r"[-+]?\d{1,18}", days) and int(days) <= MAX_DAYS:
            n = int(days)
            if n < 0:
                notes.append(f"PATTER_LOG_RETENTION_DAYS={days} is negative: using 0 (keep everything), "
                             "as the SDK does")
            out.append(("store.retention_days", max(0, n), "PATTER_LOG_RETENTION_DAYS"))
        else:
            reader.error("PATTER_LOG_RETENTION_DAYS",
                         f"expected an integer number of days, got {_show(days)}")
    redact = env.get("PATTER_LOG_REDACT_PHONE", "").strip().lower()
    if redact in PII_PHONE_MODES:
        out.append(("store.redact_phone", redact, "PATTER_LOG_REDACT_PHONE"))
        out.append(("pii.phone_mode", redact, "PATTER_LOG_REDACT_PHONE"))
    elif redact:
        notes.append(f"PATTER_LOG_REDACT_PHONE={redact!r} ignored: it may choose mask or hash_only; "
                     "raw phone "
                     "numbers are written only with store.redact_phone: full in the otel-patter config")
    level = env.get("OTEL_PATTER_LOG_LEVEL", "").strip()
    if level:
        out.append(("log_level", level, "OTEL_PATTER_LOG_LEVEL"))
    return out


def _env_forward(env: Mapping[str, str], reader: _Reader) -> ForwardTarget | None:
    raw_endpoint = env.get("OTEL_PATTER_FORWARD_ENDPOINT", "").strip()
    if not raw_endpoint:
        return None
    reader.literal.update(("OTEL_PATTER_FORWARD_ENDPOINT", "OTEL_PATTER_FORWARD_PROTOCOL"))
    endpoint = reader.url(raw_endpoint, "OTEL_PATTER_FORWARD_ENDPOINT")
    raw_protocol = env.get("OTEL_PATTER_FORWARD_PROTOCOL", "").strip()
    protocol: str | _Invalid = "grpc"
    if raw_protocol:
        protocol = reader.choice(PROTOCOLS)(raw_protocol, "OTEL_PATTER_FORWARD_PROTOCOL")
    elif isinstance(endpoint, str):
        protocol = _infer_protocol(endpoint)
    headers: list[tuple[str, str]] = []
    for i, item in enumerate(x for x in env.get("OTEL_PATTER_FORWARD_HEADERS", "").split(",") if x.strip()):
        k, sep, v = item.partition("=")
        k = urllib.parse.unquote(k.strip()).lower()
        if not sep or not _HEADER_NAME.fullmatch(k):
            reader.error("OTEL_PATTER_FORWARD_HEADERS", f"entry {i + 1}: expected name=value")
            continue
        headers.append((k, urllib.parse.unquote(v.strip())))
    if isinstance(endpoint, _Invalid) or isinstance(protocol, _Invalid):
        return None
    return ForwardTarget(name="env", endpoint=endpoint, protocol=protocol, headers=tuple(headers),
                         insecure=not endpoint.lower().startswith("https:"))


# -- public API -----------------------------------------------------------------------------------
def load_config(path: str | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, expand, override and validate the configuration; raise `ConfigError` listing every problem.

    `path` falls back to `$OTEL_PATTER_CONFIG`; with neither, every default applies. `env` defaults
    to `os.environ`. `overrides` are CLI values by dotted key (`{"store.log_dir": "/x"}`) and win
    over the environment, which wins over the file.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get("OTEL_PATTER_CONFIG", "").strip() or None
    data: Any = None
    if path is not None:
        path = os.path.expanduser(path)
        data = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problem = f"the top level must be a mapping, got {type(data).__name__}"
        raise ConfigError([(path or "<config>", problem)])
    raw: dict[str, Any] = dict(data)
    reader = _Reader(env)
    notes: list[str] = []
    for key, value, var in _env_overrides(env, reader, notes):
        if _set_dotted(raw, key, value):
            reader.labels[key] = var
            reader.literal.add(key)
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            reader.error(str(key), "bad override key")
            continue
        if _set_dotted(raw, key, value):
            reader.labels.pop(key, None)
            reader.literal.add(key)
    cfg = reader.config(raw)
    env_target = _env_forward(env, reader)
    forward = cfg.forward
    if env_target is not None:
        if any(t.name == env_target.name for t in forward):
            reader.error("OTEL_PATTER_FORWARD_ENDPOINT",
                         "adds the target named 'env', which forward already has")
        forward += (env_target,)
    for i, name in enumerate(cfg.metrics.otlp_push_downstreams):
        if name not in {t.name for t in forward}:
            reader.error(f"metrics.otlp_push.downstreams[{i}]", f"no forward target named {name!r}")
    if cfg.metrics.otlp_push_interval and not forward:
        reader.error("metrics.otlp_push.interval", "pushes through forward targets, and forward is empty")
    if reader.errors:
        raise ConfigError(reader.errors)
    if cfg.store.redact_phone == "full":
        notes.append("store.redact_phone: full: envelopes keep raw caller/callee phone numbers")
    sdk_endpoint = cfg.sdk_ingest.endpoint
    if sdk_endpoint is not None and not sdk_endpoint.endswith(f":{SDK_NOTIFY_PORT}"):
        notes.append(f"sdk_ingest.endpoint {sdk_endpoint}: getpatter 0.7.0 posts its call reports to "
                     f"127.0.0.1:{SDK_NOTIFY_PORT} only; another port receives them only through a proxy")
    return dataclasses.replace(cfg, forward=forward, notes=tuple(notes))


def format_duration(seconds: float) -> str | float:
    """`30s`, `300ms`, or the bare number of seconds when neither is exact; reads back to the same float."""
    ms = seconds * 1000.0
    if ms.is_integer() and ms / 1000.0 == seconds:
        return f"{int(ms) // 1000}s" if int(ms) % 1000 == 0 else f"{int(ms)}ms"
    return seconds


def _mask_url(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    if u.password is None:
        return url
    netloc = f"{u.username}:***@{u.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(u._replace(netloc=netloc))


def _listener_dict(listener: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": listener.endpoint}
    if listener.auth_token is not None:
        out["auth_token"] = "***"
    if listener.tls is not None:
        out["tls"] = dataclasses.asdict(listener.tls)
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data in the YAML's shape, secrets masked (header values `***`)."""
    otlp = cfg.receivers.otlp
    return {
        "receivers": {"otlp": {"grpc": _listener_dict(otlp.grpc),
                               "http": _listener_dict(otlp.http),
                               "max_request_bytes": otlp.max_request_bytes,
                               "read_timeout": format_duration(otlp.read_timeout),
                               "max_connection_age": format_duration(otlp.max_connection_age)}},
        "admin": {"endpoint": cfg.admin.endpoint, "auth_token": None if cfg.admin.auth_token is None else "***",
                  "metrics_auth": cfg.admin.metrics_auth,
                  **({"tls": dataclasses.asdict(cfg.admin.tls)} if cfg.admin.tls is not None else {})},
        "store": {"log_dir": cfg.store.log_dir, "redact_phone": cfg.store.redact_phone,
                  "retention_days": cfg.store.retention_days, "fsync": cfg.store.fsync},
        "rollup": {"idle_timeout": format_duration(cfg.rollup.idle_timeout),
                   "final_grace": format_duration(cfg.rollup.final_grace),
                   "pending_timeout": format_duration(cfg.rollup.pending_timeout)},
        "pii": {"allow_keys": list(cfg.pii.allow_keys), "deny_keys": list(cfg.pii.deny_keys),
                "redact_ip": cfg.pii.redact_ip, "phone_mode": cfg.pii.phone_mode},
        "pricing": copy.deepcopy(cfg.pricing),
        "llm_pricing": copy.deepcopy(cfg.llm_pricing),
        "llm_default_model": dict(cfg.llm_default_model),
        "stt_default_model": dict(cfg.stt_default_model),
        "tts_default_model": dict(cfg.tts_default_model),
        "forward": [{"name": t.name, "endpoint": _mask_url(t.endpoint), "protocol": t.protocol,
                     "headers": {k: "***" for k, _ in t.headers},
                     "compression": t.compression, "timeout": format_duration(t.timeout),
                     "insecure": t.insecure, "tls": dataclasses.asdict(t.tls) if t.tls is not None else None,
                     "queue_max_bytes": t.queue_max_bytes,
                     "retry_initial_interval": format_duration(t.retry_initial_interval),
                     "retry_max_interval": format_duration(t.retry_max_interval),
                     "batch_max_bytes": t.batch_max_bytes} for t in cfg.forward],
        "metrics": {"tenant_attribute": cfg.metrics.tenant_attribute, "max_tenants": cfg.metrics.max_tenants,
                    "otlp_push": {"interval": format_duration(cfg.metrics.otlp_push_interval),
                                  "downstreams": list(cfg.metrics.otlp_push_downstreams)}},
        "sdk_ingest": {"endpoint": cfg.sdk_ingest.endpoint, "tolerance_usd": cfg.sdk_ingest.tolerance_usd,
                       "max_body_bytes": cfg.sdk_ingest.max_body_bytes},
        "limits": {"memory_mib": cfg.limits.memory_mib},
        "log_level": cfg.log_level,
        "shutdown_timeout": format_duration(cfg.shutdown_timeout),
    }


def format_effective(cfg: Config) -> str:
    """`config_to_dict` as YAML text, in schema order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def check_config_main(path: str | None) -> int:
    """`otel-patter check-config`: print the effective config (0) or `error: <path>: <message>` lines (1)."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for p, message in e.errors:
            print(f"error: {p}: {message}" if p else f"error: {message}", file=sys.stderr)
        return 1
    for note in cfg.notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(format_effective(cfg))
    return 0
