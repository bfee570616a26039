"""The page at / and /calls/{id}: escaped, offline, refreshing, right totals; rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from otel_patter import simulate
from otel_patter.admin.page import render_call, render_index
from tests.calls_data import call_id, send, turn_spans
from tests.otlp import T0
from tests.server import ServerProc

S = 1_000_000_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Cells(HTMLParser):
    """Text of every element with a `data-usd` attribute or class `p95`, by (row call id, class)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.sum_total: str | None = None
        self._row: str | None = None
        self._cell: str | None = None
        self._text = ""
        self.svg_bars: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr":
            self._row = a.get("data-call-id")
        elif tag == "td" and a.get("class"):
            self._cell = a["class"] or ""
            self._text = ""
        elif tag == "rect" and a.get("class") == "turn":
            self.svg_bars.append((a["data-turn"] or "", a["data-ms"] or ""))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            if "sum-total" in self._cell:
                self.sum_total = self._text.strip()
            elif self._row is not None:
                self.rows.setdefault(self._row, {})[self._cell] = self._text.strip()
            self._cell = None


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


# -- rendering -------------------------------------------------------------------------------------------
def _envelope(**changes: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "call_id": "CA7f3c9e0d1b2a4c5d6e7f8091a2b3c4d5", "status": "completed", "revision": 1,
        "started_at": "2026-11-23T05:45:21.361Z", "duration_ms": 14806.0, "turns": 4,
        "cost": {"stt": 0.000802, "tts": 0.003825, "llm": 0.000274, "telephony": 0.0085, "realtime": 0.0,
                 "total": 0.0134},
        "cost_complete": True, "unpriced": [],
        "usage": {"llm": [{"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1270, "output_tokens": 139,
                           "usd": 0.000274}]},
        "latency": {"p50_ms": 233.7, "p95_ms": 670.1, "turns_ms": [233.1, 742.3, 234.3, 201.9]},
        "counts": {"spans": 37, "errors": 0}, "sides": {}, "warnings": [],
    }
    env.update(changes)
    return env


def test_every_value_is_html_escaped() -> None:
    hostile = "CA<img src=x onerror=alert(1)>&\"'"
    env = _envelope(call_id=hostile, warnings=[{"code": "x<script>", "text": "</td><script>alert(2)</script>"}],
                    usage={"llm": [{"provider": "<b>openai</b>", "model": "gpt\"><svg onload=alert(3)>",
                                    "input_tokens": 1, "output_tokens": 1, "usd": None}]})
    for html in (render_index([env], limit=50), render_call(env)):
        assert "<img" not in html and "<script" not in html and "<svg onload" not in html and "<b>" not in html
        assert "CA&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#x27;" in html
    assert 'href="/calls/CA%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%26%22%27"' in render_index([env], limit=50)


def test_the_index_sums_the_shown_totals_exactly() -> None:
    calls = [_envelope(call_id=f"CA{n:032x}", cost={**_envelope()["cost"], "total": t})
             for n, t in enumerate((0.0134, 0.000001, 0.1, 0.2))]
    page = parse(render_index(calls, limit=50))
    assert [page.rows[f"CA{n:032x}"]["num usd total"] for n in range(4)] == ["0.013400", "0.000001", "0.100000",
                                                                             "0.200000"]
    assert page.sum_total == "0.313401"  # 0.1 + 0.2 in floats is 0.30000000000000004; the page says what it sums


def test_an_incomplete_cost_is_marked() -> None:
    html = render_index([_envelope(cost_complete=False)], limit=50)
    assert 'title="unpriced usage">*</span>' in html
    assert "* 1 call(s) have usage without a rate: their cost is incomplete" in html


def test_the_call_page_charts_each_turn_and_prices_each_usage_line() -> None:
    html = render_call(_envelope())
    assert parse(html).svg_bars == [("1", "233.1"), ("2", "742.3"), ("3", "234.3"), ("4", "201.9")]
    assert "p95 670.1 ms</text>" in html
    assert ("<td>llm</td><td>openai</td><td>gpt-4o-mini</td><td class=num>1270 input tokens, 139 output tokens</td>"
            '<td class="num usd">0.000274</td>') in html
    assert '<meta http-equiv="refresh"' not in html  # a final call does not change: no refresh
    assert '<meta http-equiv="refresh" content="5">' in render_call(_envelope(status="in_progress"))


