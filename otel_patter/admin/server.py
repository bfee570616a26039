"""Admin HTTP (:4319): /healthz, /readyz, /metrics and the calls API (JSON, units in the names)."""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from otel_patter.store.envelope_store import parse_iso

log = logging.getLogger("otel_patter.admin")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WAIT_S = 600.0


def parse_since(value: str, now: float | None = None) -> float:
    """`1h`, `30m`, an ISO timestamp or epoch seconds -> epoch seconds."""
    now = time.time() if now is None else now
    m = _DURATION.match(value.strip())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(value)
    except ValueError:
        return parse_iso(value)


def filter_calls(calls: list[dict[str, Any]], *, status: str | None = None, since: float | None = None,
                 side: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Shared by the API and the CLI's log-dir mode: newest first."""
    out = []
    for env in calls:
        if status and env.get("status") != status:
            continue
        if side and side not in (env.get("sides") or {}):
            continue
        if since is not None:
            started = env.get("started_at")
            if not started or parse_iso(started) < since:
                continue
        out.append(env)
    out.sort(key=lambda e: e.get("started_at") or "", reverse=True)
    return out[:limit]


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


class AdminServer:
    def __init__(self, endpoint: str, pipeline: Any) -> None:
        self.host, _, port = endpoint.rpartition(":")
        self.host = self.host.strip("[]") or "localhost"
        self.requested_port = int(port)
        self.pipeline = pipeline
        self.runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/v1/calls", self.list_calls)
        app.router.add_get("/api/v1/calls/{call_id}", self.get_call)
        app.router.add_post("/api/v1/calls/{call_id}/finalize", self.finalize)
        return app

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        checks = self.pipeline.readiness()
        ready = self.pipeline.ready
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.pipeline.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def list_calls(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            since = parse_since(q["since"]) if "since" in q else None
        except (ValueError, OverflowError):
            return _bad("limit must be an integer; since a duration like 1h, an ISO time or epoch seconds")
        if not 1 <= limit <= 10_000:
            return _bad("limit must be between 1 and 10000")
        calls = filter_calls(self.pipeline.rollup.list_calls(), status=q.get("status"), since=since,
                             side=q.get("side"), limit=limit)
        return web.json_response({"calls": calls, "count": len(calls)})

    async def get_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        rollup = self.pipeline.rollup
        if request.query.get("wait") == "final":
            try:
                timeout = float(request.query.get("timeout", "30"))
            except ValueError:
                return _bad("timeout must be a number of seconds")
            if not math.isfinite(timeout) or timeout < 0:
                return _bad("timeout must be a number of seconds")
            if not await rollup.wait_final(call_id, min(timeout, MAX_WAIT_S)):
                env = rollup.get(call_id)
                return web.json_response({"error": "timed out waiting for the call to be final",
                                          "call": env}, status=408)
        env = rollup.get(call_id)
        if env is None:
            return web.json_response({"error": "no such call"}, status=404)
        return web.json_response(env)

    async def finalize(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if not self.pipeline.rollup.request_finalize(call_id):
            return web.json_response({"error": "no such call"}, status=404)
        self.pipeline.rollup.tick()
        return web.json_response(self.pipeline.rollup.get(call_id), status=202)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.requested_port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("admin listening on %s:%s", self.host, self.port)

    async def shutdown(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
