"""Load generator for the crash test: realistic calls through the real OTLP exporters (`otel_patter.simulate`),
resending every batch that was not acknowledged until it is (at-least-once; our dedupe must absorb the repeats).

    python -m tests.reliability.loadgen --endpoint URL --protocol grpc|http|http/json --seed-base N
        --start-ns T [--calls 6] [--shape 0.7] [--max-waves 40] [--waves 3] [--stop-file F] --out result.json

Waves of calls are sent one after another (wave w: `build_calls(seed=seed_base + w, start_ns=...)`), until
the stop file exists (at least `--min-waves`), or exactly `--waves` of them. The OTel SDK exporters give up
after their retry budget; `ResendingExporter` then makes a fresh exporter (a new channel reconnects at once)
and sends the same spans again. Every loop is bounded: `--deadline` seconds in all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_patter import simulate

WAVE_SPACING_NS = 120 * 10**9  # call timelines of successive waves do not overlap


class ResendingExporter(SpanExporter):
    """Sends each batch until it is acknowledged. With `repeat_rate`, sends an acknowledged batch once more
    now and then, as a client does whose acknowledgement was lost on the way."""

    def __init__(self, factory: Callable[[], SpanExporter], deadline: float, repeat_rate: float = 0.0) -> None:
        self.factory = factory
        self.inner = factory()
        self.deadline = deadline
        self.repeat_rate = repeat_rate
        self.batches = 0
        self.resends = 0
        self.repeated_spans = 0
        self.spans = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.batches += 1
            while True:
                try:
                    result = self.inner.export(spans)
                except Exception:  # an exporter bug or a torn connection: send again
                    result = SpanExportResult.FAILURE
                if result is SpanExportResult.SUCCESS:
                    self.spans += len(spans)
                    if self.repeat_rate and random.random() < self.repeat_rate:
                        self.repeated_spans += len(spans)
                        self._send_once_more(spans)
                    return result
                if time.monotonic() > self.deadline:
                    return SpanExportResult.FAILURE
                self.resends += 1
                with contextlib.suppress(Exception):
                    self.inner.shutdown()
                time.sleep(random.uniform(0.05, 0.3))
                self.inner = self.factory()

    def _send_once_more(self, spans: Sequence[ReadableSpan]) -> None:
        while time.monotonic() < self.deadline:
            with contextlib.suppress(Exception):
                if self.inner.export(spans) is SpanExportResult.SUCCESS:
                    return
            with contextlib.suppress(Exception):
                self.inner.shutdown()
            time.sleep(random.uniform(0.05, 0.3))
            self.inner = self.factory()

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--protocol", choices=simulate.PROTOCOLS, required=True)
    p.add_argument("--shape", choices=simulate.SHAPES, default="0.7")
    p.add_argument("--calls", type=int, default=6)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--no-driver", action="store_true")
    p.add_argument("--seed-base", type=int, required=True)
    p.add_argument("--start-ns", type=int, required=True)
    p.add_argument("--waves", type=int, default=None, help="exactly this many waves")
    p.add_argument("--min-waves", type=int, default=1)
    p.add_argument("--max-waves", type=int, default=40)
    p.add_argument("--stop-file", default=None)
    p.add_argument("--exporter-timeout", type=float, default=2.0)
    p.add_argument("--repeat-rate", type=float, default=0.0, help="resend this share of acknowledged batches")
    p.add_argument("--deadline", type=float, default=240.0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + a.deadline
    exporters: list[ResendingExporter] = []

    def make() -> SpanExporter:
        exp = ResendingExporter(lambda: simulate.make_exporter(a.protocol, a.endpoint, timeout=a.exporter_timeout),
                                deadline, a.repeat_rate)
        exporters.append(exp)
        return exp

    waves = a.waves if a.waves is not None else a.max_waves
    done: list[int] = []
    calls: list[str] = []
    sent = 0
    error = None
    for w in range(waves):
        if a.waves is None and w >= a.min_waves and a.stop_file and Path(a.stop_file).exists():
            break
        if time.monotonic() > deadline:
            error = f"deadline of {a.deadline}s reached after {len(done)} waves"
            break
        plans = simulate.build_calls(a.calls, shape=a.shape, turns=a.turns, seed=a.seed_base + w,
                                     with_driver=not a.no_driver, start_ns=a.start_ns + w * WAVE_SPACING_NS)
        try:
            simulate.emit(plans, endpoint=a.endpoint, protocol=a.protocol, exporter=make)
        except simulate.SimulationError as e:
            error = f"wave {w}: {e}"
            break
        done.append(w)
        sent += sum(len(pl.nodes()) for pl in plans)
        calls.extend(dict.fromkeys(pl.call_id for pl in plans))
    result = {"waves": done, "calls": calls, "spans": sent, "batches": sum(e.batches for e in exporters),
              "resends": sum(e.resends for e in exporters), "acked_spans": sum(e.spans for e in exporters),
              "repeated_spans": sum(e.repeated_spans for e in exporters),
              "seconds": round(time.monotonic() - t0, 2), "error": error}
    Path(a.out).write_text(json.dumps(result))
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