# -- served ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, dict[str, dict]]]:
    """Three simulated getpatter 0.7.0 calls (uut and driver legs) through the real gRPC exporter, final."""
    s = ServerProc(tmp_path_factory.mktemp("page")).start()
    try:
        sent = simulate.emit(simulate.build_calls(3, seed=21, turns=4), endpoint=s.grpc_endpoint, protocol="grpc")
        envelopes = {c.call_id: s.wait_final(c.call_id) for c in sent}
        yield s, envelopes
    finally:
        s.stop()


def test_the_served_index_shows_each_call_with_its_envelope_total(three_calls: tuple[ServerProc, dict]) -> None:
    s, envelopes = three_calls
    code, body = s.get("/")
    assert code == 200
    page = parse(body.decode())
    assert {cid: row["num usd total"] for cid, row in page.rows.items()} == {
        cid: f"{Decimal(str(env['cost']['total'])):.6f}" for cid, env in envelopes.items()}
    assert page.sum_total == f"{sum(Decimal(str(e['cost']['total'])) for e in envelopes.values()):.6f}"


def test_the_page_sends_a_strict_content_security_policy(three_calls: tuple[ServerProc, dict]) -> None:
    import urllib.request

    s, _ = three_calls
    with urllib.request.urlopen(s.admin_url + "/", timeout=10) as r:
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        html = r.read().decode()
    assert not re.search(r"<script|src=\"http|href=\"http|@import", html)  # offline: nothing to fetch


def test_a_call_page_for_an_unknown_call_is_404(server: ServerProc) -> None:
    code, body = server.get("/calls/CAnope")
    assert code == 404
    assert b"otel-patter has no call <code>CAnope</code> (yet)" in body


def test_the_served_call_page_charts_the_turn_latencies(three_calls: tuple[ServerProc, dict]) -> None:
    s, envelopes = three_calls
    cid, env = next(iter(envelopes.items()))
    code, body = s.get(f"/calls/{cid}")
    assert code == 200
    bars = parse(body.decode()).svg_bars
    assert [float(ms) for _, ms in bars] == env["latency"]["turns_ms"]
    assert len(bars) == env["turns"] == 4


# -- headless Chromium ---------------------------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: .ci/run)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=90)


@needs_chromium
def test_chromium_renders_the_index_with_the_exact_usd_totals(three_calls: tuple[ServerProc, dict],
                                                              tmp_path: Path) -> None:
    s, envelopes = three_calls
    r = chromium(tmp_path, "--dump-dom", s.admin_url + "/")
    assert r.returncode == 0, r.stderr[-2000:]
    page = parse(r.stdout)
    assert {cid: row["num usd total"] for cid, row in page.rows.items()} == {
        cid: f"{Decimal(str(env['cost']['total'])):.6f}" for cid, env in envelopes.items()}
    assert {cid: row["num p95"] for cid, row in page.rows.items()} == {
        cid: f"{env['latency']['p95_ms']:,.1f} ms" for cid, env in envelopes.items()}
    assert page.sum_total == f"{sum(Decimal(str(e['cost']['total'])) for e in envelopes.values()):.6f}"


@needs_chromium
def test_chromium_screenshots_the_index_and_a_call(three_calls: tuple[ServerProc, dict], tmp_path: Path) -> None:
    s, envelopes = three_calls
    cid = next(iter(envelopes))
    for name, url in (("index.png", s.admin_url + "/"), ("call.png", s.admin_url + f"/calls/{cid}")):
        png = tmp_path / name
        r = chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,900", url)
        assert r.returncode == 0, r.stderr[-2000:]
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1280, 900)
        assert len(data) > 20_000  # a rendered table, not a blank page


@needs_chromium
def test_chromium_renders_the_call_page_chart(three_calls: tuple[ServerProc, dict], tmp_path: Path) -> None:
    s, envelopes = three_calls
    cid, env = next(iter(envelopes.items()))
    send(s, turn_spans(call_id(777), [500.0], start=T0))  # the page of another call is untouched
    r = chromium(tmp_path, "--dump-dom", s.admin_url + f"/calls/{cid}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [float(ms) for _, ms in parse(r.stdout).svg_bars] == env["latency"]["turns_ms"]
    assert f'data-usd="{Decimal(str(env["cost"]["total"])):.6f}"' in r.stdout

