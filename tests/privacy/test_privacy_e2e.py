"""Issue #4, end to end: nothing personal leaves otel-patter, whatever the app's instrumentation sends.

The corpus (`corpus.py`: several hundred cases as real instrumentations emit them, personal data planted)
goes through the real OpenTelemetry SDK and its real OTLP exporters into a real `otel-patter serve`,
one copy over gRPC and another over HTTP, with two real OTLP downstreams (grpcio and aiohttp, on
127.0.0.1) configured under `forward:`. Then no planted value may be found in any output: every file
under the log dir, every admin API response and page, `/metrics`, the server's own log, and every
span, log record and data point forwarded downstream. And every id the corpus marked as kept must be
intact where it was kept: trace and span ids, CallSids and AccountSids next to masked numbers, UUIDs,
ISO timestamps, call ids, LLM response ids.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
import pytest
from google.protobuf.json_format import MessageToJson

from otel_patter.spans import attrs_dict
from tests.exporters.downstreams import GrpcDownstream, HttpDownstream
from tests.privacy import corpus as corpus_mod
from tests.privacy.corpus import Case, Corpus, Emitter
from tests.privacy.search import Haystack, describe, find_leaks, needles
from tests.server import ServerProc

SEEDS = {"grpc": 1, "http": 2}  # one corpus per transport: distinct ids and planted values
FAST_RETRY = {"retry_initial_interval": "50ms", "retry_max_interval": "500ms", "timeout": "5s"}
WAIT_S = 45.0
SDK_FILES = ("events.jsonl", "transcript.jsonl")


@dataclass
class Run:
    server: ServerProc
    corpora: dict[str, Corpus]
    emitters: dict[str, Emitter]
    downstreams: dict[str, GrpcDownstream | HttpDownstream]
    api: dict[str, str] = field(default_factory=dict)  # path -> response text
    files: dict[str, str] = field(default_factory=dict)  # path under the log dir -> text
    server_log: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cases(self) -> list[Case]:
        return [c for corpus in self.corpora.values() for c in corpus.cases]

    def planted(self) -> list[tuple[corpus_mod.Planted, str]]:
        """Every planted value with its case, and the bare marker words (found in no output either)."""
        out = [pc for corpus in self.corpora.values() for pc in corpus.planted()]
        return out + [(corpus_mod.Planted("marker", m), "any case") for m in corpus_mod.MARKERS]


def _text(body: Any) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", errors="replace")
    return json.dumps(body, ensure_ascii=False)


def _proto_text(msg: Any, raw: bytes = b"") -> str:
    return MessageToJson(msg, ensure_ascii=False) + "\n" + raw.decode("utf-8", errors="replace")


def _forwarded_points(d: GrpcDownstream | HttpDownstream) -> list[dict[str, Any]]:
    out = []
    for r in list(d.received):
        if r.signal != "metrics":
            continue
        for rm in r.request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if kind:
                        out += [attrs_dict(dp.attributes) for dp in getattr(m, kind).data_points]
    return out


def _forwarded_logs(d: GrpcDownstream | HttpDownstream) -> list[tuple[dict[str, Any], Any]]:
    out = []
    for r in list(d.received):
        if r.signal != "logs":
            continue
        for rl in r.request.resource_logs:
            res = attrs_dict(rl.resource.attributes)
            for sl in rl.scope_logs:
                out += [(res, lr) for lr in sl.log_records]
    return out


def _wait(pred: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    started = time.monotonic()
    downs: dict[str, GrpcDownstream | HttpDownstream] = {"grpc": GrpcDownstream().start(),
                                                          "http": HttpDownstream().start()}
    forward = [{"name": f"capture-{k}", "endpoint": d.endpoint, "protocol": k, **FAST_RETRY}
               for k, d in downs.items()]
    server = ServerProc(tmp_path_factory.mktemp("privacy"), {"forward": forward})
    corpora = {t: corpus_mod.build(seed) for t, seed in SEEDS.items()}
    emitters: dict[str, Emitter] = {}
    try:
        server.start()
        emitters = {"grpc": Emitter("grpc", server.grpc_endpoint, corpora["grpc"]),
                    "http": Emitter("http", server.http_endpoint, corpora["http"])}
        for e in emitters.values():
            e.emit()
        for e in emitters.values():
            e.flush()
        r = Run(server, corpora, emitters, downs)
        call_ids = set().union(*(c.call_ids() for c in corpora.values()))
        spans = sum(e.spans for e in emitters.values())
        logs = sum(e.log_records for e in emitters.values())
        metric_calls = {c.call_id for c in r.cases if c.metrics}

        # every call final (its envelope written), everything forwarded to both downstreams
        code, body = server.get(f"/api/v1/calls?wait=final&min_count={len(call_ids)}&limit=10000&timeout={WAIT_S}",
                                timeout=WAIT_S + 10)
        assert code == 200, body
        for d in downs.values():
            # every span, plus at least one patter.call.summary per call
            _wait(lambda d=d: len(d.spans()) >= spans + len(call_ids), f"{type(d).__name__} spans")
            _wait(lambda d=d: len(_forwarded_logs(d)) >= logs, f"{type(d).__name__} log records")
            _wait(lambda d=d: metric_calls <= {p.get("patter.call_id") for p in _forwarded_points(d)},
                  f"{type(d).__name__} metric points")

        # every admin output
        for path in ("/api/v1/calls?limit=10000", "/metrics", "/readyz", "/healthz", "/"):
            code, body = server.get(path)
            assert code == 200, (path, body)
            r.api[path] = _text(body)
        r.calls = json.loads(r.api["/api/v1/calls?limit=10000"])["calls"]
        for env in r.calls:
            cid = urllib.parse.quote(env["call_id"], safe="")
            for path in (f"/api/v1/calls/{cid}", f"/calls/{cid}"):
                code, body = server.get(path)
                assert code == 200, (path, body)
                r.api[path] = _text(body)
    except BaseException:
        for e in emitters.values():
            e.shutdown()
        server.stop()
        for d in downs.values():
            d.stop()
        raise
    for e in emitters.values():
        e.shutdown()
    server.stop()  # what shutdown writes counts too
    r.server_log = server.logs()
    for p in sorted(server.log_dir.rglob("*")):
        if p.is_file():
            r.files[str(p.relative_to(server.log_dir))] = p.read_bytes().decode("utf-8", errors="replace")
    r.seconds = time.monotonic() - started
    yield r
    for d in downs.values():
        d.stop()


# -- the corpus itself --------------------------------------------------------------------------------
def test_corpus_is_big_varied_and_realistic() -> None:
    for seed in SEEDS.values():
        c = corpus_mod.build(seed)
        per_cat = Counter(case.category for case in c.cases)
        assert len(c.cases) >= 200, per_cat
        assert set(per_cat) == set(corpus_mod.CATEGORIES)
        kinds = Counter(p.kind for p, _ in c.planted())
        assert min(kinds[k] for k in ("phone", "email", "card", "token", "marker")) >= 20, kinds
        phones = [p for p, _ in c.planted() if p.kind == "phone"]
        assert len({p.region for p in phones}) >= 10
        assert all(len(p.digits) >= 9 for p in phones)
        for p in phones:  # every number is a real one of its country, whatever its spelling
            cc = phonenumbers.country_code_for_region(p.region)
            assert any(phonenumbers.is_valid_number(phonenumbers.parse(f"+{cc}{z}{p.digits}")) for z in ("", "0")), p
        assert len({c.name for c in c.cases}) == len(c.cases)
        spellings = [p.value for p in phones]
        for mark in ("\u202f", "\u2009", "\u00a0", "(0)", "tel:+", "whatsapp:+", "sip:+", "00"):
            assert any(mark in v for v in spellings), mark
        queries = [s.attrs.get("url.query", "") for case in c.cases for s in case.spans]
        assert any("From=%2B" in q for q in queries)


def test_the_leak_finder_finds_every_planted_value_in_any_spelling_and_not_its_scrubbed_form() -> None:
    c = corpus_mod.build(SEEDS["grpc"])
    for p, case in c.planted():
        forms = {"raw": f"x {p.value} y", "json": json.dumps({"v": p.value}),
                 "url": "https://h/p?v=" + urllib.parse.quote_plus(p.value),
                 "pct": urllib.parse.quote(p.value, safe="")}
        for how, text in forms.items():
            assert find_leaks({how: text}, [(p, case)]), (how, p)
        if p.kind in ("phone", "card"):
            spaced = " ".join(p.digits[i:i + 3] for i in range(0, len(p.digits), 3))
            assert find_leaks({"spaced": f"call {spaced} now"}, [(p, case)]), p
            assert not find_leaks({"masked": f"From=***{p.digits[-4:]}&x=1 {p.digits[:5]}"}, [(p, case)])
        else:
            assert not find_leaks({"replaced": "<email> <token> <card> Bearer <token> api_key=<token>"}, [(p, case)])


# -- end to end ---------------------------------------------------------------------------------------
def test_the_sdk_really_sent_every_planted_value(run: Run) -> None:
    """The control: each planted value is in what the real SDK exported (so its absence below means something)."""
    hay = Haystack({f"sdk-{t}-{i}": _proto_text(m) for t, e in run.emitters.items() for i, m in enumerate(e.sent())})
    missing = [(p.value, case) for p, case in run.planted() if not hay.found(p)]
    assert not missing, missing[:20]


def test_envelopes_for_every_call_and_no_sdk_files(run: Run) -> None:
    call_ids = set().union(*(c.call_ids() for c in run.corpora.values()))
    assert {env["call_id"] for env in run.calls} == call_ids
    assert all(env["status"] != "in_progress" for env in run.calls)
    metas = [f for f in run.files if f.startswith("calls/") and f.endswith("/metadata.json")]
    wals = [f for f in run.files if f.startswith("calls/") and f.endswith("/spans.jsonl")]
    assert len(metas) == len(wals) == len(call_ids)
    assert {json.loads(run.files[m])["call_id"] for m in metas} == call_ids
    assert [f for f in run.files if f.rsplit("/", 1)[-1] in SDK_FILES] == []


def test_no_planted_value_in_any_file_under_the_log_dir(run: Run) -> None:
    assert any(f.startswith("state/forward/") for f in run.files), sorted(run.files)[:20]
    leaks = find_leaks({f"file {k}": v for k, v in run.files.items()}, run.planted())
    assert not leaks, describe(leaks)


def test_no_planted_value_in_the_admin_api_page_metrics_or_server_log(run: Run) -> None:
    assert len(run.api) >= 2 * len(run.calls) + 5
    assert "otel_patter_pii_redactions_total" in run.api["/metrics"]
    outputs = {f"GET {k}": v for k, v in run.api.items()}
    outputs["server log"] = run.server_log
    leaks = find_leaks(outputs, run.planted())
    assert not leaks, describe(leaks)


def test_no_planted_value_forwarded_downstream(run: Run) -> None:
    outputs: dict[str, str] = {}
    for k, d in run.downstreams.items():
        signals = Counter(r.signal for r in d.received)
        assert {"traces", "logs", "metrics"} <= set(signals), signals
        for i, r in enumerate(list(d.received)):
            outputs[f"forwarded {k} #{i} {r.signal}"] = _proto_text(r.request, r.raw)
    leaks = find_leaks(outputs, run.planted())
    assert not leaks, describe(leaks)


def test_redactions_were_counted_by_rule(run: Run) -> None:
    lines = [ln for ln in run.api["/metrics"].splitlines() if ln.startswith("otel_patter_pii_redactions_total{")]
    rules = {ln.split('rule="', 1)[1].split('"', 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines}
    assert all(rules.get(r, 0) > 0 for r in ("key_dropped", "phone", "email", "card", "token")), rules


# -- ids survive ------------------------------------------------------------------------------------------
def _wal_records(run: Run) -> dict[str, list[dict[str, Any]]]:
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, text in run.files.items():
        if not name.endswith(".jsonl"):
            continue
        for line in text.splitlines():
            try:
                rec = json.loads(line).get("data")
            except (ValueError, AttributeError):
                continue
            if isinstance(rec, dict) and "trace_id" in rec and "span_id" in rec:
                by_trace[rec["trace_id"]].append(rec)
    return by_trace


def _wal_pairs(rec: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("name", rec["name"]), ("status", (rec.get("status") or {}).get("message", ""))]
    out += [(k, str(v)) for k, v in rec["attributes"].items()]
    out += [("resource." + k, str(v)) for k, v in rec["resource"].items()]
    for e in rec["events"]:
        out.append(("event.name", e["name"]))
        out += [(k, str(v)) for k, v in e["attrs"].items()]
    return out


def _span_pairs(res: dict[str, Any], s: Any) -> list[tuple[str, str]]:
    out = [("name", s.name), ("status", s.status.message)]
    out += [(k, str(v)) for k, v in attrs_dict(s.attributes).items()]
    out += [("resource." + k, str(v)) for k, v in res.items()]
    for e in s.events:
        out.append(("event.name", e.name))
        out += [(k, str(v)) for k, v in attrs_dict(e.attributes).items()]
    for link in s.links:
        out += [("link." + k, str(v)) for k, v in attrs_dict(link.attributes).items()]
    return out


def _kept(pairs: list[tuple[str, str]], where: str, value: str) -> bool:
    return any(k == where and value in v for k, v in pairs)


def test_trace_and_span_ids_are_unchanged_in_the_wal_and_downstream(run: Run) -> None:
    sent = {(s.context.trace_id, s.context.span_id): s for e in run.emitters.values()
            for s in e.sent_spans.get_finished_spans()}
    assert len(sent) == sum(e.spans for e in run.emitters.values())
    wal = {(r["trace_id"], r["span_id"], r["parent_span_id"]) for recs in _wal_records(run).values() for r in recs}
    want = {(f"{t:032x}", f"{s:016x}", f"{sp.parent.span_id:016x}" if sp.parent else "") for (t, s), sp in sent.items()}
    assert want <= wal, sorted(want - wal)[:5]
    for k, d in run.downstreams.items():
        got = {(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex()) for _, s in d.spans()}
        assert want <= got, (k, sorted(want - got)[:5])
        links = {(lk.trace_id.hex(), lk.span_id.hex()) for _, s in d.spans() for lk in s.links}
        sent_links = {(f"{lk.context.trace_id:032x}", f"{lk.context.span_id:016x}") for sp in sent.values()
                      for lk in sp.links}
        assert sent_links and sent_links <= links, k
        log_traces = {lr.trace_id.hex() for _, lr in _forwarded_logs(d)}
        case_traces = {t for c in run.cases if c.category == "log" for t in c.trace_ids}
        assert case_traces <= log_traces, k


def test_every_kept_id_is_intact_where_it_was_kept(run: Run) -> None:
    wal = _wal_records(run)
    fwd_spans: dict[str, dict[str, list[tuple[str, str]]]] = {}
    fwd_logs: dict[str, dict[str, list[tuple[str, str]]]] = {}
    fwd_points: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for k, d in run.downstreams.items():
        spans: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for res, s in d.spans():
            spans[s.trace_id.hex()] += _span_pairs(res, s)
        logs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for res, lr in _forwarded_logs(d):
            logs[lr.trace_id.hex()] += [(a, str(v)) for a, v in attrs_dict(lr.attributes).items()]
            logs[lr.trace_id.hex()] += [("resource." + a, str(v)) for a, v in res.items()]
        points: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for attrs in _forwarded_points(d):
            points[str(attrs.get("patter.call_id"))] += [(a, str(v)) for a, v in attrs.items()]
        fwd_spans[k], fwd_logs[k], fwd_points[k] = spans, logs, points
    missing = []
    checked = Counter()
    for case in run.cases:
        wal_pairs = [p for t in case.trace_ids for r in wal.get(t, []) for p in _wal_pairs(r)]
        for keep in case.keep:
            places: dict[str, list[tuple[str, str]]] = {}
            for k in run.downstreams:
                if keep.signal == "traces":
                    places[f"forwarded-{k}"] = [p for t in case.trace_ids for p in fwd_spans[k].get(t, [])]
                elif keep.signal == "logs":
                    places[f"forwarded-{k}"] = [p for t in case.trace_ids for p in fwd_logs[k].get(t, [])]
                else:
                    places[f"forwarded-{k}"] = fwd_points[k].get(case.call_id or "", [])
            if keep.signal == "traces" and keep.wal:
                places["wal"] = wal_pairs
            for where, pairs in places.items():
                checked[keep.signal] += 1
                if not _kept(pairs, keep.where, keep.value):
                    missing.append((case.name, where, keep.where, keep.value))
    assert not missing, missing[:20]
    assert checked["traces"] >= 200 and checked["logs"] >= 20 and checked["metrics"] >= 20, checked


def test_call_ids_in_the_envelopes_and_api_are_the_raw_ids(run: Run) -> None:
    for case in run.cases:
        if case.call_id and case.spans:
            path = f"/api/v1/calls/{urllib.parse.quote(case.call_id, safe='')}"
            assert json.loads(run.api[path])["call_id"] == case.call_id


def test_planted_needles_are_specific(run: Run) -> None:
    """No needle is so short or so common that its absence would prove nothing (or its presence mislead)."""
    for p, _ in run.planted():
        strs, digs = needles(p)
        assert all(len(s) >= 8 for s in strs) and all(len(d) >= 9 for d in digs), p
