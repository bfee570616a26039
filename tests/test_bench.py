"""`otel-patter bench` at tiny sizes: it runs end to end and its JSON has every key the issue names.

Keys and types only: no assertion on any speed (the bench is run by hand, `make bench`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from otel_patter import bench

POSITIVE = ("spans_per_second", "floor_spans_per_second", "ratio", "p50_ack_ms", "p99_ack_ms",
            "rss_bytes_per_active_call", "rebuild_seconds", "idle_rss_mb", "startup_seconds", "cpu_ms_per_call",
            "cpu_seconds_per_million_spans", "server_spans_per_cpu_second", "max_open_fds")
FLOOR = ("decode_spans_per_cpu_second", "decode_encode_spans_per_cpu_second",
         "decode_touch_encode_spans_per_cpu_second", "attributes_per_span")


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def test_bench_cli_json_has_every_key(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "scale.png"
    proc = subprocess.run(
        [sys.executable, "-m", "otel_patter.cli", "bench", "--seconds", "1", "--calls", "50",
         "--rebuild-calls", "100", "--seed", "7", "--out", str(out), "--plot", str(plot), "--json"],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout  # one JSON object, progress goes to stderr
    result = json.loads(lines[0])
    assert json.loads(out.read_text()) == result

    for key in POSITIVE:
        assert _number(result.get(key)) and result[key] > 0, (key, result.get(key))
    assert _number(result["envelope_writes_per_second"]) and result["envelope_writes_per_second"] >= 0
    assert _number(result["rss_mb_under_load"]) and result["rss_mb_under_load"] > 0
    assert result["spans_failed"] == 0
    lat = [result[f"{q}_ack_ms"] for q in ("min", "p50", "p90", "p99", "max")]
    assert all(_number(v) for v in lat) and lat == sorted(lat)  # the latency distribution, in order
    assert _number(result["server_cpu_ms_per_load_request"]) and result["server_cpu_ms_per_load_request"] > 0
    assert result["rebuild_calls"] >= 100 and result["rebuild_calls_open"] >= 100
    assert "rebuild_seconds_10k" not in result  # only a 10k rebuild carries that name
    assert result["max_open_fds"] < result["nofile_limit"] == 1024
    assert result["floor_spans_per_second"] == result["floor"]["decode_touch_encode_spans_per_cpu_second"]
    for key in FLOOR:
        assert _number(result["floor"][key]) and result["floor"][key] > 0, key
    assert all(_number(v) and v > 0 for v in result["store_floor"].values())
    assert 0 < result["floor_with_store_spans_per_cpu_second"] < result["floor_spans_per_second"]
    assert _number(result["ratio_vs_floor_with_store"]) and result["ratio_vs_floor_with_store"] > result["ratio"]
    assert sorted(result["load_protocols"]) == ["grpc", "http"]
    assert result["load_spans_per_request"] > result["quiet_spans_per_request"] > 1
    assert result["scale"] and all(p["open_calls"] >= 50 and p["rss_bytes_per_call"] > 0
                                   and isinstance(p["rss_bytes_per_call_marginal"], int) for p in result["scale"])
    assert result["open_calls"] == result["scale"][-1]["open_calls"]
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_bench_parser_is_wired_into_the_cli() -> None:
    from otel_patter.cli import build_parser

    args = build_parser().parse_args(["bench", "--seconds", "2", "--json"])
    assert args.func is bench._cmd and args.seconds == 2.0 and args.json and args.calls == 2000


def test_percentile_and_plot(tmp_path: Path) -> None:
    assert bench.percentile([], 0.5) != bench.percentile([], 0.5)  # nan
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert bench.percentile([5.0], 0.99) == 5.0
    curve = [{"open_calls": n, "rss_bytes_per_call": 4000 + n / 10, "rss_bytes_per_call_marginal": 4000,
              "cpu_ms_per_call": 1.5} for n in (100, 1000, 10_000)]
    bench.plot_scale(curve, tmp_path / "p.png")
    png = (tmp_path / "p.png").read_bytes()
    assert png.startswith(b"\x89PNG") and int.from_bytes(png[16:20], "big") == 900


def test_load_shape_counts_spans_and_wal_appends_per_call() -> None:
    from tests.otlp import request, span, tts_span

    a, b = "CA" + "a" * 32, "CA" + "b" * 32
    b_turn = tts_span(b)
    child_of_b = span("llm.call", {}, trace=b_turn.trace_id)  # no call id: its trace's call (b)
    first = request([tts_span(a), b_turn]).SerializeToString()
    second = request([tts_span(a), child_of_b]).SerializeToString()
    assert bench.load_shape([first, second]) == (2.0, 2.0)  # 4 spans of 2 calls; each call in both requests
