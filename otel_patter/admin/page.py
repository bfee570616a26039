"""The page on the admin port: recent calls at `/`, one call at `/calls/{id}`.

Plain server-rendered HTML with inline CSS and an inline SVG chart: no script, no CDN, nothing
fetched, so it works offline and under a `default-src 'none'` content security policy. It
refreshes itself with `<meta http-equiv="refresh">`. Every value is HTML-escaped; envelopes are
already scrubbed of personal data (DESIGN "PII hygiene"). Money is shown as the envelope has it
(USD, 6 places); sums are exact decimal sums of the shown figures.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

COMPONENTS = ("stt", "tts", "llm", "telephony", "realtime")
REFRESH_S = 5
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_USD_PLACES = Decimal("0.000001")

_CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:20px;color:#1d2330;background:#fafbfc}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.sub{color:#5c6470;margin:0 0 16px}
table{border-collapse:collapse;background:#fff;box-shadow:0 0 0 1px #e3e6ea}
th,td{padding:6px 8px;border-bottom:1px solid #eef0f2;text-align:left;white-space:nowrap}
th.group{text-align:center;border-bottom:1px solid #d6dae0}
th{background:#f3f5f7;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#4a5260}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tfoot td{font-weight:600;border-top:2px solid #d6dae0}
.status{padding:1px 8px;border-radius:10px;font-size:12px}
.s-completed{background:#e3f6e8;color:#176c34}.s-in_progress{background:#e6effc;color:#1d4f91}
.s-error{background:#fde6e6;color:#9b1c1c}.s-idle{background:#f4efe1;color:#7a5b00}
.warn{color:#9b1c1c}.muted{color:#8a919c}
a{color:#1d4f91;text-decoration:none}a:hover{text-decoration:underline}
td.id{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}dt{color:#5c6470}dd{margin:0}
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def usd(v: Any) -> str:
    """`0.013400`: the envelope's 6-place USD figure, exactly."""
    if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
        return "—"
    return str(Decimal(str(v)).quantize(_USD_PLACES))


