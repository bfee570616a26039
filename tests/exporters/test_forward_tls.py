"""Forwarding over TLS to a downstream whose certificate a private CA signed (`tls.ca_file`), and with our own
client certificate when it asks for one (mTLS: `tls.cert_file` + `tls.key_file`), over OTLP/gRPC and OTLP/HTTP,
against real servers; the config keys and their errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_patter.config import ClientTlsConfig, ConfigError, ForwardTarget, load_config
from otel_patter.exporters.senders import make_sender
from tests.exporters.downstreams import GrpcDownstream, HttpDownstream, drain, sample
from tests.otlp import recorded_call
from tests.reliability.certs import Pki, make_pki

FAST = {"retry_initial_interval": 0.05, "retry_max_interval": 0.2, "timeout": 5.0}
KINDS = {"grpc": GrpcDownstream, "http": HttpDownstream}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["grpc", "http"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _downstream(protocol: str, pki: Pki, client_ca: bool) -> Iterator[Any]:
    d = KINDS[protocol](pki=pki, client_ca=client_ca).start()
    yield d
    d.stop()


@pytest.fixture
def private_ca_down(protocol: str, pki: Pki) -> Iterator[Any]:
    """A downstream serving a certificate only the test PKI's CA vouches for."""
    yield from _downstream(protocol, pki, client_ca=False)


@pytest.fixture
def mtls_down(protocol: str, pki: Pki) -> Iterator[Any]:
    """A downstream that also wants a client certificate its CA signed."""
    yield from _downstream(protocol, pki, client_ca=True)


def _target(down: Any, protocol: str, tls: ClientTlsConfig | None) -> ForwardTarget:
    return ForwardTarget("private", down.endpoint, protocol, insecure=False, tls=tls, **FAST)


def _body() -> bytes:
    return recorded_call()[0].SerializeToString()


def test_a_downstream_signed_by_a_private_ca_gets_the_spans_with_its_ca_file(
        private_ca_down: Any, protocol: str, pki: Pki, tmp_path: Path) -> None:
    target = _target(private_ca_down, protocol, ClientTlsConfig(ca_file=str(pki.ca)))
    m, left = drain(target, tmp_path, [_body()])
    assert left == 0
    assert [r.raw for r in private_ca_down.received] == [_body()]
    assert sample(m, "otel_patter_forward_sent_total", downstream="private") == 1


def test_without_its_ca_file_the_private_ca_downstream_is_not_trusted_and_the_spans_stay_queued(
        private_ca_down: Any, protocol: str, tmp_path: Path) -> None:
    m, left = drain(_target(private_ca_down, protocol, None), tmp_path, [_body()], timeout=1.5,
                    until=lambda d: False)
    assert left == 1
    assert private_ca_down.received == []
    assert sample(m, "otel_patter_forward_sent_total", downstream="private") == 0
    assert sample(m, "otel_patter_forward_retries_total", downstream="private") >= 1


def test_a_downstream_that_wants_a_client_certificate_gets_the_spans_with_ours(
        mtls_down: Any, protocol: str, pki: Pki, tmp_path: Path) -> None:
    tls = ClientTlsConfig(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    _, left = drain(_target(mtls_down, protocol, tls), tmp_path, [_body()])
    assert left == 0
    assert [r.raw for r in mtls_down.received] == [_body()]


def test_a_downstream_that_wants_a_client_certificate_refuses_us_without_one(
        mtls_down: Any, protocol: str, pki: Pki, tmp_path: Path) -> None:
    m, left = drain(_target(mtls_down, protocol, ClientTlsConfig(ca_file=str(pki.ca))), tmp_path, [_body()],
                    timeout=1.5, until=lambda d: False)
    assert left == 1
    assert mtls_down.received == []
    assert sample(m, "otel_patter_forward_failed_total", downstream="private") >= 1


def test_a_client_certificate_its_ca_does_not_know_is_refused(
        mtls_down: Any, protocol: str, pki: Pki, tmp_path: Path) -> None:
    tls = ClientTlsConfig(ca_file=str(pki.ca), cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key))
    m, left = drain(_target(mtls_down, protocol, tls), tmp_path, [_body()], timeout=1.5, until=lambda d: False)
    assert left == 1
    assert mtls_down.received == []
    assert sample(m, "otel_patter_forward_failed_total", downstream="private") >= 1


def test_a_ca_file_that_is_not_pem_stops_the_start_with_the_targets_name(protocol: str, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    target = ForwardTarget("private", "https://127.0.0.1:4317", protocol, insecure=False,
                           tls=ClientTlsConfig(ca_file=str(bad)))
    with pytest.raises(ConfigError) as info:
        if protocol == "http":
            make_sender(target)
        else:
            import asyncio

            asyncio.run(make_sender(target).start())
    ((path, message),) = info.value.errors
    assert path == "forward[private].tls"
    assert message.startswith("cannot load the PEM files: ")


# -- config -----------------------------------------------------------------------------------
def _load(tmp_path: Path, target: dict[str, Any]) -> ForwardTarget:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"forward": [{"name": "private", **target}]}))
    (t,) = load_config(str(p), env={}).forward
    return t


def _errors(tmp_path: Path, target: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, target)
    return [f"{p}: {m}" for p, m in info.value.errors]


def test_tls_files_are_read_from_the_forward_target(pki: Pki, tmp_path: Path) -> None:
    t = _load(tmp_path, {"endpoint": "https://collector.internal:4317", "tls": {
        "ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}})
    assert (t.insecure, t.tls) == (False, ClientTlsConfig(str(pki.ca), str(pki.client_cert), str(pki.client_key)))


def test_tls_errors_name_the_key(pki: Pki, tmp_path: Path) -> None:
    https = "https://collector.internal:4317"
    assert _errors(tmp_path, {"endpoint": https, "tls": {"cert_file": str(pki.client_cert)}}) == [
        "forward[0].tls.key_file: missing: a client certificate needs both cert_file and key_file"]
    assert _errors(tmp_path, {"endpoint": https, "tls": {}}) == [
        "forward[0].tls: empty: give ca_file, or cert_file and key_file, or both"]
    (missing,) = _errors(tmp_path, {"endpoint": https, "tls": {"ca_file": str(tmp_path / "missing.pem")}})
    assert missing.startswith("forward[0].tls.ca_file: no such file: ")
    assert _errors(tmp_path, {"endpoint": https, "tls": {"ca_fil": str(pki.ca)}})[0].startswith(
        "forward[0].tls.ca_fil: ")
    assert _errors(tmp_path, {"endpoint": "http://collector.internal:4317", "tls": {"ca_file": str(pki.ca)}}) == [
        "forward[0].tls: set, but the target is insecure (plaintext, or TLS unverified): use an https:// endpoint "
        "or insecure: false"]


def test_the_effective_config_shows_the_tls_files(pki: Pki, tmp_path: Path) -> None:
    from otel_patter.config import format_effective

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"forward": [{"name": "private", "endpoint": "https://collector.internal:4317",
                                              "tls": {"ca_file": str(pki.ca)}}]}))
    shown = yaml.safe_load(format_effective(load_config(str(p), env={})))
    assert shown["forward"][0]["tls"] == dataclasses.asdict(ClientTlsConfig(ca_file=str(pki.ca)))
