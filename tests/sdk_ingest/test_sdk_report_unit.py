"""sdk_ingest without the SDK: 0.7.0-shaped reports into the pipeline in-process, and into a real server.

What is kept of a report (numbers, names, codes; redacted caller/callee; no text), how a call_start
opens a call and a call_end ends it (after `final_grace`, no idle wait), the SDK's model pricing
LLM usage that names none, repeats, reopening, the mismatch count, the telephony cause, the
listener's bounds and its start-up failure, the config, `budget_usd` and the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from getpatter import pricing as sdk

from otel_patter.cli import main as cli
from otel_patter.client import CallResult
from otel_patter.config import ConfigError, PiiConfig, format_effective, load_config
from otel_patter.processors.pii import PiiProcessor
from otel_patter.processors.sdk_report import ReportSanitizer, redact_phone
from tests.inproc import InProcess
from tests.otlp import post, span
from tests.sdk_ingest import reports as R
from tests.server import ServerProc, free_port

CALL = R.CALL
UUT = {"service.name": "patter", "service.instance.id": "uut-instance"}


def cost_span(attrs: dict[str, Any], name: str = "patter.billable", **kw: Any) -> object:
    return span(name, {**attrs, "patter.call_id": CALL, "patter.side": "uut"}, **kw)


def llm_span(tin: int, tout: int, provider: str = "openai") -> object:
    return cost_span({"patter.llm.iteration": 0, "patter.call.id": CALL, "patter.cost.llm_input_tokens": tin,
                      "patter.cost.llm_output_tokens": tout, "patter.llm.provider": provider}, name="getpatter.llm")


TELEPHONY = {"patter.cost.telephony_minutes": 0.2468, "patter.telephony": "twilio", "patter.direction": "inbound"}


def ingest(p: InProcess, payload: dict[str, Any]) -> str:
    return p.pipeline.consume_sdk_report(payload)


def settle(p: InProcess, seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    p.pipeline.rollup.tick()
    env = p.pipeline.rollup.get(CALL)
    assert env is not None
    return env


def wal(p: InProcess) -> list[dict[str, Any]]:
    path = next(Path(p.pipeline.cfg.store.log_dir).glob("calls/*/*/*/*/spans.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def p(tmp_path: Path) -> InProcess:
    return InProcess(tmp_path / "log", **{"rollup.final_grace": "200ms", "rollup.idle_timeout": "30s"})


# -- what is kept ------------------------------------------------------------------------------------------
def test_a_call_end_report_keeps_numbers_names_and_codes_only() -> None:
    pii = PiiProcessor(PiiConfig())
    out = ReportSanitizer(pii, "mask").sanitize(R.call_end(error_code="STT_TIMEOUT"), 1_795_000_000.0)
    assert out is not None
    assert set(out) == {"kind", "call_id", "received_at", "caller", "callee", "direction", "ended_at",
                        "duration_seconds", "turns", "provider_mode", "providers", "models", "cost", "latency",
                        "error_code"}
    assert (out["kind"], out["caller"], out["callee"], out["turns"]) == ("call_end", "***4567", "***4321", 4)
    assert out["cost"] == R.COST
    assert out["models"] == {"stt": "nova-3", "llm": "gpt-4o-mini"}
    assert out["error_code"] == "stt_timeout"
    assert out["latency"] == {"p50_ms": 94.5, "p95_ms": 685.7, "p99_ms": 758.6, "avg_ms": 94.5}
    assert R.leaks(json.dumps(out)) == []
    # transcript, conversation_history, recording_path; metrics' call_id, latency_p90, preemptive_*, context_tokens
    assert pii.counts["key_dropped"] == 3 + 5
    assert pii.counts["phone"] == 2


@pytest.mark.parametrize("field, value", [
    ("llm_model", "+1 415 555 0173"), ("llm_model", "gpt-4o for someone.secret@example.org"),
    ("llm_model", "4155550173"), ("stt_provider", "deepgram call 415 555 0173"), ("stt_provider", "Deep Gram"),
    ("error_code", "timeout: call +14155550173"), ("provider_mode", "x" * 80),
])
def test_a_name_that_is_not_a_name_is_dropped(field: str, value: str) -> None:
    out = ReportSanitizer(PiiProcessor(PiiConfig()), "mask").sanitize(R.call_end(**{field: value}), 1.8e9)
    assert out is not None
    assert value not in json.dumps(out)
    assert "4155550173" not in json.dumps(out) and "0173" not in json.dumps(out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.01, True, "0.01", None, 2e6])
def test_a_cost_that_is_not_a_finite_amount_is_dropped(bad: Any) -> None:
    cost = dict(R.COST, stt=bad)
    out = ReportSanitizer(PiiProcessor(PiiConfig()), "mask").sanitize(R.call_end(cost=cost), 1.8e9)
    assert out is not None and "stt" not in out["cost"] and out["cost"]["tts"] == R.COST["tts"]


@pytest.mark.parametrize("payload", [[], "x", {"caller": R.CALLER}, {"call_id": ""}, {"call_id": "a\nb"},
                                     {"call_id": 42}, {"call_id": "x" * 300}])
def test_a_payload_without_a_valid_call_id_is_no_report(payload: Any) -> None:
    assert ReportSanitizer(PiiProcessor(PiiConfig()), "mask").sanitize(payload, 1.8e9) is None


def test_the_pii_key_policy_can_drop_more_fields() -> None:
    pii = PiiProcessor(PiiConfig(deny_keys=("patter.sdk.caller", "patter.sdk.cost.*")))
    out = ReportSanitizer(pii, "mask").sanitize(R.call_end(), 1.8e9)
    assert out is not None and "caller" not in out and "cost" not in out and out["callee"] == "***4321"


def test_redact_phone_modes() -> None:
    key = b"k" * 32
    assert redact_phone("+1 (555) 123-4567", "mask", None) == "***4567"
    assert redact_phone("123", "mask", None) == "***"
    assert redact_phone("  ", "mask", None) == ""
    hashed = redact_phone("+1 (555) 123-4567", "hash_only", key)
    assert hashed == "hmac:" + hmac.new(key, b"15551234567", hashlib.sha256).hexdigest()[:16]
    assert hashed == redact_phone("+15551234567", "hash_only", key)  # one number, one hash
    # the same form the PII processor gives a phone number inside telemetry
    assert PiiProcessor(PiiConfig(phone_mode="hash_only"), hash_key=key).scrub_text("+15551234567") == hashed
    assert redact_phone("+15551234567", "full", None) == "+15551234567"
    with pytest.raises(ValueError, match="HMAC key"):
        redact_phone("+15551234567", "hash_only", None)


def test_caller_and_callee_follow_store_redact_phone(tmp_path: Path) -> None:
    for mode, expect in (("mask", "***4567"), ("hash_only", "hmac:"), ("full", R.CALLER)):
        p = InProcess(tmp_path / mode, **{"store.redact_phone": mode})
        assert ingest(p, R.call_start()) == "accepted"
        env = p.pipeline.rollup.get(CALL)
        assert env is not None and env["caller"].startswith(expect), mode
        if mode == "hash_only":
            key = bytes.fromhex((tmp_path / mode / "state" / "hash.key").read_text())
            assert env["caller"] == redact_phone(R.CALLER, "hash_only", key)
        on_disk = "".join(f.read_text() for f in (tmp_path / mode).rglob("*.jsonl"))
        assert (R.CALLER[2:] in on_disk) is (mode == "full")


# -- opening, ending, reopening ------------------------------------------------------------------------------
def test_call_start_opens_the_call_and_call_end_finalizes_it_after_the_grace(p: InProcess) -> None:
    assert ingest(p, R.call_start()) == "accepted"
    p.send([llm_span(1000, 50), cost_span({"patter.cost.stt_seconds": 3.0, "patter.stt.provider": "deepgram"})],
           UUT)
    env = settle(p, 0.3)
    assert (env["status"], env["direction"], env["caller"]) == ("in_progress", "inbound", "***4567")
    assert env["reconciliation"]["reports"] == ["call_start"] and env["reconciliation"]["sdk"] is None
    assert ingest(p, R.call_end()) == "accepted"
    env = p.pipeline.rollup.get(CALL)
    assert env is not None and env["status"] == "in_progress"  # final only after final_grace
    env = settle(p, 0.3)  # far less than idle_timeout (30 s)
    assert (env["status"], env["final_reason"]) == ("completed", "sdk_call_end")
    assert [x["type"] for x in wal(p)].count("sdk_report") == 2


def test_a_call_known_only_from_sdk_reports_is_an_envelope_too(p: InProcess) -> None:
    ingest(p, R.call_start())
    ingest(p, R.call_end())
    env = settle(p, 0.3)
    assert (env["status"], env["final_reason"], env["turns"], env["sides"]) == ("completed", "sdk_call_end", 4, {})
    assert env["agent"] == {"stt": "deepgram", "llm": "openai", "tts": "elevenlabs", "model": "gpt-4o-mini"}
    diff = env["reconciliation"]["difference"]
    assert diff["total"] == {"usd": -0.02289, "pct": -100.0, "causes": ["no_usage_on_spans"], "unexplained": False}


def test_the_sdk_model_prices_llm_usage_that_names_none_before_llm_default_model(tmp_path: Path) -> None:
    p = InProcess(tmp_path / "log", **{"llm_default_model": {"openai": "gpt-4o"}})
    p.send([llm_span(1000, 50)], UUT)
    without = p.pipeline.rollup.get(CALL)
    assert without is not None and without["usage"]["llm"][0]["model"] == "gpt-4o"  # llm_default_model
    ingest(p, R.call_end(llm_model="gpt-4o-mini"))
    env = p.final(CALL)
    line = env["usage"]["llm"][0]
    assert (line["model"], line["usd"]) == ("gpt-4o-mini", round(sdk.calculate_llm_cost("openai", "gpt-4o-mini",
                                                                                        1000, 50), 6))
    assert "SDK's call report" in next(w["text"] for w in env["warnings"] if w["code"] == "model_defaulted")


def test_repeated_reports_are_ignored_and_the_sdk_cost_counted_once(p: InProcess) -> None:
    end = R.call_end()
    assert [ingest(p, x) for x in (R.call_start(), end, end, R.call_start())] == [
        "accepted", "accepted", "duplicate", "duplicate"]
    assert [x["type"] for x in wal(p)] == ["sdk_report", "sdk_report"]
    m = p.pipeline.metrics
    assert m.sdk_cost.labels("tts")._value.get() == R.COST["tts"]
    assert m.sdk_reports.labels("call_end", "duplicate")._value.get() == 1


def test_a_call_end_after_the_call_was_final_reopens_it(p: InProcess) -> None:
    p.send([cost_span(TELEPHONY)], UUT)
    env = settle(p, 0.3)
    assert (env["final_reason"], env["revision"], env["reconciliation"]) == ("hangup_usage", 1, None)
    ingest(p, R.call_end())
    env = settle(p, 0.3)
    assert (env["final_reason"], env["revision"], env["status"]) == ("sdk_call_end", 2, "completed")
    assert env["reconciliation"]["difference"]["telephony"]["usd"] == 0.0


def test_the_outbound_direction_comes_from_the_report(p: InProcess) -> None:
    ingest(p, R.initiated())
    p.send([cost_span(TELEPHONY)], UUT)  # spans say inbound on every call (hard-coded in 0.7.0)
    env = p.pipeline.rollup.get(CALL)
    assert env is not None and (env["direction"], env["caller"]) == ("outbound", "***4321")
    assert env["reconciliation"]["reports"] == ["initiated"]


# -- reconciliation -----------------------------------------------------------------------------------------
def test_a_carrier_price_is_named_as_the_cause_of_a_telephony_difference(p: InProcess) -> None:
    p.send([cost_span(TELEPHONY)], UUT)
    ingest(p, R.call_end(cost=dict(R.COST, telephony=0.013)))  # Twilio's actual price, not the 0.0085 rate
    diff = p.final(CALL)["reconciliation"]["difference"]["telephony"]
    assert diff == {"usd": -0.0045, "pct": round(-0.0045 / 0.013 * 100, 2), "causes": ["telephony_carrier_price"],
                    "unexplained": False}


def test_mismatch_is_counted_once_per_call_beyond_the_tolerance(tmp_path: Path) -> None:
    p = InProcess(tmp_path / "log", **{"sdk_ingest.tolerance_usd": 0.0001})
    p.send([cost_span(TELEPHONY), llm_span(1000, 50)], UUT)
    ingest(p, R.call_end())
    env = p.final(CALL)
    assert env["reconciliation"]["mismatch"] is True
    m = p.pipeline.metrics.reconcile_mismatch
    assert m._value.get() == 1
    p.send([llm_span(10, 5)], UUT)  # reopens, and final again: still one call
    p.final(CALL)
    assert m._value.get() == 1


def test_within_the_default_tolerance_is_no_mismatch(p: InProcess) -> None:
    p.send([cost_span(TELEPHONY)], UUT)
    cost = dict(R.COST, stt=0.0, tts=0.0, llm=0.0005, total=0.009)
    ingest(p, R.call_end(cost=cost))
    rec = p.final(CALL)["reconciliation"]
    assert (rec["tolerance_usd"], rec["mismatch"]) == (0.001, False)
    assert rec["difference"]["llm"] == {"usd": -0.0005, "pct": -100.0, "causes": ["no_usage_on_spans"],
                                        "unexplained": False}
    assert p.pipeline.metrics.reconcile_mismatch._value.get() == 0


def test_budget_usd_sources() -> None:
    env = CallResult({"sides": {"uut": {"cost": {"total": 0.02}}}, "reconciliation": {"sdk": {"total": 0.025}}})
    assert [env.budget_usd("uut", s) for s in ("spans", "sdk", "max")] == [
        (0.02, "spans"), (0.025, "sdk"), (0.025, "sdk")]
    bare = CallResult({"sides": {"uut": {"cost": {"total": 0.02}}}, "reconciliation": None})
    assert [bare.budget_usd("uut", s) for s in ("spans", "sdk", "max")] == [
        (0.02, "spans"), (None, "sdk"), (0.02, "spans")]
    with pytest.raises(ValueError):
        env.budget_usd("uut", "both")


# -- the listener ------------------------------------------------------------------------------------------
@pytest.fixture
def ingest_server(tmp_path: Path) -> Any:
    port = free_port()
    s = ServerProc(tmp_path, {"sdk_ingest": {"endpoint": f"127.0.0.1:{port}", "max_body_bytes": "1MiB"},
                              "rollup": {"final_grace": "300ms"}}).start()
    s.ingest_url = f"http://127.0.0.1:{port}/api/dashboard/ingest"  # type: ignore[attr-defined]
    yield s
    s.stop()


def test_the_listener_answers_at_once_and_bounds_what_it_reads(ingest_server: Any) -> None:
    url = ingest_server.ingest_url
    big = R.call_end(turns=400)  # a long call's report: ~0.4 MiB of turns and texts
    body = json.dumps(big).encode()
    assert 300_000 < len(body) < 1024 * 1024
    t0 = time.perf_counter()
    code, answer, _ = post(url, body, "application/json")
    assert (code, json.loads(answer)) == (200, {})
    assert time.perf_counter() - t0 < 0.5  # the SDK gives up after 1 s
    assert post(url, b"x" * (1024 * 1024 + 1), "application/json")[0] == 413
    assert post(url, b"{not json", "application/json")[0] == 400
    assert post(url, b"[" * 100_000, "application/json")[0] == 400
    assert post(url, b"[]", "application/json")[0] == 400
    assert post(url, json.dumps({"no": "call id"}).encode(), "application/json")[0] == 200  # ignored, as the SDK's
    env = ingest_server.wait_final(CALL, 10)
    assert (env["final_reason"], env["turns"], env["caller"]) == ("sdk_call_end", 400, "***4567")
    code, metrics = ingest_server.get("/metrics")
    text = metrics.decode()
    for line in ('otel_patter_sdk_reports_total{kind="unknown",outcome="too_large"} 1.0',
                 'otel_patter_sdk_reports_total{kind="unknown",outcome="malformed"} 3.0',
                 'otel_patter_sdk_reports_total{kind="call_start",outcome="ignored"} 1.0',
                 'otel_patter_sdk_reports_total{kind="call_end",outcome="accepted"} 1.0'):
        assert line in text
    everything = text + json.dumps(ingest_server.get("/api/v1/calls")[1]) + ingest_server.logs() + "".join(
        f.read_text(errors="replace") for f in ingest_server.log_dir.rglob("*") if f.is_file())
    assert R.leaks(everything) == []


def test_the_reports_survive_kill9_and_the_call_end_still_ends_the_call(ingest_server: Any) -> None:
    url = ingest_server.ingest_url
    assert post(url, json.dumps(R.call_start()).encode(), "application/json")[0] == 200
    ingest_server.kill9()
    ingest_server.start()
    got = ingest_server.get(f"/api/v1/calls/{CALL}")[1]
    assert (got["status"], got["caller"], got["reconciliation"]["reports"]) == ("in_progress", "***4567",
                                                                                  ["call_start"])
    assert post(url, json.dumps(R.call_start()).encode(), "application/json")[0] == 200  # a repeat: ignored
    assert post(url, json.dumps(R.call_end()).encode(), "application/json")[0] == 200
    env = ingest_server.wait_final(CALL, 10)
    assert (env["final_reason"], env["reconciliation"]["reports"]) == ("sdk_call_end", ["call_start", "call_end"])
    lines = (ingest_server.envelope_files()[0].parent / "spans.jsonl").read_text().splitlines()
    assert [json.loads(x)["data"]["kind"] for x in lines] == ["call_start", "call_end"]


def test_a_taken_port_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cfg = {"receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                                      "http": {"endpoint": f"127.0.0.1:{free_port()}"}}},
               "admin": {"endpoint": f"127.0.0.1:{free_port()}"}, "store": {"log_dir": str(tmp_path / "log")},
               "sdk_ingest": {"endpoint": f"127.0.0.1:{port}"}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([sys.executable, "-m", "otel_patter.cli", "serve", "--config", str(tmp_path / "c.yaml")],
                              capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"sdk_ingest: cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr
    assert "Patter.serve" in proc.stderr


# -- config and CLI ----------------------------------------------------------------------------------------
def test_sdk_ingest_is_off_by_default_and_validated() -> None:
    cfg = load_config(None, env={})
    assert (cfg.sdk_ingest.endpoint, cfg.sdk_ingest.tolerance_usd) == (None, 0.001)
    on = load_config(None, env={}, overrides={"sdk_ingest.endpoint": "127.0.0.1:8000"})
    assert on.sdk_ingest.endpoint == "127.0.0.1:8000" and on.notes == ()
    for bad, message in (({"sdk_ingest.endpoint": "0.0.0.0:8000"}, "must be a loopback address"),
                         ({"sdk_ingest.endpoint": "127.0.0.1"}, "expected host:port"),
                         ({"sdk_ingest.tolerance_usd": -1}, "non-negative"),
                         ({"sdk_ingest.max_body_bytes": 0}, "more than 0"),
                         ({"sdk_ingest.port": 8000}, "unknown key")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, env={}, overrides=bad)
    other_port = load_config(None, env={}, overrides={"sdk_ingest.endpoint": "localhost:8001"})
    assert any("127.0.0.1:8000 only" in n for n in other_port.notes)


def test_serve_listens_for_sdk_reports_only_when_sdk_ingest_names_an_endpoint(tmp_path: Path) -> None:
    from otel_patter.receivers.sdk_ingest import SdkIngestReceiver
    from otel_patter.service import Service

    off = Service(load_config(None, env={}, overrides={"store.log_dir": str(tmp_path / "off")}))
    assert off.sdk_ingest is None
    assert not any(isinstance(x, SdkIngestReceiver) for x in off.listeners)
    on = Service(load_config(None, env={}, overrides={"store.log_dir": str(tmp_path / "on"),
                                                      "sdk_ingest.endpoint": "127.0.0.1:8000"}))
    assert on.sdk_ingest is not None and on.sdk_ingest in on.listeners
    assert (on.sdk_ingest.host, on.sdk_ingest.requested_port) == ("127.0.0.1", 8000)


def test_the_effective_config_reads_back(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, overrides={"sdk_ingest.endpoint": "127.0.0.1:8000",
                                               "sdk_ingest.tolerance_usd": 0.01})
    path = tmp_path / "effective.yaml"
    path.write_text(format_effective(cfg))
    assert load_config(str(path), env={}).sdk_ingest == cfg.sdk_ingest


def test_calls_show_and_check_read_both_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = InProcess(tmp_path / "log")
    p.send([cost_span(TELEPHONY)], UUT)
    ingest(p, R.call_end())
    env = p.final(CALL)
    p.pipeline.rollup.flush_envelopes(force=True)
    log_dir = ["--log-dir", str(tmp_path / "log")]
    assert cli(["calls", "show", CALL, *log_dir]) == 0
    out = capsys.readouterr().out
    assert "reconcile" in out and "telephony" in out and f"{R.COST['total']:.6f}" in out and "no_usage_on_spans" in out
    assert env["cost"]["total"] == 0.0085
    assert cli(["calls", "check", CALL, "--max-usd", "0.01", "--source", "spans", *log_dir]) == 0
    for source in ("sdk", "max"):
        assert cli(["calls", "check", CALL, "--max-usd", "0.01", "--source", source, *log_dir]) == 1
        assert "over the budget" in capsys.readouterr().out
        assert cli(["calls", "check", CALL, "--max-usd", "0.03", "--source", source, *log_dir]) == 0
        assert "$0.022890" in capsys.readouterr().out
