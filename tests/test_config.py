"""otel_patter.config: loading, env expansion, precedence, validation, printing (DESIGN "Configuration")."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import platformdirs
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_patter.config import (
    Config,
    ConfigError,
    Endpoint,
    ForwardTarget,
    check_config_main,
    config_to_dict,
    format_effective,
    load_config,
)

AUTO_DIR = platformdirs.user_data_dir("otel-patter", appauthor=False)


def write(tmp_path: Path, data: Any, name: str = "config.yaml") -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def errors_of(path: str | None = None, env: dict[str, str] | None = None, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path, env=env or {}, **kw)
    return str(exc.value).splitlines()


# -- defaults -------------------------------------------------------------------------------------
def test_defaults_with_no_file() -> None:
    cfg = load_config(env={})
    assert cfg == Config(store=cfg.store)  # everything but the resolved log dir is the schema default
    assert cfg.receivers.otlp.grpc == Endpoint("localhost:4317")
    assert cfg.receivers.otlp.http == Endpoint("localhost:4318")
    assert cfg.receivers.otlp.max_request_bytes == 16 * 1024 * 1024
    assert cfg.admin.endpoint == "localhost:4319"
    assert (cfg.store.redact_phone, cfg.store.retention_days, cfg.store.fsync) == ("mask", 30, False)
    assert (cfg.rollup.idle_timeout, cfg.rollup.final_grace) == (30.0, 6.0)
    assert cfg.pii.phone_mode == "mask"
    assert cfg.forward == ()
    assert cfg.log_level == "info"
    assert cfg.notes == ()


def test_auto_log_dir_is_the_otel_patter_data_dir() -> None:
    assert load_config(env={}).store.log_dir == AUTO_DIR
    assert os.path.basename(AUTO_DIR) == "otel-patter"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG layout")
def test_auto_log_dir_on_linux(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert load_config(env={}).store.log_dir == str(tmp_path / ".local/share/otel-patter")


def test_auto_is_case_and_space_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"log_dir": "  AuTo "}})
    assert load_config(path, env={}).store.log_dir == AUTO_DIR


def test_relative_and_home_log_dirs_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = load_config(env={}, overrides={"store.log_dir": "rel/logs"}).store.log_dir
    assert rel == str(tmp_path / "rel/logs")
    home = load_config(env={}, overrides={"store.log_dir": "~/x"}).store.log_dir
    assert home == os.path.join(os.path.expanduser("~"), "x")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == load_config(env={})


def test_config_path_from_otel_patter_config_env(tmp_path: Path) -> None:
    path = write(tmp_path, {"log_level": "debug"})
    assert load_config(env={"OTEL_PATTER_CONFIG": path}).log_level == "debug"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert errors_of(missing) == [f"{missing}: no such file"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert errors_of(path) == [f"{path}: the top level must be a mapping, got list"]


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {log_dir: [\n")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}: invalid YAML: ")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "store:\n  retention_days: 1\n  retention_days: 2\n")
    assert errors_of(path) == [f"{path}:3: duplicate key 'retention_days'"]


# -- ${env:} expansion ----------------------------------------------------------------------------
def test_env_expansion_plain(tmp_path: Path) -> None:
    path = write(tmp_path, "admin: {endpoint: '${env:ADMIN_HOST}:9000'}\n")
    assert load_config(path, env={"ADMIN_HOST": "0.0.0.0"}).admin.endpoint == "0.0.0.0:9000"


def test_env_expansion_default_when_unset(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {retention_days: '${env:DAYS:-7}'}\n")
    assert load_config(path, env={}).store.retention_days == 7


def test_env_expansion_default_loses_to_a_set_value(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {retention_days: '${env:DAYS:-7}'}\n")
    assert load_config(path, env={"DAYS": "12"}).store.retention_days == 12


def test_env_expansion_default_applies_to_empty_value(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: '${env:LVL:-warning}'\n")
    assert load_config(path, env={"LVL": ""}).log_level == "warning"


def test_env_expansion_is_not_recursive_and_dollar_dollar_escapes(tmp_path: Path) -> None:
    path = write(tmp_path, {"llm_default_model": {"a": "${env:A}", "b": "$${env:A}"}})
    cfg = load_config(path, env={"A": "${env:B}"})
    assert cfg.llm_default_model == {"a": "${env:B}", "b": "${env:A}"}


def test_missing_env_var_error_names_path_and_var(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"log_dir": "${env:MY_LOGS}"}})
    assert errors_of(path) == [
        "store.log_dir: environment variable MY_LOGS is not set "
        "(write ${env:MY_LOGS:-default} to give a default)"
    ]


def test_env_reference_in_a_forward_header(tmp_path: Path) -> None:
    path = write(tmp_path, {"forward": [{"name": "hc", "endpoint": "https://api.honeycomb.io:443",
                                         "headers": {"x-honeycomb-team": "${env:HC_KEY}"}}]})
    (target,) = load_config(path, env={"HC_KEY": "secret"}).forward
    assert target.headers == (("x-honeycomb-team", "secret"),)


# -- unknown keys, types, values ------------------------------------------------------------------
def test_unknown_key_error_has_path_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, {"receivers": {"otlp": {"grcp": {"endpoint": "localhost:4317"}}}})
    assert errors_of(path) == ["receivers.otlp.grcp: unknown key (did you mean grpc?)"]


def test_unknown_key_without_close_match_lists_the_keys(tmp_path: Path) -> None:
    path = write(tmp_path, {"admin": {"zzz": 1}})
    assert errors_of(path) == ["admin.zzz: unknown key (expected one of: endpoint, auth_token, metrics_auth, tls)"]


def test_unknown_cli_override_key_is_reported_with_its_path() -> None:
    assert errors_of(overrides={"receivers.otlp.grcp.endpoint": "0.0.0.0:4317"}) == [
        "receivers.otlp.grcp: unknown key (did you mean grpc?)"
    ]


def test_wrong_type_names_path_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"retention_days": "x"}})
    assert errors_of(path) == ["store.retention_days: expected an integer, got 'x'"]


def test_bad_duration_names_path(tmp_path: Path) -> None:
    path = write(tmp_path, {"rollup": {"idle_timeout": "30 sec"}})
    assert errors_of(path) == [
        "rollup.idle_timeout: expected a duration such as 30s, 500ms, 2m, 1h, got '30 sec'"
    ]


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), (45, 45.0), (2.5, 2.5), ("1.5s", 1.5),
    ("7", 7.0),
])
def test_durations(tmp_path: Path, value: Any, seconds: float) -> None:
    path = write(tmp_path, {"rollup": {"final_grace": value}})
    assert load_config(path, env={}).rollup.final_grace == seconds


def test_zero_idle_timeout_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"rollup": {"idle_timeout": "0s"}})
    assert errors_of(path) == ["rollup.idle_timeout: must be longer than 0"]


@pytest.mark.parametrize(("value", "expected"), [
    ("0.0.0.0:4317", "0.0.0.0:4317"), ("[::1]:4317", "[::1]:4317"), ("my-host.local:1", "my-host.local:1"),
    (None, None), ("off", None),
])
def test_good_endpoints(value: str | None, expected: str | None) -> None:
    cfg = load_config(env={}, overrides={"receivers.otlp.grpc.endpoint": value})
    assert cfg.receivers.otlp.grpc.endpoint == expected


@pytest.mark.parametrize(("value", "message"), [
    ("localhost:0", "port must be 1-65535, got 'localhost:0'"),
    ("localhost:65536", "port must be 1-65535, got 'localhost:65536'"),
    ("localhost", "expected host:port, got 'localhost'"),
    ("::1:4317", "expected host:port (write IPv6 addresses as [::1]:4317), got '::1:4317'"),
    ("[zz]:4317", "bad IPv6 address, got '[zz]:4317'"),
])
def test_bad_endpoints(value: str, message: str) -> None:
    assert errors_of(overrides={"admin.endpoint": value}) == [f"admin.endpoint: {message}"]


def test_null_listener_section_disables_it(tmp_path: Path) -> None:
    path = write(tmp_path, "receivers:\n  otlp:\n    grpc: null\n    http: {endpoint: null}\n")
    otlp = load_config(path, env={}).receivers.otlp
    assert (otlp.grpc.endpoint, otlp.http.endpoint) == (None, None)


@pytest.mark.parametrize(("value", "size"), [
    ("16MiB", 16 * 1024 * 1024), ("512KiB", 512 * 1024), ("1MB", 1_000_000), (4096, 4096), ("100", 100),
])
def test_max_request_bytes(value: Any, size: int) -> None:
    cfg = load_config(env={}, overrides={"receivers.otlp.max_request_bytes": value})
    assert cfg.receivers.otlp.max_request_bytes == size


@pytest.mark.parametrize("value", [0, -1, "3 parsecs", "4GiB", True])
def test_bad_max_request_bytes(value: Any) -> None:
    (line,) = errors_of(overrides={"receivers.otlp.max_request_bytes": value})
    assert line.startswith("receivers.otlp.max_request_bytes: ")


def test_redact_phone_value_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"redact_phone": "plain"}, "pii": {"phone_mode": "full"}})
    assert errors_of(path) == [
        "store.redact_phone: expected one of mask | hash_only | full, got 'plain'",
        "pii.phone_mode: expected one of mask | hash_only, got 'full'",
    ]


def test_multiple_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "receivers": {"otlp": {"grpc": {"endpoint": "nohost"}}},
        "store": {"retention_days": "x", "fsync": "maybe"},
        "rollup": {"final_grace": "soon"},
        "bogus": 1,
    })
    top_keys = ", ".join(f.name for f in dataclasses.fields(Config) if f.name != "notes")  # grows with features
    assert top_keys.startswith("receivers, admin, store, rollup, pii, pricing, llm_pricing, llm_default_model, ")
    assert errors_of(path) == [
        f"bogus: unknown key (expected one of: {top_keys})",
        "receivers.otlp.grpc.endpoint: expected host:port, got 'nohost'",
        "store.retention_days: expected an integer, got 'x'",
        "store.fsync: expected true or false, got 'maybe'",
        "rollup.final_grace: expected a duration such as 30s, 500ms, 2m, 1h, got 'soon'",
    ]


def test_config_error_keeps_structured_errors(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"retention_days": "x"}, "log_level": "loud"})
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert exc.value.errors == (
        ("store.retention_days", "expected an integer, got 'x'"),
        ("log_level", "expected one of debug | info | warning | error | critical, got 'loud'"),
    )


# -- precedence: CLI > OTEL_PATTER_LOG_DIR > PATTER_LOG_DIR > file > default -----------------------
@pytest.mark.parametrize(("cli", "otel_env", "patter_env", "file", "winner"), [
    ("/cli", "/otel", "/patter", "/file", "/cli"),
    (None, "/otel", "/patter", "/file", "/otel"),
    (None, None, "/patter", "/file", "/patter"),
    (None, None, None, "/file", "/file"),
    (None, None, None, None, AUTO_DIR),
])
def test_log_dir_precedence(tmp_path: Path, cli: str | None, otel_env: str | None, patter_env: str | None,
                            file: str | None, winner: str) -> None:
    env = {k: v for k, v in (("OTEL_PATTER_LOG_DIR", otel_env), ("PATTER_LOG_DIR", patter_env)) if v}
    path = write(tmp_path, {"store": {"log_dir": file}} if file else {})
    cfg = load_config(path, env=env, overrides={"store.log_dir": cli} if cli else None)
    assert cfg.store.log_dir == winner


def test_empty_env_log_dir_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"log_dir": "/file"}})
    assert load_config(path, env={"OTEL_PATTER_LOG_DIR": "", "PATTER_LOG_DIR": " "}).store.log_dir == "/file"


def test_cli_override_beats_env_log_level() -> None:
    cfg = load_config(env={"OTEL_PATTER_LOG_LEVEL": "error"}, overrides={"log_level": "DEBUG"})
    assert cfg.log_level == "debug"


def test_env_log_level_error_names_the_variable() -> None:
    assert errors_of(env={"OTEL_PATTER_LOG_LEVEL": "loud"}) == [
        "OTEL_PATTER_LOG_LEVEL: expected one of debug | info | warning | error | critical, got 'loud'"
    ]


def test_cli_override_does_not_touch_a_yaml_alias_twin(tmp_path: Path) -> None:
    path = write(tmp_path, "llm_default_model: &m {openai: gpt-4o}\nstt_default_model: *m\n")
    cfg = load_config(path, env={}, overrides={"llm_default_model.openai": "o3"})
    assert (cfg.llm_default_model, cfg.stt_default_model) == ({"openai": "o3"}, {"openai": "gpt-4o"})


# -- phone modes -----------------------------------------------------------------------------------
def test_patter_log_redact_phone_full_does_not_enable_full() -> None:
    cfg = load_config(env={"PATTER_LOG_REDACT_PHONE": "full"})
    assert (cfg.store.redact_phone, cfg.pii.phone_mode) == ("mask", "mask")
    assert len(cfg.notes) == 1
    assert cfg.notes[0].startswith("PATTER_LOG_REDACT_PHONE='full' ignored")


def test_patter_log_redact_phone_full_does_not_override_file_hash_only(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"redact_phone": "hash_only"}})
    assert load_config(path, env={"PATTER_LOG_REDACT_PHONE": "FULL"}).store.redact_phone == "hash_only"


def test_patter_log_redact_phone_garbage_is_ignored() -> None:
    cfg = load_config(env={"PATTER_LOG_REDACT_PHONE": "whatever"})
    assert cfg.store.redact_phone == "mask"
    assert cfg.notes[0].startswith("PATTER_LOG_REDACT_PHONE='whatever' ignored")


def test_patter_log_redact_phone_hash_only_applies_to_store_and_pii() -> None:
    cfg = load_config(env={"PATTER_LOG_REDACT_PHONE": " Hash_Only "})
    assert (cfg.store.redact_phone, cfg.pii.phone_mode) == ("hash_only", "hash_only")
    assert cfg.notes == ()


def test_patter_log_redact_phone_mask_beats_file_full(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"redact_phone": "full"}})
    assert load_config(path, env={"PATTER_LOG_REDACT_PHONE": "mask"}).store.redact_phone == "mask"


def test_store_redact_phone_full_in_file_works_and_is_noted(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"redact_phone": "full"}})
    cfg = load_config(path, env={})
    assert cfg.store.redact_phone == "full"
    assert cfg.pii.phone_mode == "mask"
    assert cfg.notes == ("store.redact_phone: full: envelopes keep raw caller/callee phone numbers",)


# -- retention --------------------------------------------------------------------------------------
def test_retention_env_sets_days(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"retention_days": 10}})
    assert load_config(path, env={"PATTER_LOG_RETENTION_DAYS": "3"}).store.retention_days == 3


def test_retention_env_invalid_is_an_error_naming_it() -> None:
    assert errors_of(env={"PATTER_LOG_RETENTION_DAYS": "ten"}) == [
        "PATTER_LOG_RETENTION_DAYS: expected an integer number of days, got 'ten'"
    ]


def test_retention_env_negative_is_clamped_to_zero() -> None:
    cfg = load_config(env={"PATTER_LOG_RETENTION_DAYS": "-5"})
    assert cfg.store.retention_days == 0
    assert cfg.notes[0].startswith("PATTER_LOG_RETENTION_DAYS=-5 is negative")


def test_retention_negative_in_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"retention_days": -1}})
    assert errors_of(path) == ["store.retention_days: must be 0-1000000, got -1"]


# -- forward ----------------------------------------------------------------------------------------
def test_forward_target_fields(tmp_path: Path) -> None:
    path = write(tmp_path, {"forward": [
        {"name": "jaeger", "endpoint": "http://jaeger:4317"},
        {"name": "hc", "endpoint": "https://api.honeycomb.io:443", "protocol": "http",
         "headers": {"X-Honeycomb-Team": "k"}, "compression": "gzip", "timeout": "5s"},
    ]})
    jaeger, hc = load_config(path, env={}).forward
    assert jaeger == ForwardTarget(name="jaeger", endpoint="http://jaeger:4317", protocol="grpc",
                                   insecure=True)
    assert hc == ForwardTarget(name="hc", endpoint="https://api.honeycomb.io:443", protocol="http",
                               headers=(("x-honeycomb-team", "k"),), compression="gzip", timeout=5.0,
                               insecure=False)


def test_forward_protocol_inferred_from_port_4318(tmp_path: Path) -> None:
    path = write(tmp_path, {"forward": [{"name": "c", "endpoint": "http://collector:4318"}]})
    assert load_config(path, env={}).forward[0].protocol == "http"


def test_forward_errors(tmp_path: Path) -> None:
    path = write(tmp_path, {"forward": [
        {"name": "a", "endpoint": "jaeger:4317", "protocol": "thrift", "compression": "zstd",
         "headers": {"k": 5}, "insecure": "sometimes"},
        {"endpoint": "http://x:1"},
        {"name": "a", "endpoint": "http://y:2"},
        {"name": "a", "endpoint": "http://z:3"},
    ]})
    assert errors_of(path) == [
        "forward[0].endpoint: expected http(s)://host:port[/path], got 'jaeger:4317'",
        "forward[0].protocol: expected one of grpc | http, got 'thrift'",
        "forward[0].headers.k: expected a string, got 5",
        "forward[0].compression: expected one of gzip | none, got 'zstd'",
        "forward[0].insecure: expected true or false, got 'sometimes'",
        "forward[1].name: missing",
        "forward[2].name: duplicate target name 'a'",
        "forward[3].name: duplicate target name 'a'",
    ]


def test_forward_header_values_are_masked_in_config_to_dict(tmp_path: Path) -> None:
    path = write(tmp_path, {"forward": [{"name": "hc", "endpoint": "https://api.honeycomb.io:443",
                                         "headers": {"x-honeycomb-team": "SECRET-KEY"}}]})
    cfg = load_config(path, env={})
    d = config_to_dict(cfg)
    assert d["forward"][0]["headers"] == {"x-honeycomb-team": "***"}
    assert "SECRET-KEY" not in format_effective(cfg)
    assert cfg.forward[0].headers == (("x-honeycomb-team", "SECRET-KEY"),)


def test_env_forward_endpoint_adds_a_target() -> None:
    cfg = load_config(env={"OTEL_PATTER_FORWARD_ENDPOINT": "http://jaeger:4317",
                           "OTEL_PATTER_FORWARD_HEADERS": "x-a=1,X-B=two%3Dthree"})
    assert cfg.forward == (ForwardTarget(name="env", endpoint="http://jaeger:4317", protocol="grpc",
                                         headers=(("x-a", "1"), ("x-b", "two=three"))),)


def test_env_forward_name_clash_with_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"forward": [{"name": "env", "endpoint": "http://a:4317"}]})
    assert errors_of(path, env={"OTEL_PATTER_FORWARD_ENDPOINT": "http://b:4317"}) == [
        "OTEL_PATTER_FORWARD_ENDPOINT: adds the target named 'env', which forward already has"
    ]


def test_env_forward_protocol() -> None:
    env = {"OTEL_PATTER_FORWARD_ENDPOINT": "http://c:9999", "OTEL_PATTER_FORWARD_PROTOCOL": "http"}
    assert load_config(env=env).forward[0].protocol == "http"
    assert errors_of(env={**env, "OTEL_PATTER_FORWARD_PROTOCOL": "udp"}) == [
        "OTEL_PATTER_FORWARD_PROTOCOL: expected one of grpc | http, got 'udp'"
    ]


def test_otel_exporter_otlp_env_is_never_read() -> None:
    cfg = load_config(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317",
                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://localhost:4318/v1/traces",
                           "OTEL_EXPORTER_OTLP_HEADERS": "a=b"})
    assert cfg == load_config(env={})


# -- pricing and model maps -------------------------------------------------------------------------
def test_pricing_and_llm_pricing_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "pricing": {"twilio": {"price": 0.014}, "deepgram": {"unit": "minute", "price": "0.005",
                                                             "models": {"nova-3": {"price": 0.004}}}},
        "llm_pricing": {"openai": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}},
        "llm_default_model": {"openai": "gpt-4o-mini"},
        "stt_default_model": {"deepgram": "nova-3"},
    })
    cfg = load_config(path, env={})
    assert cfg.pricing == {
        "twilio": {"price": 0.014},
        "deepgram": {"unit": "minute", "price": 0.005, "models": {"nova-3": {"price": 0.004}}},
    }
    assert cfg.llm_pricing == {"openai": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}}
    assert cfg.llm_default_model == {"openai": "gpt-4o-mini"}
    assert cfg.stt_default_model == {"deepgram": "nova-3"}


def test_pricing_errors(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "pricing": {"twilio": {"price": -1, "unit": "second", "prcie": 1},
                    "x": {"price": float("nan")}, "y": 3},
        "llm_pricing": {"openai": {"m": {"input": 1}}},
        "tts_default_model": {"rime": 7},
    })
    assert errors_of(path) == [
        "pricing.twilio.prcie: unknown key (did you mean price?)",
        "pricing.twilio.price: expected a finite, non-negative price, got -1",
        "pricing.twilio.unit: expected one of minute | 1k_chars | token, got 'second'",
        "pricing.x.price: expected a finite, non-negative price, got nan",
        "pricing.y: expected a mapping, got 3",
        "llm_pricing.openai.m.output: missing (USD per 1M tokens)",
        "tts_default_model.rime: expected a string, got 7",
    ]


# -- printing -----------------------------------------------------------------------------------------
def test_format_effective_reads_back_to_the_same_config(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "receivers": {"otlp": {"grpc": {"endpoint": None}, "max_request_bytes": "512KiB"}},
        "store": {"log_dir": str(tmp_path / "logs"), "redact_phone": "hash_only", "fsync": True},
        "rollup": {"idle_timeout": "2m", "final_grace": "300ms", "pending_timeout": 1.25},
        "pii": {"allow_keys": ["app.*"], "redact_ip": True},
        "pricing": {"twilio": {"price": 0.014, "round_up": True}},
        "forward": [{"name": "j", "endpoint": "http://jaeger:4317", "timeout": "1500ms"}],
    })
    cfg = load_config(path, env={})
    again = load_config(write(tmp_path, format_effective(cfg), "effective.yaml"), env={})
    assert again == cfg


def test_check_config_main_prints_effective_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for var in list(os.environ):
        if var.startswith(("OTEL_PATTER_", "PATTER_")):
            monkeypatch.delenv(var)
    path = write(tmp_path, {"log_level": "warning", "store": {"log_dir": str(tmp_path)}})
    assert check_config_main(path) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["log_level"] == "warning"
    assert yaml.safe_load(out)["store"]["log_dir"] == str(tmp_path)
    assert err == ""


def test_check_config_main_reports_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    for var in list(os.environ):
        if var.startswith(("OTEL_PATTER_", "PATTER_")):
            monkeypatch.delenv(var)
    path = write(tmp_path, {"store": {"retention_days": "x"}, "rollup": {"idel_timeout": "1s"}})
    assert check_config_main(path) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "error: store.retention_days: expected an integer, got 'x'",
        "error: rollup.idel_timeout: unknown key (did you mean idle_timeout?)",
    ]


# -- property: never anything but Config or ConfigError -----------------------------------------------
_KEYS = ["receivers", "otlp", "grpc", "http", "endpoint", "admin", "store", "log_dir", "redact_phone",
         "retention_days", "fsync", "rollup", "idle_timeout", "final_grace", "pending_timeout", "pii",
         "allow_keys", "deny_keys", "redact_ip", "phone_mode", "pricing", "llm_pricing", "llm_default_model",
         "stt_default_model", "tts_default_model", "forward", "log_level", "max_request_bytes", "name",
         "protocol", "headers", "compression", "timeout", "insecure", "price", "unit", "models", "round_up",
         "input", "output", "twilio", "openai"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["30s", "500ms", "16MiB", "localhost:4317", "[::1]:1", "http://h:4317", "${env:X}",
                     "${env:UNSET}", "${env:X:-1}", "${env:", "auto", "full", "mask", "gzip", "-1", "1e999"]),
)
_key = st.one_of(st.sampled_from(_KEYS), st.text(max_size=8), st.integers())
_tree = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(_key, kids, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(_key, _tree, max_size=6),
       env=st.dictionaries(st.sampled_from(["X", "PATTER_LOG_RETENTION_DAYS", "PATTER_LOG_REDACT_PHONE",
                                            "OTEL_PATTER_LOG_DIR", "OTEL_PATTER_LOG_LEVEL",
                                            "OTEL_PATTER_FORWARD_ENDPOINT"]),
                           st.text(max_size=12), max_size=3),
       overrides=st.dictionaries(st.sampled_from(["store.log_dir", "admin.endpoint", "log_level",
                                                  "receivers.otlp.grpc.endpoint", "rollup.x", "forward"]),
                                 _scalars, max_size=2))
def test_load_config_returns_config_or_raises_config_error(data: dict[Any, Any], env: dict[str, str],
                                                           overrides: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.yaml")
        with open(path, "w") as f:
            f.write(yaml.safe_dump(data))
        try:
            cfg = load_config(path, env=env, overrides=overrides)
        except ConfigError as e:
            assert str(e)
        else:
            assert isinstance(cfg, Config)
            format_effective(cfg)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_load_config_on_arbitrary_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        with contextlib.suppress(ConfigError):
            assert isinstance(load_config(path, env={}), Config)
