"""Attributes the usage guard does not judge (an SDK 0.6 `getpatter.llm.ttft_ms`, our own
`otel_patter.redacted_count` sent by a client) can hold anything: an odd value is ignored, the span and its
call are still counted, and the call replays after a restart (it used to raise in rollup, live and on replay)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inproc import InProcess
from tests.otlp import span

CALL_ID = "CA0123456789abcdef0123456789abcdef"


def _spans(ttft: object, redacted: object) -> list:
    return [
        span("getpatter.llm", {"patter.call_id": CALL_ID, "patter.side": "uut", "getpatter.llm.ttft_ms": ttft,
                               "otel_patter.redacted_count": redacted}),
        span("patter.billable", {"patter.call_id": CALL_ID, "patter.side": "uut", "patter.cost.tts_chars": 120,
                                 "patter.tts.provider": "elevenlabs"}),
    ]


@pytest.mark.parametrize(("ttft", "redacted"), [("abc", "x"), ("", ""), ("inf", "1e400"), ([1, 2], {"a": 1})])
def test_an_odd_ttft_or_redaction_count_is_ignored_and_the_call_is_counted(
        tmp_path: Path, ttft: object, redacted: object) -> None:
    ip = InProcess(tmp_path / "log")
    result = ip.send(_spans(ttft, redacted))
    assert (result.rejected, result.message) == (0, "")
    env = ip.final(CALL_ID)
    assert env["counts"]["spans"] == 2
    assert env["counts"]["redactions"] == 0
    assert env["latency"]["llm_ttft_p50_ms"] is None
    assert [(u["provider"], u["chars"]) for u in env["usage"]["tts"]] == [("elevenlabs", 120)]


def test_a_numeric_ttft_string_still_counts_as_sdk_0_6_wrote_it(tmp_path: Path) -> None:
    ip = InProcess(tmp_path / "log")
    ip.send(_spans("412.5", 2))
    env = ip.final(CALL_ID)
    assert (env["latency"]["llm_ttft_p50_ms"], env["counts"]["redactions"]) == (412.5, 2)


def test_a_call_with_an_odd_ttft_replays_after_a_restart(tmp_path: Path) -> None:
    before = InProcess(tmp_path / "log")
    before.send(_spans("abc", "x"))
    restarted = InProcess(tmp_path / "log")
    env = restarted.pipeline.rollup.get(CALL_ID)
    assert env is not None
    assert (env["status"], env["counts"]["spans"]) == ("in_progress", 2)
    assert [(u["provider"], u["chars"]) for u in env["usage"]["tts"]] == [("elevenlabs", 120)]
