"""`otel-patter` command line: serve, check-config, calls, simulate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from otel_patter.client import BUDGET_SOURCES
from otel_patter.config import ConfigError, check_config_main, load_config

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _serve(args: argparse.Namespace) -> int:
    from otel_patter.logs import setup_logging
    from otel_patter.service import Service

    overrides: dict[str, Any] = {}
    for flag, key in (("log_dir", "store.log_dir"), ("grpc_endpoint", "receivers.otlp.grpc.endpoint"),
                      ("http_endpoint", "receivers.otlp.http.endpoint"), ("admin_endpoint", "admin.endpoint"),
                      ("log_level", "log_level")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = None if value in ("none", "off") else value
    try:
        cfg = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        for path, message in e.errors:
            print(f"error: {path}: {message}", file=sys.stderr)
        return EXIT_ERROR
    setup_logging(cfg.log_level)
    for note in cfg.notes:
        logging.getLogger("otel_patter.config").warning(note)
    try:
        asyncio.run(Service(cfg).run_until_signalled())
    except ConfigError as e:  # found only at start, e.g. a forward target that is one of our listeners
        for path, message in e.errors:
            print(f"error: {path}: {message}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


# -- calls: from a running server (--url / OTEL_PATTER_URL) or straight from the log dir ----------
def _http_json(url: str, timeout: float) -> tuple[int, Any]:
    token = os.environ.get("OTEL_PATTER_TOKEN")  # admin.auth_token of the server, if it has one
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {"error": str(e)}


def _disk_calls(log_dir: str | None, config: str | None) -> list[dict[str, Any]]:
    from otel_patter.store.envelope_store import EnvelopeStore

    cfg = load_config(config, overrides={"store.log_dir": log_dir} if log_dir else None)
    store = EnvelopeStore(Path(cfg.store.log_dir))
    out = []
    for entry in store.read_index().values():
        env = store.read_envelope(entry["dir"])
        if env is not None:
            out.append(env)
    return out


def _print_table(calls: list[dict[str, Any]]) -> None:
    print(f"{'call_id':<40} {'status':<12} {'turns':>5} {'usd':>10} {'p95_ms':>9}")
    for c in calls:
        p95 = (c.get("latency") or {}).get("p95_ms")
        print(f"{c['call_id'][:40]:<40} {c.get('status', ''):<12} {c.get('turns', 0):>5} "
              f"{(c.get('cost') or {}).get('total', 0):>10.6f} {'' if p95 is None else f'{p95:.1f}':>9}")


def _calls(args: argparse.Namespace) -> int:
    from otel_patter.admin.server import filter_calls, parse_since

    url = args.url or os.environ.get("OTEL_PATTER_URL")
    if args.calls_cmd == "top":
        return _calls_top(args, url)
    if args.calls_cmd == "check":
        return _calls_check(args, url)
    try:
        if args.calls_cmd == "list":
            if url:
                q = {k: v for k, v in (("status", args.status), ("since", args.since), ("side", args.side),
                                       ("test_run_id", args.test_run_id), ("min_cost_usd", args.min_cost_usd),
                                       ("limit", str(args.limit))) if v is not None}
                code, body = _http_json(f"{url.rstrip('/')}/api/v1/calls?{urllib.parse.urlencode(q)}", 30)
                if code != 200:
                    print(f"error: {body.get('error', code)}", file=sys.stderr)
                    return EXIT_ERROR
                calls = body["calls"]
            else:
                since = parse_since(args.since) if args.since else None
                calls = filter_calls(_disk_calls(args.log_dir, args.config), status=args.status, since=since,
                                     side=args.side, limit=args.limit, test_run_id=args.test_run_id,
                                     min_cost_usd=args.min_cost_usd)
            if args.json:
                print(json.dumps(calls, indent=2))
            else:
                _print_table(calls)
            return EXIT_OK
        # show
        if url:
            q = f"?wait=final&timeout={args.wait}" if args.wait else ""
            path = urllib.parse.quote(args.call_id, safe="")
            code, body = _http_json(f"{url.rstrip('/')}/api/v1/calls/{path}{q}", (args.wait or 0) + 30)
            if code == 408:
                print("error: timed out waiting for the call to be final", file=sys.stderr)
                return EXIT_FAIL
            if code != 200:
                print(f"error: {body.get('error', code)}", file=sys.stderr)
                return EXIT_ERROR
            env = body
        else:
            found = [c for c in _disk_calls(args.log_dir, args.config) if c.get("call_id") == args.call_id]
            if not found:
                print(f"error: no call {args.call_id!r} in the log dir", file=sys.stderr)
                return EXIT_ERROR
            env = found[0]
        if args.json:
            print(json.dumps(env, indent=2))
        else:
            _print_table([env])
            for comp, lines in (env.get("usage") or {}).items():
                for line in lines:
                    print(f"  {comp:<10} {json.dumps(line)}")
            for w in env.get("warnings") or []:
                print(f"  warning {w['code']}: {w['text']}")
            from otel_patter.processors.reconcile import format_reconciliation

            for line in format_reconciliation(env):  # the SDK's own call report beside ours (sdk_ingest)
                print(line)
        return EXIT_OK
    except (OSError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


def _side_figure(env: dict[str, Any], side: str | None, by: str) -> float | None:
    """The figure `calls top` sorts by: cost (USD), p95 (ms) or duration (ms); of `side` when given."""
    if by == "duration":
        return env.get("duration_ms")
    where = ((env.get("sides") or {}).get(side) or {}) if side else env
    if by == "cost":
        return (where.get("cost") or {}).get("total")
    return (where.get("latency") or {}).get("p95_ms")


def _calls_top(args: argparse.Namespace, url: str | None) -> int:
    """The most expensive, slowest or longest calls (of --since, --side, --status)."""
    from otel_patter.admin.server import filter_calls, parse_since
    from otel_patter.client import PatterCalls, PatterCallsError

    try:
        if url:
            client = PatterCalls(url)
            calls = [c.envelope for c in client.iter(status=args.status, since=args.since, side=args.side,
                                                      limit=1000)]
        else:
            since = parse_since(args.since) if args.since else None
            calls = filter_calls(_disk_calls(args.log_dir, args.config), status=args.status, since=since,
                                 side=args.side, limit=10**9)
    except (PatterCallsError, OSError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    ranked = [c for c in calls if isinstance(_side_figure(c, args.side, args.by), int | float)]
    ranked.sort(key=lambda c: (-float(_side_figure(c, args.side, args.by) or 0), c.get("call_id") or ""))
    ranked = ranked[: args.limit]
    if args.json:
        print(json.dumps(ranked, indent=2))
    else:
        _print_table(ranked)
    return EXIT_OK


def _non_negative(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value!r}")
    return v


def _calls_check(args: argparse.Namespace, url: str | None) -> int:
    """Exit 0 within budget, 1 over budget / cost incomplete / not final, 2 when the call cannot be read."""
    from otel_patter.client import CallNotFinal, CallNotFound, CallResult, PatterCalls, PatterCallsError, num

    try:
        if url:
            client = PatterCalls(url)
            try:
                result = client.wait(args.call_id, args.wait) if args.wait else client.get(args.call_id)
            except CallNotFinal as e:
                if not e.calls:
                    print(f"error: no such call {args.call_id!r} (waited {args.wait:g} s)", file=sys.stderr)
                    return EXIT_ERROR
                result = e.calls[0]
        else:
            found = [c for c in _disk_calls(args.log_dir, args.config) if c.get("call_id") == args.call_id]
            if not found:
                print(f"error: no call {args.call_id!r} in the log dir", file=sys.stderr)
                return EXIT_ERROR
            result = CallResult(found[0])
    except CallNotFound:
        print(f"error: no such call {args.call_id!r}", file=sys.stderr)
        return EXIT_ERROR
    except (PatterCallsError, OSError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        result.assert_budget(usd=args.max_usd, p95_ms=args.max_p95_ms, side=args.side,
                             allow_unpriced=args.allow_unpriced, source=args.source)
    except AssertionError as e:
        print(f"FAIL: {e}")
        return EXIT_FAIL
    usd, source = result.budget_usd(args.side, args.source)
    p95 = result.p95_ms(args.side)
    print(f"ok: call {result.call_id} ({args.side} side) costs ${usd or 0.0:.6f}"
          + (" (the SDK's own call report)" if source == "sdk" else "")
          + ("" if args.max_usd is None else f" (budget ${args.max_usd:.6f})")
          + ("" if p95 is None else f", p95 {num(p95)} ms")
          + ("" if args.max_p95_ms is None else f" (budget {num(args.max_p95_ms)} ms)"))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otel-patter", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the receivers, rollup, store and admin API")
    s.add_argument("--config", default=None, help="YAML config (default: $OTEL_PATTER_CONFIG or none)")
    s.add_argument("--log-dir", default=None)
    s.add_argument("--grpc-endpoint", default=None, help="host:port, or 'off'")
    s.add_argument("--http-endpoint", default=None, help="host:port, or 'off'")
    s.add_argument("--admin-endpoint", default=None, help="host:port, or 'off'")
    s.add_argument("--log-level", default=None)
    s.set_defaults(func=_serve)

    c = sub.add_parser("check-config", help="print the effective config, or its errors (exit 1)")
    c.add_argument("--config", default=None)
    c.set_defaults(func=lambda a: check_config_main(a.config))

    calls = sub.add_parser("calls", help="read envelopes from a server (--url) or the log dir")
    calls_sub = calls.add_subparsers(dest="calls_cmd", required=True)
    for name in ("list", "show", "top", "check"):
        cp = calls_sub.add_parser(name)
        cp.add_argument("--url", default=None, help="admin URL (default $OTEL_PATTER_URL; else the log dir)")
        cp.add_argument("--log-dir", default=None)
        cp.add_argument("--config", default=None)
        cp.add_argument("--json", action="store_true")
        if name == "list":
            cp.add_argument("--status", default=None)
            cp.add_argument("--since", default=None, help="e.g. 1h, 30m, or an ISO time")
            cp.add_argument("--side", default=None, choices=("uut", "driver"))
            cp.add_argument("--test-run-id", default=None,
                            help="calls whose resource attribute test.run_id is this (of --side when given)")
            cp.add_argument("--min-cost-usd", type=_non_negative, default=None)
            cp.add_argument("--limit", type=int, default=100)
        elif name == "top":
            cp.add_argument("--by", choices=("cost", "p95", "duration"), default="cost")
            cp.add_argument("--status", default=None)
            cp.add_argument("--since", default=None, help="e.g. 1h, 30m, or an ISO time")
            cp.add_argument("--side", default=None, choices=("uut", "driver"),
                            help="rank by this side's cost or p95 (default: the call's top-level uut figures)")
            cp.add_argument("--limit", type=int, default=10)
        else:
            cp.add_argument("call_id")
            cp.add_argument("--wait", type=_non_negative, default=0,
                            help="seconds to wait for the call to be final")
        if name == "check":
            cp.add_argument("--max-usd", type=_non_negative, default=None, help="budget of the side, in USD")
            cp.add_argument("--max-p95-ms", type=_non_negative, default=None,
                            help="budget of the side's p95 turn latency, in ms")
            cp.add_argument("--side", default="uut", choices=("uut", "driver"))
            cp.add_argument("--source", default="max", choices=BUDGET_SOURCES,
                            help="the USD the budget is checked against: otel-patter's from spans, the SDK's own "
                                 "call report (sdk_ingest), or the larger of the two (default; spans alone when "
                                 "the call has no SDK report)")
            cp.add_argument("--allow-unpriced", action="store_true",
                            help="pass even when some usage has no rate (cost_complete false)")
        cp.set_defaults(func=_calls)

    from otel_patter import bench, simulate

    simulate.add_parser(sub)
    bench.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
