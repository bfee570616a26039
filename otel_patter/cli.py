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
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


# -- calls: from a running server (--url / OTEL_PATTER_URL) or straight from the log dir ----------
def _http_json(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
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
    try:
        if args.calls_cmd == "list":
            if url:
                q = {k: v for k, v in (("status", args.status), ("since", args.since), ("side", args.side),
                                       ("limit", str(args.limit))) if v}
                code, body = _http_json(f"{url.rstrip('/')}/api/v1/calls?{urllib.parse.urlencode(q)}", 30)
                if code != 200:
                    print(f"error: {body.get('error', code)}", file=sys.stderr)
                    return EXIT_ERROR
                calls = body["calls"]
            else:
                since = parse_since(args.since) if args.since else None
                calls = filter_calls(_disk_calls(args.log_dir, args.config), status=args.status, since=since,
                                     side=args.side, limit=args.limit)
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
        return EXIT_OK
    except (OSError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


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
    for name in ("list", "show"):
        cp = calls_sub.add_parser(name)
        cp.add_argument("--url", default=None, help="admin URL (default $OTEL_PATTER_URL; else the log dir)")
        cp.add_argument("--log-dir", default=None)
        cp.add_argument("--config", default=None)
        cp.add_argument("--json", action="store_true")
        if name == "list":
            cp.add_argument("--status", default=None)
            cp.add_argument("--since", default=None, help="e.g. 1h, 30m, or an ISO time")
            cp.add_argument("--side", default=None, choices=("uut", "driver"))
            cp.add_argument("--limit", type=int, default=100)
        else:
            cp.add_argument("call_id")
            cp.add_argument("--wait", type=float, default=0, help="seconds to wait for the call to be final")
        cp.set_defaults(func=_calls)

    from otel_patter import simulate

    simulate.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
