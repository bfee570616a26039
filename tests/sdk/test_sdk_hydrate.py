"""The SDK's own dashboard store (`MetricsStore.hydrate`) reads what otel-patter writes.

getpatter's dashboard rebuilds its call list from `<log_dir>/calls/Y/M/D/<dir>/metadata.json`
(research §4). otel-patter writes its envelope there, in that layout; where the SDK's own
`metadata.json` already sits in the call directory, ours goes to `otel-patter.json` beside
it and the SDK's file is left alone, so the dashboard keeps reading the SDK's record.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from getpatter.dashboard.store import MetricsStore

from tests.otlp import RECORDED_CALL_ID, post, recorded_call
from tests.sdk.conftest import FullCall
from tests.server import ServerProc

DATA = Path(__file__).parent.parent / "data"
RECORDED_DAY = "2026/11/23"


def send(server: ServerProc, call_id: str, salt: bytes = b"") -> dict:
    for req in recorded_call(call_id, id_salt=salt):
        code, body, _ = post(server.http_endpoint + "/v1/traces", req.SerializeToString())
        assert code == 200, body
    return server.wait_final(call_id, timeout=30)


def hydrated(log_dir: Path, expect: int) -> MetricsStore:
    store = MetricsStore()
    assert store.hydrate(str(log_dir)) == expect
    assert store.call_count == expect
    return store


def test_hydrate_reads_the_envelope_of_a_real_sdk_call(getpatter_only_call: FullCall) -> None:
    env = getpatter_only_call.envelope
    store = hydrated(getpatter_only_call.server.log_dir, 1)
    rec = store.get_calls()[0]
    assert (rec["call_id"], rec["status"], rec["direction"]) == (env["call_id"], "completed", "inbound")
    assert rec["metrics"]["cost"] == env["cost"]
    assert rec["metrics"]["cost"]["total"] == env["cost"]["total"]
    assert rec["metrics"]["duration_seconds"] == env["duration_ms"] / 1000
    assert rec["metrics"]["telephony_provider"] == "twilio"
    agg = store.get_aggregates()
    assert agg["total_calls"] == 1
    assert agg["total_cost"] == env["cost"]["total"]
    assert agg["cost_breakdown"] == {k: env["cost"][k] for k in ("stt", "tts", "llm", "telephony")}
    assert agg["avg_latency_ms"] == round(env["latency"]["p95_ms"], 1)  # hydrate's fallback: p95 as the average


def test_hydrate_sums_several_envelopes(server: ServerProc) -> None:
    envs = [send(server, f"CAhydrate{i:04d}", salt=bytes([i])) for i in range(3)]
    store = hydrated(server.log_dir, 3)
    by_id = {r["call_id"]: r for r in store.get_calls(limit=10)}
    assert sorted(by_id) == [e["call_id"] for e in envs]
    for e in envs:
        assert by_id[e["call_id"]]["metrics"]["cost"]["total"] == e["cost"]["total"]
    agg = store.get_aggregates()
    assert agg["total_calls"] == 3
    assert agg["total_cost"] == round(sum(e["cost"]["total"] for e in envs), 6)
    for k in ("stt", "tts", "llm", "telephony"):
        assert agg["cost_breakdown"][k] == round(sum(e["cost"][k] for e in envs), 6)
    assert agg["avg_duration"] == round(sum(e["duration_ms"] for e in envs) / 1000 / 3, 2)


def test_an_sdk_metadata_json_already_there_is_never_overwritten(server: ServerProc) -> None:
    # the SDK wrote its call log into the same log dir first (it writes metadata.json at call start)
    call_dir = server.log_dir / "calls" / RECORDED_DAY / RECORDED_CALL_ID
    call_dir.mkdir(parents=True)
    shutil.copyfile(DATA / "recorded_call_sdk_metadata.json", call_dir / "metadata.json")
    sdk_bytes = (call_dir / "metadata.json").read_bytes()
    sdk_meta = json.loads(sdk_bytes)

    env = send(server, RECORDED_CALL_ID)

    assert (call_dir / "metadata.json").read_bytes() == sdk_bytes
    assert json.loads((call_dir / "otel-patter.json").read_text()) == env
    assert sorted(p.name for p in call_dir.iterdir()) == ["metadata.json", "otel-patter.json", "spans.jsonl"]
    store = hydrated(server.log_dir, 1)  # the dashboard reads the SDK's record, not a second copy of the call
    rec = store.get_calls()[0]
    assert rec["call_id"] == RECORDED_CALL_ID
    assert rec["metrics"]["cost"] == sdk_meta["cost"]
    assert store.get_aggregates()["total_cost"] == sdk_meta["cost"]["total"]


def test_hydrate_of_a_log_dir_shared_with_a_real_sdk_call_reads_the_sdk_record(fastapi_call: FullCall) -> None:
    store = hydrated(fastapi_call.server.log_dir, 1)
    rec = store.get_calls()[0]
    assert rec["call_id"] == fastapi_call.envelope["call_id"]
    assert rec["metrics"]["cost"] == fastapi_call.sdk_meta["cost"]
    agg = store.get_aggregates()
    assert agg["total_cost"] == fastapi_call.sdk_meta["cost"]["total"]
    assert (fastapi_call.call_dir / "otel-patter.json").exists()
