"""Config keys of the outputs: forward queue bound and retry schedule, metrics tenant label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_patter.config import ConfigError, format_effective, load_config


def write(tmp_path: Path, data: Any, name: str = "c.yaml") -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def errors_of(tmp_path: Path, data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env={})
    return [f"{p}: {m}" for p, m in info.value.errors]


def test_forward_queue_and_retry_defaults() -> None:
    (t,) = load_config(None, env={"OTEL_PATTER_FORWARD_ENDPOINT": "http://jaeger:4317"}).forward
    assert (t.queue_max_bytes, t.retry_initial_interval, t.retry_max_interval) == (256 * 1024 * 1024, 1.0, 30.0)


def test_forward_queue_and_retry_are_configurable(tmp_path: Path) -> None:
    (t,) = load_config(write(tmp_path, {"forward": [{
        "name": "j", "endpoint": "http://jaeger:4317", "queue_max_bytes": "2GiB",
        "retry_initial_interval": "250ms", "retry_max_interval": "1m"}]}), env={}).forward
    assert (t.queue_max_bytes, t.retry_initial_interval, t.retry_max_interval) == (2 * 1024**3, 0.25, 60.0)


def test_forward_queue_and_retry_errors(tmp_path: Path) -> None:
    assert errors_of(tmp_path, {"forward": [
        {"name": "a", "endpoint": "http://a:4317", "queue_max_bytes": "1KiB"},
        {"name": "b", "endpoint": "http://b:4317", "queue_max_bytes": "lots"},
        {"name": "c", "endpoint": "http://c:4317", "retry_initial_interval": "10s", "retry_max_interval": "1s"},
        {"name": "d", "endpoint": "http://d:4317", "retry_initial_interval": "0s"},
    ]}) == [
        "forward[0].queue_max_bytes: must be at least 65536 bytes (64KiB), got '1KiB'",
        "forward[1].queue_max_bytes: expected a size in bytes such as 16MiB, got 'lots'",
        "forward[2].retry_max_interval: must not be shorter than retry_initial_interval",
        "forward[3].retry_initial_interval: must be longer than 0",
    ]


def test_metrics_tenant_defaults_and_overrides(tmp_path: Path) -> None:
    d = load_config(None, env={}).metrics
    assert (d.tenant_attribute, d.max_tenants) == ("tenant.id", 100)
    m = load_config(write(tmp_path, {"metrics": {"tenant_attribute": "deployment.environment", "max_tenants": 5}}),
                    env={}).metrics
    assert (m.tenant_attribute, m.max_tenants) == ("deployment.environment", 5)


def test_metrics_errors(tmp_path: Path) -> None:
    assert errors_of(tmp_path, {"metrics": {"tenant_attribute": "", "max_tenants": -1, "tenants": 3}}) == [
        "metrics.tenants: unknown key (did you mean max_tenants?)",
        "metrics.max_tenants: must be 0-100000, got -1",
        "metrics.tenant_attribute: must not be empty",
    ]


def test_the_effective_config_reads_back_with_the_output_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {
        "store": {"log_dir": str(tmp_path / "logs")},
        "forward": [{"name": "j", "endpoint": "http://jaeger:4317", "queue_max_bytes": "1MiB",
                     "retry_initial_interval": "200ms", "retry_max_interval": "5s"}],
        "metrics": {"tenant_attribute": "org.id", "max_tenants": 7},
    }), env={})
    text = format_effective(cfg)
    assert "queue_max_bytes: 1048576\n" in text and "retry_initial_interval: 200ms\n" in text
    assert load_config(write(tmp_path, text, "effective.yaml"), env={}) == cfg
