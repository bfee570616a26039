"""With nobody on 127.0.0.1:8000, or a listener that hangs past the SDK's 1 s timeout or answers 500,
the SDK's call is unaffected (notify_dashboard is a fire-and-forget task) and otel-patter, fed only
the call's spans, still finalizes it by its other signals (hang-up usage).

Two runs of the same fake Twilio call, one after the other (both need port 8000 to themselves):
`bad`: a stub holds the call_start report 3 s and answers call_end with 500; `down`: nothing listens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from otel_patter.store.envelope_store import parse_iso
from tests.sdk import emit_call
from tests.sdk_ingest.conftest import CONFIG, BadListener, SdkRun, require_port_8000, run_notify_call
from tests.server import ServerProc

CALL = emit_call.CALL_SID
SDK_COST = {"stt": 0.00112, "tts": 0.01305, "llm": 0.00022, "telephony": 0.0085, "total": 0.02289,
            "llm_cached_savings": 0.0}
SPANS_TOTAL = 0.022281  # research §5: the same call's span-derived USD
MODES = ("bad", "down")


@dataclass
class Degraded:
    mode: str
    run: SdkRun
    envelope: dict[str, Any]
    listener: BadListener | None


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Degraded]]:
    require_port_8000()
    out: dict[str, Degraded] = {}
    for mode in MODES:
        root = tmp_path_factory.mktemp(f"sdk-notify-{mode}")
        server = ServerProc(root, CONFIG)  # sdk_ingest off: only spans reach otel-patter
        server.start()
        try:
            if mode == "bad":
                with BadListener(start_delay_s=3.0, end_status=500) as listener:
                    run = run_notify_call(server, root / "sdk-log")
            else:
                listener = None
                run = run_notify_call(server, root / "sdk-log")
            out[mode] = Degraded(mode, run, server.wait_final(CALL, timeout=40), listener)
        finally:
            server.stop()
    yield out


@pytest.fixture(params=MODES)
def case(request: pytest.FixtureRequest, degraded: dict[str, Degraded]) -> Degraded:
    return degraded[request.param]


def test_the_bad_listener_got_both_reports(degraded: dict[str, Degraded]) -> None:
    listener = degraded["bad"].listener
    assert listener is not None
    assert [kind for kind, _, _ in listener.seen] == ["call_start", "call_end"]


def test_a_hanging_listener_never_held_the_call_start_path(degraded: dict[str, Degraded]) -> None:
    bad = degraded["bad"]
    assert bad.listener is not None
    start_arrival = bad.listener.seen[0][1]
    # the SDK writes its own started_at right after scheduling the report: had it waited for the
    # answer (3 s, or its 1 s timeout), started_at would be a second or more later
    assert parse_iso(bad.run.sdk_meta["started_at"]) - start_arrival < 0.5


def test_the_sdk_call_is_unaffected(case: Degraded) -> None:
    meta, result = case.run.sdk_meta, case.run.result
    assert (meta["status"], meta["turns"]) == ("completed", 4)
    assert meta["cost"] == SDK_COST
    assert [t["turn_index"] for t in result["turns"]] == [0, 1, 2, 3]
    # 14 s of paced caller audio, then stop and a 1 s wait: nothing added a hang or a timeout to it
    assert result["call_seconds"] < emit_call.CALLER_AUDIO_S + 3.0


def test_otel_patter_finalizes_by_the_other_signals(case: Degraded) -> None:
    env = case.envelope
    assert (env["status"], env["final_reason"]) == ("completed", "hangup_usage")
    assert env["reconciliation"] is None
    assert env["counts"]["spans"] == 37
    assert env["cost"]["total"] == SPANS_TOTAL
    assert (env["caller"], env["callee"]) == ("", "")