def ms(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "—"
    return f"{v:,.1f} ms"


def seconds(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "—"
    return f"{v / 1000:,.1f} s"


def call_href(call_id: str) -> str:
    return "/calls/" + urllib.parse.quote(call_id, safe="")


def _doc(title: str, body: str, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>")


def _status(status: Any) -> str:
    s = str(status or "")
    return f'<span class="status s-{esc(s)}">{esc(s.replace("_", " "))}</span>'


def _cost(env: Mapping[str, Any]) -> Mapping[str, Any]:
    c = env.get("cost")
    return c if isinstance(c, Mapping) else {}


def _total_cell(env: Mapping[str, Any]) -> str:
    total = usd(_cost(env).get("total"))
    mark = "" if env.get("cost_complete", True) else ' <span class="warn" title="unpriced usage">*</span>'
    return (f'<td class="num usd total" data-call-id="{esc(env.get("call_id"))}" data-usd="{esc(total)}">'
            f"{esc(total)}{mark}</td>")


def _short_time(iso: Any) -> str:
    """`2026-11-23T09:24:38.201Z` -> `11-23 09:24:38` (UTC): the table stays narrow."""
    m = re.fullmatch(r"\d{4}-(\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?Z", str(iso or ""))
    return f"{m.group(1)} {m.group(2)}" if m else str(iso or "—")


RECONCILED = ("stt", "tts", "llm", "telephony", "total")


def _sdk_cost(env: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The SDK's own call-end cost breakdown (sdk_ingest), when the call has one."""
    rec = env.get("reconciliation")
    sdk = rec.get("sdk") if isinstance(rec, Mapping) else None
    return sdk if isinstance(sdk, Mapping) else None


def _pct(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "—"
    return f"{v:+.2f}%"


def reconciliation_html(env: Mapping[str, Any]) -> str:
    """Both views of the call's USD: otel-patter's from spans beside the SDK's own call report, the
    difference per component (USD, percent) and its named causes (codes of `warnings`)."""
    rec = env.get("reconciliation")
    if not isinstance(rec, Mapping):
        return ""
    reports = ", ".join(str(r) for r in rec.get("reports") or ()) or "none"
    sdk = _sdk_cost(env)
    diff = rec.get("difference") if isinstance(rec.get("difference"), Mapping) else {}
    spans = rec.get("spans") if isinstance(rec.get("spans"), Mapping) else {}
    if sdk is None:
        return (f"<h2>Reconciliation: spans vs the SDK's own report</h2><p class=muted>SDK reports received: "
                f"{esc(reports)}; its cost comes with its call_end report.</p>")
    rows = []
    for c in RECONCILED:
        d = diff.get(c) if isinstance(diff.get(c), Mapping) else {}
        causes = ", ".join(str(x) for x in d.get("causes") or ())
        if not causes and d.get("unexplained"):
            causes = '<span class="warn">unexplained</span>'
        else:
            causes = f"<code>{esc(causes)}</code>" if causes else ""
        usd_diff = d.get("usd")
        diff_cell = "—" if not isinstance(usd_diff, int | float) else f"{usd_diff:+.6f}"
        rows.append(f'<tr data-component="{c}"><td>{c}</td><td class="num usd spans">{esc(usd(spans.get(c)))}</td>'
                    f'<td class="num usd sdk">{esc(usd(sdk.get(c)))}</td><td class="num usd diff">{esc(diff_cell)}</td>'
                    f'<td class="num pct">{esc(_pct(d.get("pct")))}</td><td class="causes">{causes}</td></tr>')
    tolerance = rec.get("tolerance_usd")
    verdict = ""
    if rec.get("mismatch") is True:
        verdict = (f'<p class="warn mismatch">The two differ by more than the tolerance '
                   f"(sdk_ingest.tolerance_usd {esc(usd(tolerance))} USD).</p>")
    elif rec.get("mismatch") is False:
        verdict = f"<p class=muted>Within the tolerance of {esc(usd(tolerance))} USD.</p>"
    return ("<h2>Reconciliation: spans vs the SDK's own report</h2>"
            f"<p class=sub>SDK reports received: {esc(reports)}. Difference = spans - SDK.</p>"
            '<table id="reconciliation"><thead><tr><th>component</th><th class=num>spans usd</th>'
            "<th class=num>sdk usd</th><th class=num>difference</th><th class=num>pct</th><th>causes</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>{verdict}")


def render_index(calls: Iterable[Mapping[str, Any]], *, limit: int) -> str:
    """A row per call; USD columns for the components any shown call has (and always the total)."""
    calls = list(calls)
    shown = [c for c in COMPONENTS if any(_cost(env).get(c) for env in calls)] or ["stt", "tts", "llm", "telephony"]
    with_sdk = any(_sdk_cost(env) is not None for env in calls)  # sdk_ingest: the SDK's own total beside ours
    rows = []
    sums = dict.fromkeys((*COMPONENTS, "total"), Decimal(0))
    sdk_sum = Decimal(0)
    incomplete = 0
    for env in calls:
        cost = _cost(env)
        for k in sums:
            v = cost.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                sums[k] += Decimal(str(v))
        incomplete += 0 if env.get("cost_complete", True) else 1
        cid = str(env.get("call_id") or "")
        latency = env.get("latency") if isinstance(env.get("latency"), Mapping) else {}
        counts = env.get("counts") if isinstance(env.get("counts"), Mapping) else {}
        comp_cells = "".join(f'<td class="num usd {c}">{esc(usd(cost.get(c)))}</td>' for c in shown)
        sdk_cell = ""
        if with_sdk:
            sdk_total = (_sdk_cost(env) or {}).get("total")
            if isinstance(sdk_total, int | float) and not isinstance(sdk_total, bool):
                sdk_sum += Decimal(str(sdk_total))
            sdk_cell = f'<td class="num usd sdk-total">{esc(usd(sdk_total))}</td>'
        rows.append(
            f'<tr data-call-id="{esc(cid)}"><td class="id"><a href="{esc(call_href(cid))}">{esc(cid)}</a></td>'
            f'<td title="{esc(env.get("started_at"))}">{esc(_short_time(env.get("started_at")))}</td>'
            f"<td>{_status(env.get('status'))}</td>"
            f'<td class="num">{esc(seconds(env.get("duration_ms")))}</td>'
            f'<td class="num">{esc(env.get("turns", 0))}</td>{comp_cells}{_total_cell(env)}{sdk_cell}'
            f'<td class="num p95">{esc(ms(latency.get("p95_ms")))}</td>'
            f'<td class="num errors">{esc(counts.get("errors", 0))}</td></tr>')
    head = ("<tr><th rowspan=2>call</th><th rowspan=2>started (UTC)</th><th rowspan=2>status</th>"
            "<th rowspan=2 class=num>duration</th><th rowspan=2 class=num>turns</th>"
            f'<th colspan={len(shown) + 1 + with_sdk} class="group">USD</th>'
            "<th rowspan=2 class=num>p95</th><th rowspan=2 class=num>errors</th></tr><tr>"
            + "".join(f"<th class=num>{c}</th>" for c in shown) + "<th class=num>total</th>"
            + ('<th class=num title="the SDK\'s own call report (sdk_ingest)">sdk total</th>' if with_sdk else "")
            + "</tr>")
    foot_cells = "".join(f'<td class="num usd {k}">{esc(usd(sums[k]))}</td>' for k in shown)
    total_sum = usd(sums["total"])
    sdk_foot = f'<td class="num usd sum-sdk-total">{esc(usd(sdk_sum))}</td>' if with_sdk else ""
    foot = (f'<tr><td colspan="5">{len(calls)} call{"" if len(calls) == 1 else "s"}</td>{foot_cells}'
            f'<td class="num usd sum-total" data-usd="{esc(total_sum)}">{esc(total_sum)}</td>{sdk_foot}'
            "<td></td><td></td></tr>")
    note = (f'<p class="warn">* {incomplete} call(s) have usage without a rate: their cost is incomplete '
            "(see each call's unpriced lines).</p>") if incomplete else ""
    empty = "" if calls else '<p class="muted">No calls yet. Point OTEL_EXPORTER_OTLP_ENDPOINT here.</p>'
    body = (f"<h1>otel-patter: recent calls</h1><p class=sub>The {limit} newest calls; USD of the uut side; "
            f"p95 of turn latency (ttfb). Refreshes every {REFRESH_S} s.</p>"
            f'<table id="calls"><thead>{head}</thead><tbody>{"".join(rows)}</tbody><tfoot>{foot}</tfoot></table>'
            f"{note}{empty}")
    return _doc("otel-patter: recent calls", body, refresh=True)


def latency_svg(turns_ms: list[float], p95_ms: float | None, *, width: int = 640, height: int = 220) -> str:
    """A bar per turn (its ttfb), a dashed line at p95; labels in the SVG, no script."""
    values = [float(v) for v in turns_ms if isinstance(v, int | float) and not isinstance(v, bool)]
    if not values:
        return '<p class="muted">No turn latency recorded.</p>'
    left, right, top, bottom = 56, 100, 16, 28  # the p95 label sits in the right margin
    plot_w, plot_h = width - left - right, height - top - bottom
    vmax = max([*values, p95_ms or 0.0]) * 1.1 or 1.0
    slot = plot_w / len(values)
    bar_w = max(2.0, slot * 0.7)
    parts = [f'<svg id="latency-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="turn latency per turn in milliseconds">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#eef0f2"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#5c6470">'
                     f"{vmax * frac:,.0f}</text>")
    for i, v in enumerate(values):
        h = plot_h * v / vmax
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h - h
        parts.append(f'<rect class="turn" data-turn="{i + 1}" data-ms="{v:g}" x="{x:.1f}" y="{y:.1f}" '
                     f'width="{bar_w:.1f}" height="{h:.1f}" fill="#4a7fd4"><title>turn {i + 1}: {v:,.1f} ms</title>'
                     "</rect>")
        if len(values) <= 24:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 10}" font-size="11" text-anchor="middle" '
                         f'fill="#5c6470">{i + 1}</text>'
                         f'<text x="{x + bar_w / 2:.1f}" y="{max(top + 10, y - 4):.1f}" font-size="10" '
                         f'text-anchor="middle" fill="#1d2330">{v:,.0f}</text>')
    if p95_ms is not None:
        y = top + plot_h * (1 - p95_ms / vmax)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#c0392b" '
                     f'stroke-dasharray="5 4"/><text x="{width - right + 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="start" fill="#c0392b">p95 {p95_ms:,.1f} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


_QUANTITY_KEYS = (("seconds", "s"), ("chars", "chars"), ("input_tokens", "input tokens"),
                  ("output_tokens", "output tokens"), ("minutes", "min"), ("billed_minutes", "billed min"))


def quantity(line: Mapping[str, Any]) -> str:
    parts = []
    for key, unit in _QUANTITY_KEYS:
        v = line.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            parts.append(f"{v:g} {unit}")
    return ", ".join(parts)


def render_call(env: Mapping[str, Any]) -> str:
    cid = str(env.get("call_id") or "")
    cost = _cost(env)
    latency = env.get("latency") if isinstance(env.get("latency"), Mapping) else {}
    counts = env.get("counts") if isinstance(env.get("counts"), Mapping) else {}
    agent = env.get("agent") if isinstance(env.get("agent"), Mapping) else {}
    facts = [("status", _status(env.get("status"))), ("final reason", esc(env.get("final_reason") or "—")),
             ("revision", esc(env.get("revision"))), ("started", esc(env.get("started_at") or "—")),
             ("ended", esc(env.get("ended_at") or "—")), ("duration", esc(seconds(env.get("duration_ms")))),
             ("turns", esc(env.get("turns"))), ("direction", esc(env.get("direction"))),
             ("telephony", esc(env.get("telephony_provider") or "—")),
             ("mode", esc(env.get("provider_mode"))),
             ("agent", esc(", ".join(f"{k}={v}" for k, v in agent.items() if v)) or "—"),
             ("test run", esc(", ".join(map(str, env.get("test_run_id") or ())) or "—")),
             ("pricing", esc(env.get("pricing_version"))),
             ("counts", esc(", ".join(f"{k} {v}" for k, v in counts.items())))]
    dl = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    cost_rows = "".join(f'<tr><td>{c}</td><td class="num usd {c}">{esc(usd(cost.get(c)))}</td></tr>'
                        for c in COMPONENTS)
    complete = "" if env.get("cost_complete", True) else (
        '<p class="warn">Cost is incomplete: some usage has no rate (below). The total leaves it out.</p>')
    cost_table = (f'<table id="cost"><thead><tr><th>component</th><th class=num>usd</th></tr></thead>'
                  f"<tbody>{cost_rows}</tbody><tfoot><tr><td>total</td>{_total_cell(env)}</tr></tfoot></table>"
                  f"{complete}")
    usage_rows = []
    usage = env.get("usage") if isinstance(env.get("usage"), Mapping) else {}
    for comp, lines in usage.items():
        for line in lines if isinstance(lines, list) else ():
            if not isinstance(line, Mapping):
                continue
            priced = esc(usd(line.get("usd"))) if line.get("usd") is not None else '<span class="warn">unpriced</span>'
            usage_rows.append(f"<tr><td>{esc(comp)}</td><td>{esc(line.get('provider'))}</td>"
                              f"<td>{esc(line.get('model') or '—')}</td><td class=num>{esc(quantity(line))}</td>"
                              f'<td class="num usd">{priced}</td></tr>')
    usage_table = ('<table id="usage"><thead><tr><th>component</th><th>provider</th><th>model</th>'
                   "<th class=num>quantity</th><th class=num>usd</th></tr></thead>"
                   f"<tbody>{''.join(usage_rows)}</tbody></table>") if usage_rows else '<p class="muted">No usage.</p>'
    unpriced = env.get("unpriced") or []
    unpriced_html = ""
    if unpriced:
        items = "".join(f"<li>{esc(u.get('side'))} {esc(u.get('component'))} {esc(u.get('provider', ''))} "
                        f"{esc(u.get('model') or '')}: {esc(u.get('reason'))}</li>"
                        for u in unpriced if isinstance(u, Mapping))
        unpriced_html = f'<h2>Unpriced usage</h2><ul class="warn">{items}</ul>'
    lat_items = [("p50", latency.get("p50_ms")), ("p95", latency.get("p95_ms")), ("p99", latency.get("p99_ms")),
                 ("LLM time to first token p50", latency.get("llm_ttft_p50_ms")),
                 ("turn p50", latency.get("turn_p50_ms"))]
    lat_dl = "<dl>" + "".join(f"<dt>{k}</dt><dd>{esc(ms(v))}</dd>" for k, v in lat_items) + "</dl>"
    p95 = latency.get("p95_ms")
    chart = latency_svg(list(latency.get("turns_ms") or []), p95 if isinstance(p95, int | float) else None)
    side_rows = []
    sides = env.get("sides") if isinstance(env.get("sides"), Mapping) else {}
    for name, side in sides.items():
        if not isinstance(side, Mapping):
            continue
        s_cost = side.get("cost") if isinstance(side.get("cost"), Mapping) else {}
        s_lat = side.get("latency") if isinstance(side.get("latency"), Mapping) else {}
        s_counts = side.get("counts") if isinstance(side.get("counts"), Mapping) else {}
        side_rows.append(f"<tr><td>{esc(name)}</td><td class=num>{esc(side.get('turns'))}</td>"
                         f'<td class="num usd">{esc(usd(s_cost.get("total")))}</td>'
                         f"<td class=num>{esc(ms(s_lat.get('p95_ms')))}</td>"
                         f"<td class=num>{esc(s_counts.get('spans'))}</td>"
                         f"<td class=num>{esc(s_counts.get('errors'))}</td></tr>")
    sides_table = ('<table id="sides"><thead><tr><th>side</th><th class=num>turns</th><th class=num>total usd</th>'
                   "<th class=num>p95</th><th class=num>spans</th><th class=num>errors</th></tr></thead>"
                   f"<tbody>{''.join(side_rows)}</tbody></table>")
    warnings = env.get("warnings") or []
    warn_html = ""
    if warnings:
        warn_html = "<h2>Warnings</h2><ul>" + "".join(
            f"<li><code>{esc(w.get('code'))}</code> {esc(w.get('text'))}</li>"
            for w in warnings if isinstance(w, Mapping)) + "</ul>"
    body = (f'<p><a href="/">&larr; recent calls</a></p><h1>{esc(cid)}</h1>'
            f"<p class=sub>Figures of the uut side; USD rounded half-even to 6 places.</p>{dl}"
            f"<h2>Cost (USD)</h2>{cost_table}{reconciliation_html(env)}<h2>Usage, priced</h2>{usage_table}"
            f"{unpriced_html}"
            f"<h2>Turn latency (time to first byte)</h2>{lat_dl}{chart}<h2>Sides</h2>{sides_table}{warn_html}")
    return _doc(f"otel-patter: {cid}", body, refresh=env.get("status") == "in_progress")


def render_not_found(call_id: str) -> str:
    body = (f'<p><a href="/">&larr; recent calls</a></p><h1>No such call</h1>'
            f"<p>otel-patter has no call <code>{esc(call_id)}</code> (yet). This page looks again every "
            f"{REFRESH_S} s.</p>")
    return _doc("otel-patter: no such call", body, refresh=True)
