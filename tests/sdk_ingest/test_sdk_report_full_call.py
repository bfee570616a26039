"""The real SDK sends one otel-patter both its spans and its own call reports (dashboard notify, to
127.0.0.1:8000); the envelope sets the SDK's cost beside the span-derived one.

One fake Twilio call through the SDK's real server route (tests/sdk/emit_call.py with notify on, and
a phone number, an email and a made-up word planted in every final transcript). The envelope's
`reconciliation.sdk` must equal the SDK's own metadata.json cost component by component, its
differences must be the blind spots research §5/§6.7 measured (STT tail, sentence-level TTS
characters, cached LLM tokens at the full rate; telephony equal), and nothing of the report's
text, numbers or email may reach any output.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from getpatter import pricing as sdk

from otel_patter.client import CallResult
from otel_patter.store.envelope_store import parse_iso
from tests.exporters.downstreams import HttpDownstream
from tests.sdk import emit_call
from tests.sdk.conftest import usd6
from tests.sdk_ingest import emit_call_notify as planted
from tests.sdk_ingest import reports as R
from tests.sdk_ingest.conftest import CONFIG, SdkRun, require_port_8000, run_notify_call
from tests.server import ServerProc

P = sdk.DEFAULT_PRICING
TOLERANCE_USD = 0.0005  # below the total's difference (0.000609), above every component's
CALL = emit_call.CALL_SID
COMPONENTS = ("stt", "tts", "llm", "telephony")
SDK_COST = {"stt": 0.00112, "tts": 0.01305, "llm": 0.00022, "telephony": 0.0085, "total": 0.02289}  # research §3.1
SPAN_CHARS, SDK_CHARS = 255, 261  # research §5: trimmed sentences on spans, full reply texts in the SDK


@dataclass
class NotifiedCall:
    server: ServerProc
    run: SdkRun
    envelope: dict[str, Any]
    sdk_meta: dict[str, Any]
    downstream: HttpDownstream  # a backend otel-patter forwards to (OTLP/HTTP)

    @property
    def rec(self) -> dict[str, Any]:
        return self.envelope["reconciliation"]

    def call_dir(self) -> Path:
        found = [p.parent for p in self.server.envelope_files()]
        assert len(found) == 1, found
        return found[0]

    def wal(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.call_dir() / "spans.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifiedCall]:
    require_port_8000()
    root = tmp_path_factory.mktemp("sdk-notify")
    downstream = HttpDownstream().start()
    server = ServerProc(root, {**CONFIG, "sdk_ingest": {"endpoint": "127.0.0.1:8000",
                                                        "tolerance_usd": TOLERANCE_USD},
                               "forward": [{"name": "backend", "endpoint": downstream.endpoint, "protocol": "http"}]})
    server.start()
    try:
        run = run_notify_call(server, root / "sdk-log")  # the SDK's own call log stays apart from ours
        envelope = server.wait_final(CALL, timeout=30)
        yield NotifiedCall(server, run, envelope, run.sdk_meta, downstream)
    finally:
        server.stop()
        downstream.stop()


# -- the SDK's figures, beside ours ----------------------------------------------------------------------
def test_the_sdk_report_arrived_and_its_call_end_finalized_the_call(call: NotifiedCall) -> None:
    env = call.envelope
    assert call.rec["reports"] == ["call_start", "call_end"]
    assert (env["status"], env["final_reason"]) == ("completed", "sdk_call_end")
    assert env["counts"]["spans"] == 37  # and every span of the call (research §5), the same as without notify
    assert env["revision"] == 1


def test_reconciliation_sdk_figures_equal_the_sdk_metadata_component_by_component(call: NotifiedCall) -> None:
    meta_cost = call.sdk_meta["cost"]
    assert call.rec["sdk"] == meta_cost  # every field, llm_cached_savings included
    for component in (*COMPONENTS, "total"):
        assert call.rec["sdk"][component] == meta_cost[component] == SDK_COST[component], component


def test_reconciliation_spans_figures_are_the_envelope_cost(call: NotifiedCall) -> None:
    cost = call.envelope["cost"]
    assert call.rec["spans"] == {c: cost[c] for c in (*COMPONENTS, "total")}
    assert cost["realtime"] == 0.0
    assert call.rec["spans"]["stt"] == usd6(sdk.calculate_stt_cost("deepgram", call.envelope["usage"]["stt"][0]
                                                                   ["seconds"], P))


def test_differences_are_the_blind_spots_the_research_measured(call: NotifiedCall) -> None:
    diff = call.rec["difference"]
    # STT: the audio after the last final transcript is on no span (10.02 s on spans, 14 s billed)
    assert diff["stt"]["causes"] == ["stt_tail_unmetered"]
    assert diff["stt"]["usd"] == usd6(sdk.calculate_stt_cost("deepgram", call.envelope["usage"]["stt"][0]["seconds"],
                                                             P) - SDK_COST["stt"])
    assert diff["stt"]["usd"] == -0.000318
    # TTS: 255 trimmed sentence characters on spans, 261 in the SDK's full replies
    assert call.envelope["usage"]["tts"][0]["chars"] == SPAN_CHARS
    assert diff["tts"]["causes"] == ["tts_chars_from_spans"]
    assert diff["tts"]["usd"] == usd6(sdk.calculate_tts_cost("elevenlabs", SPAN_CHARS - SDK_CHARS, P)) == -0.0003
    # LLM: 128 cached prompt tokens priced at the full input rate (no span says they were cached)
    assert diff["llm"]["causes"] == ["llm_cached_tokens_full_price"]
    assert diff["llm"]["usd"] == 0.00001
    # telephony: the same rounded minute at the same rate; nothing to explain
    assert diff["telephony"] == {"usd": 0.0, "pct": 0.0, "causes": [], "unexplained": False}
    assert diff["total"]["usd"] == round(call.envelope["cost"]["total"] - SDK_COST["total"], 6) == -0.000609
    assert diff["total"]["causes"] == sorted(["stt_tail_unmetered", "tts_chars_from_spans",
                                              "llm_cached_tokens_full_price"])
    assert not any(d["unexplained"] for d in diff.values())
    for component in (*COMPONENTS, "total"):
        sdk_usd = SDK_COST[component]
        assert diff[component]["pct"] == round(diff[component]["usd"] / sdk_usd * 100, 2), component
    # each cause is also a warning of the envelope
    assert set(diff["total"]["causes"]) <= {w["code"] for w in call.envelope["warnings"]}


def test_the_difference_beyond_the_tolerance_is_a_mismatch(call: NotifiedCall) -> None:
    assert call.rec["tolerance_usd"] == TOLERANCE_USD
    assert call.rec["mismatch"] is True  # |total| 0.000609 > 0.0005; no component is over it
    assert all(abs(call.rec["difference"][c]["usd"]) <= TOLERANCE_USD for c in COMPONENTS)


def test_the_report_fills_what_spans_never_say(call: NotifiedCall) -> None:
    env, meta, rec = call.envelope, call.sdk_meta, call.rec
    assert (env["caller"], env["callee"]) == ("***" + emit_call.CALLER[-4:], "***" + emit_call.CALLEE[-4:])
    assert env["direction"] == meta["direction"] == "inbound"
    assert rec["sdk_providers"] == {"stt": "deepgram", "tts": "elevenlabs", "llm": "openai", "telephony": "twilio"}
    assert rec["sdk_models"] == {"stt": "nova-3", "llm": emit_call.LLM_MODEL}  # ElevenLabs exposes no `model`
    assert rec["sdk_turns"] == meta["turns"] == env["turns"] == 4
    assert rec["sdk_duration_ms"] == meta["duration_ms"]
    assert rec["sdk_latency"]["p95_ms"] == meta["latency"]["p95_ms"]
    assert env["duration_ms"] >= meta["duration_ms"]
    # our start is the call_start report's arrival: the SDK posts it as it writes its own started_at
    assert abs(parse_iso(env["started_at"]) - parse_iso(meta["started_at"])) < 1.0
    assert abs(parse_iso(env["ended_at"]) - parse_iso(meta["ended_at"])) < 1.0


def test_budget_sources(call: NotifiedCall) -> None:
    result = CallResult(call.envelope)
    assert result.budget_usd("uut", "spans") == (call.envelope["cost"]["total"], "spans") == (0.022281, "spans")
    assert result.budget_usd("uut", "sdk") == (SDK_COST["total"], "sdk")
    assert result.budget_usd("uut", "max") == (SDK_COST["total"], "sdk")


def test_the_call_page_shows_both_views_with_the_named_causes(call: NotifiedCall) -> None:
    code, page = call.server.get(f"/calls/{urllib.parse.quote(CALL, safe='')}")
    assert code == 200
    assert R.reconciliation_rows(page.decode()) == {
        "stt": {"spans": "0.000802", "sdk": "0.001120", "diff": "-0.000318", "pct": "-28.39%",
                "causes": "stt_tail_unmetered"},
        "tts": {"spans": "0.012750", "sdk": "0.013050", "diff": "-0.000300", "pct": "-2.30%",
                "causes": "tts_chars_from_spans"},
        "llm": {"spans": "0.000230", "sdk": "0.000220", "diff": "+0.000010", "pct": "+4.55%",
                "causes": "llm_cached_tokens_full_price"},
        "telephony": {"spans": "0.008500", "sdk": "0.008500", "diff": "+0.000000", "pct": "+0.00%", "causes": ""},
        "total": {"spans": "0.022281", "sdk": "0.022890", "diff": "-0.000609", "pct": "-2.66%",
                  "causes": "llm_cached_tokens_full_price, stt_tail_unmetered, tts_chars_from_spans"},
    }
    code, index = call.server.get("/")
    assert code == 200
    assert '<td class="num usd sdk-total">0.022890</td>' in index.decode()


# -- durable like spans ---------------------------------------------------------------------------------
def test_each_report_is_one_wal_line_of_sanitized_fields(call: NotifiedCall) -> None:
    lines = [x for x in call.wal() if x["type"] == "sdk_report"]
    assert [x["data"]["kind"] for x in lines] == ["call_start", "call_end"]
    assert {x["side"] for x in lines} == {"uut"}
    start, end = (x["data"] for x in lines)
    assert set(start) == {"kind", "call_id", "received_at", "caller", "callee", "direction", "providers"}
    assert set(end) == {"kind", "call_id", "received_at", "caller", "callee", "direction", "ended_at",
                        "duration_seconds", "turns", "provider_mode", "providers", "models", "cost", "latency"}
    assert end["cost"] == call.sdk_meta["cost"]
    assert len([x for x in call.wal() if x["type"] == "span"]) == 37


def test_metrics_keep_the_sdk_cost_apart_from_ours(call: NotifiedCall) -> None:
    code, body = call.server.get("/metrics")
    assert code == 200
    text = body.decode()

    def series(name: str) -> dict[str, float]:
        return {m.group(1) or "": float(m.group(2))
                for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}

    sdk_cost = series("patter_sdk_cost_usd_total")
    assert {k: round(v, 6) for k, v in sdk_cost.items()} == {
        f'{{component="{c}"}}': SDK_COST[c] for c in COMPONENTS}
    ours = series("patter_cost_usd_total")
    # ours: the envelope's usage lines (each rounded to 6 places), and no SDK figure among them
    assert sum(ours.values()) == pytest.approx(call.envelope["cost"]["total"], abs=3e-6)
    assert sum(ours.values()) < sum(sdk_cost.values())
    assert series("patter_reconcile_mismatch_calls_total") == {"": 1.0}
    reports = series("otel_patter_sdk_reports_total")
    assert reports == {'{kind="call_start",outcome="accepted"}': 1.0, '{kind="call_end",outcome="accepted"}': 1.0}


# -- privacy ------------------------------------------------------------------------------------------------
PLANTED = [planted.PLANTED_WORD, planted.PLANTED_PHONE, planted.PLANTED_PHONE_DIGITS,
           "***" + planted.PLANTED_PHONE_DIGITS[-4:], planted.PLANTED_EMAIL, "planted@", "example.com",
           emit_call.CALLER[1:], emit_call.CALLER[2:], emit_call.CALLEE[1:], emit_call.CALLEE[2:],
           "555 123 4567", "555-123-4567",
           "what is the status", "never mind", "Order 42", "shipped", "order_id", "thirty days", "Goodbye",
           "conversation_history", "custom_params", "user_text", "agent_text"]


def _leaks(text: str) -> list[str]:
    return [p for p in PLANTED if p.lower() in text.lower()]


def test_planted_personal_data_reaches_no_file(call: NotifiedCall) -> None:
    files = [p for p in call.server.log_dir.rglob("*") if p.is_file()]
    assert call.call_dir() / "spans.jsonl" in files
    for path in files:
        assert _leaks(path.read_text(errors="replace")) == [], path


def test_planted_personal_data_reaches_no_api_response_metrics_or_log(call: NotifiedCall) -> None:
    s = call.server
    quoted = urllib.parse.quote(CALL, safe="")
    for path in ("/api/v1/calls", f"/api/v1/calls/{quoted}", "/metrics", "/readyz", "/", f"/calls/{quoted}"):
        code, body = s.get(path)
        assert code == 200, path
        text = body.decode() if isinstance(body, bytes) else json.dumps(body)
        assert _leaks(text) == [], path
    assert _leaks(s.logs()) == []


def test_planted_personal_data_reaches_no_forwarded_span(call: NotifiedCall) -> None:
    down = call.downstream
    down.wait(lambda: any(sp.name == "patter.call.summary" for _, sp in down.spans()), timeout=30)
    names = [sp.name for _, sp in down.spans()]
    assert len(names) == 37 + 1  # the call's spans, sanitized, and one summary; nothing made of the reports
    for received in down.received:
        assert _leaks(received.raw.decode("utf-8", "replace")) == []
        assert _leaks(str(received.request)) == []


def test_the_sdk_itself_did_send_the_planted_data(call: NotifiedCall) -> None:
    # the control: the SDK's own call log (its files, not ours) holds the planted words and raw numbers
    sdk_files = " ".join(p.read_text() for p in call.run.sdk_dir.iterdir())
    assert planted.PLANTED_WORD in sdk_files and planted.PLANTED_EMAIL in sdk_files
    assert call.sdk_meta["caller"] == emit_call.CALLER


# -- restart ----------------------------------------------------------------------------------------------
def test_zz_kill9_and_restart_rebuild_the_reports_from_the_wal(call: NotifiedCall) -> None:
    s = call.server
    before = s.get(f"/api/v1/calls/{urllib.parse.quote(CALL, safe='')}")[1]
    s.kill9()
    s.start()
    after = s.get(f"/api/v1/calls/{urllib.parse.quote(CALL, safe='')}")[1]
    assert after["reconciliation"] == before["reconciliation"] == call.envelope["reconciliation"]
    assert (after["caller"], after["cost"], after["final_reason"]) == (
        call.envelope["caller"], call.envelope["cost"], "sdk_call_end")
