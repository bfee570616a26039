"""An open call's envelope file follows its changes debounced: first ENVELOPE_DEBOUNCE_S after the call opened,
then at most once per ENVELOPE_DEBOUNCE_S while it changes, and a tick writes only the calls that are due (it
never walks every call it holds)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from otel_patter.processors.rollup import ENVELOPE_DEBOUNCE_S
from tests.inproc import InProcess
from tests.otlp import request, tts_span


class Clock:
    """Wall time moved forward by `offset` seconds, for spans' arrival and for rollup's ticks alike."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.real = time.time

    def __call__(self) -> float:
        return self.real() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "time", c)
    return c


@pytest.fixture
def ip(tmp_path: Path, clock: Clock) -> InProcess:
    ip = InProcess(tmp_path / "log", **{"rollup.idle_timeout": "10m"})
    ip.pipeline.rollup.clock = clock
    return ip


def _on_disk(ip: InProcess, call_id: str) -> dict[str, Any] | None:
    return ip.pipeline.store.read_envelope(ip.pipeline.rollup.calls[call_id].reldir)


def _writes(ip: InProcess) -> float:
    return ip.pipeline.metrics.envelope_writes._value.get()


CALL = "CA" + "7" * 32


def test_a_new_call_envelope_is_written_once_its_debounce_has_passed(ip: InProcess, clock: Clock) -> None:
    ip.pipeline.consume_traces(request([tts_span(CALL)]), "grpc")
    ip.pipeline.rollup.tick()
    assert _on_disk(ip, CALL) is None
    clock.offset = ENVELOPE_DEBOUNCE_S + 1
    ip.pipeline.rollup.tick()
    env = _on_disk(ip, CALL)
    assert env is not None
    assert (env["status"], env["counts"]["spans"]) == ("in_progress", 1)
    assert [(u["provider"], u["chars"]) for u in env["usage"]["tts"]] == [("elevenlabs", 12)]


def test_a_call_that_keeps_changing_is_rewritten_at_most_once_per_debounce(ip: InProcess, clock: Clock) -> None:
    ip.pipeline.consume_traces(request([tts_span(CALL)]), "grpc")
    clock.offset = ENVELOPE_DEBOUNCE_S + 1
    ip.pipeline.rollup.tick()
    assert _writes(ip) == 1
    for _ in range(5):  # five more spans, each followed by a tick, within one debounce
        ip.pipeline.consume_traces(request([tts_span(CALL)]), "grpc")
        ip.pipeline.rollup.tick()
    assert _writes(ip) == 1
    assert _on_disk(ip, CALL)["counts"]["spans"] == 1  # type: ignore[index]
    clock.offset = 2 * ENVELOPE_DEBOUNCE_S + 2
    ip.pipeline.rollup.tick()
    ip.pipeline.rollup.tick()
    assert _writes(ip) == 2
    assert _on_disk(ip, CALL)["counts"]["spans"] == 6  # type: ignore[index]


def test_a_tick_writes_only_the_calls_whose_envelope_is_due(ip: InProcess, clock: Clock) -> None:
    early = [f"CA{n:032x}" for n in range(1, 3)]
    late = [f"CA{n:032x}" for n in range(100, 400)]
    ip.pipeline.consume_traces(request([tts_span(c) for c in early]), "grpc")
    clock.offset = 5.0
    ip.pipeline.consume_traces(request([tts_span(c) for c in late]), "grpc")
    ip.pipeline.rollup.tick()
    clock.offset = ENVELOPE_DEBOUNCE_S + 1  # the early calls' debounce has passed, not the late ones'
    ip.pipeline.rollup.tick()
    assert _writes(ip) == 2
    assert [c for c in early + late if _on_disk(ip, c) is not None] == early


def test_after_the_wall_clock_steps_back_a_reopened_call_is_written_a_debounce_after_its_last_write(
        ip: InProcess, clock: Clock) -> None:
    rollup = ip.pipeline.rollup
    ip.pipeline.consume_traces(request([tts_span(CALL)]), "grpc")
    clock.offset = ENVELOPE_DEBOUNCE_S + 1
    rollup.tick()  # its first write
    clock.offset = ENVELOPE_DEBOUNCE_S + 2
    ip.pipeline.consume_traces(request([tts_span(CALL)]), "grpc")
    rollup.tick()  # its next write is queued for a debounce after the first
    clock.offset = -100.0  # NTP steps the clock back
    assert rollup.request_finalize(CALL)
    rollup.tick()  # the final write
    assert _writes(ip) == 2
    clock.offset = -99.0
    ip.pipeline.consume_traces(request([tts_span(CALL)]), "grpc")  # a late span reopens it
    rollup.tick()
    clock.offset = -100.0 + ENVELOPE_DEBOUNCE_S + 1
    rollup.tick()
    assert _writes(ip) == 3
    env = _on_disk(ip, CALL)
    assert env is not None
    assert (env["status"], env["revision"], env["counts"]["spans"]) == ("in_progress", 2, 3)
