"""Disk faults: a full or read-only disk refuses requests (UNAVAILABLE / 503 + Retry-After), `/readyz` says
why, nothing acknowledged is lost, and service resumes by itself when space returns.

Faults come from the store's write seam (`FileOps`) through the TEST-ONLY hook `otel_patter/store/faults.py`
(`OTEL_PATTER_FAULTS`, and the control file `<log_dir>/.otel-patter-faults` that flips the disk at run time).
We run as root here, so chmod or a read-only bind mount would not stop our own writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from otel_patter import simulate
from otel_patter.store.faults import CONTROL_FILE, parse_rules
from tests.otlp import RECORDED_CALL_ID, post, recorded_call
from tests.reliability.conftest import LONG
from tests.reliability.harness import finalize_all, first_difference, tracebacks, wal_span_keys
from tests.reliability.loadgen import ResendingExporter
from tests.server import ServerProc

CONFIG = {"rollup": {"idle_timeout": "1h", "final_grace": "1h", "pending_timeout": "1h"}}
START_NS = (time.time_ns() // 10**9 - 2 * 3600) * 10**9


def _send_calls(server: ServerProc, seed: int, protocol: str = "http", driver: bool = True) -> list[str]:
    plans = simulate.build_calls(3, seed=seed, start_ns=START_NS + seed * 10**11, with_driver=driver)
    endpoint = server.grpc_endpoint if protocol == "grpc" else server.http_endpoint
    deadline = time.monotonic() + 60
    simulate.emit(plans, endpoint=endpoint, protocol=protocol, exporter=lambda: ResendingExporter(
        lambda: simulate.make_exporter(protocol, endpoint, timeout=2.0), deadline))
    return list(dict.fromkeys(p.call_id for p in plans))


def _grpc_export(server: ServerProc, req: Any) -> tuple[grpc.StatusCode, float | None]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        try:
            stub.Export(req, timeout=10)
        except grpc.RpcError as e:
            delay = None
            for k, v in e.trailing_metadata() or ():
                if k == "google.rpc.retryinfo-bin":
                    info = error_details_pb2.RetryInfo.FromString(v)
                    delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return e.code(), delay
    return grpc.StatusCode.OK, None


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def _store_error(text: str) -> str:
    return {"enospc": "disk full", "erofs": "read-only file system", "edquot": "disk quota exceeded"}[
        text.split(":")[0]]


RULES = ["enospc:wal:partial", "erofs:all"] + (["enospc:wal", "edquot:index"] if LONG else [])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], set[Any]]]:
    """The final envelopes (and span keys) of a server that got the same requests and never saw a fault."""
    ref = ServerProc(tmp_path_factory.mktemp("ref"), CONFIG).start()
    try:
        calls = _send_calls(ref, 1) + _send_calls(ref, 2, "grpc") + [RECORDED_CALL_ID]
        for req in recorded_call():
            assert post(ref.http_endpoint + "/v1/traces", req.SerializeToString())[0] == 200
        keys, _ = wal_span_keys(ref.log_dir)
        yield finalize_all(ref, calls), set(keys)
    finally:
        ref.stop()


@pytest.mark.parametrize("rule", RULES)
def test_a_failing_disk_refuses_says_why_resumes_and_loses_nothing_acked(
        tmp_path: Path, rule: str, reference: tuple[dict[str, Any], set[Any]]) -> None:
    s = ServerProc(tmp_path, CONFIG, env={"OTEL_PATTER_FAULTS": "none"}).start()
    control = s.log_dir / CONTROL_FILE
    recorded = recorded_call()
    calls = _send_calls(s, 1)  # before the fault

    # the disk fails: both transports refuse with a retryable answer and a delay; /readyz says which check
    control.write_text(rule)
    code, body, headers = post(s.http_endpoint + "/v1/traces", recorded[0].SerializeToString())
    assert code == 503, body
    assert int(headers["Retry-After"]) >= 1
    grpc_code, delay = _grpc_export(s, recorded[0])
    assert grpc_code == grpc.StatusCode.UNAVAILABLE and delay and delay >= 1
    ready, checks = s.get("/readyz")
    assert ready == 503 and checks["checks"]["store"] == f"failing: {_store_error(rule)}", checks

    # space returns with nobody sending: the periodic probe makes us ready again
    control.unlink()
    _wait(lambda: s.get("/readyz")[0] == 200, 10, "/readyz 200 again after the fault cleared")

    # the disk fails again while a real exporter sends: it is refused (and resends) until the disk is back
    refused_before = _refused_store(s)
    control.write_text(rule)
    done: list[str] = []
    sender = threading.Thread(target=lambda: done.extend(_send_calls(s, 2, "grpc")), daemon=True)
    sender.start()
    _wait(lambda: _refused_store(s) >= refused_before + 2, 20,
          "the exporter's requests are refused while the disk fails")
    assert s.get("/readyz")[0] == 503
    control.unlink()
    sender.join(60)
    assert not sender.is_alive() and done, "the exporter's calls were acknowledged once the disk was back"
    calls += done
    for req in recorded:  # the requests refused earlier, sent again
        code, body, _ = post(s.http_endpoint + "/v1/traces", req.SerializeToString())
        assert code == 200, body
    calls.append(RECORDED_CALL_ID)
    assert s.get("/readyz")[0] == 200

    # nothing acknowledged is lost, even across a kill -9: the envelopes equal a run that never saw a fault
    if LONG or rule.endswith(":partial"):  # and after a kill -9 (recovery reads the WALs those writes tore)
        s.kill9()
        s.start()
    want, ref_keys = reference
    keys, bad = wal_span_keys(s.log_dir)
    assert set(keys) == ref_keys
    assert bad == 0, "a failed append left a torn line in a write-ahead log"
    assert sorted(calls) == sorted(want)
    got = finalize_all(s, calls)
    diffs = {c: first_difference(got[c], want[c]) for c in calls if got[c] != want[c]}
    assert not diffs, diffs
    assert not list(s.log_dir.rglob(".tmp.*")), "a failed atomic write left its temp file behind"
    assert not tracebacks(s.logs())
    assert "TEST-ONLY disk fault injection is on" in s.logs()
    print(f"\n{rule}: {len(keys)} spans kept, 0 lost, {sum(keys.values()) - len(keys)} written twice and "
          f"deduplicated, 0 torn WAL lines")
    s.stop()


def _refused_store(s: ServerProc) -> float:
    _, body = s.get("/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("otel_patter_requests_refused_total") and 'reason="store"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_failed_envelope_write_is_retried_and_the_call_still_finalizes(tmp_path: Path) -> None:
    s = ServerProc(tmp_path, {"rollup": {"idle_timeout": "1h", "final_grace": "200ms"}},
                   env={"OTEL_PATTER_FAULTS": "enospc:envelope"}).start()
    calls = _send_calls(s, 3, driver=False)  # final by its hang-up alone
    cid = calls[0]
    time.sleep(1.0)
    code, env = s.get(f"/api/v1/calls/{cid}")
    assert code == 200 and env["status"] == "in_progress"  # final would need its envelope written
    assert s.get("/readyz")[0] == 503
    assert not s.envelope_files()
    (s.log_dir / CONTROL_FILE).write_text("none")
    final = s.wait_final(cid, timeout=15)
    assert final["status"] != "in_progress"
    assert s.envelope_files()
    _wait(lambda: s.get("/readyz")[0] == 200, 10, "ready again")
    s.stop()


def test_the_fault_rules_are_strict() -> None:
    assert parse_rules("none") == ()
    assert len(parse_rules("enospc:wal, erofs:all:partial")) == 2
    for bad in ("enospc", "enospc:disk", "full:wal", "enospc:wal:half"):
        with pytest.raises(ValueError):
            parse_rules(bad)
