"""Admin HTTP (:4319): /healthz, /readyz, /metrics, the calls API (JSON, units in the names), its OpenAPI
document at /api/v1/openapi.json, and the page at / and /calls/{id}.

With `admin.auth_token` set, everything but /healthz and /readyz (and /metrics unless
`admin.metrics_auth`) wants `Authorization: Bearer <token>` (see `auth.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from otel_patter.admin import page
from otel_patter.admin.auth import TokenAuth
from otel_patter.admin.openapi import build_openapi
from otel_patter.admin.query import (
    DEFAULT_WAIT_S,
    GET_PARAMS,
    MAX_WAIT_S,
    UNITS,
    CallsQuery,
    QueryError,
    check_params,
    filter_calls,
    parse_seconds,
    parse_since,
    parse_wait,
)
from otel_patter.config import split_endpoint
from otel_patter.receivers.security import server_ssl_context

log = logging.getLogger("otel_patter.admin")
PAGE_CALLS = 50  # calls on the page at /
LIST_RECHECK_S = 1.0  # a list wait re-reads the calls at least this often (a reopened call, a new match)
LIST_SLICE_S = 0.005  # building the call list holds the event loop at most this long at a time (acks go first)


@web.middleware
async def _unreadable_state(request: web.Request, handler: Any) -> web.StreamResponse:
    """A call's state that cannot be read from disk (after a restart, a call not replayed yet): 503 and a retry,
    not a 500."""
    try:
        return await handler(request)
    except OSError as e:
        log.warning("call state unreadable: %s", e.strerror or e)
        return web.json_response({"error": f"call state unavailable: {e.strerror or e}"}, status=503,
                                 headers={"Retry-After": "1"})

__all__ = ["MAX_WAIT_S", "AdminServer", "filter_calls", "parse_since"]


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


class AdminServer:
    def __init__(self, endpoint: str, pipeline: Any) -> None:
        self.host, self.requested_port = split_endpoint(endpoint)
        self.pipeline = pipeline
        self.runner: web.AppRunner | None = None
        self.port = 0
        admin_cfg = getattr(getattr(pipeline, "cfg", None), "admin", None)
        self.auth = TokenAuth(getattr(admin_cfg, "auth_token", None), getattr(admin_cfg, "metrics_auth", False))
        self.openapi = build_openapi(auth=self.auth.enabled, metrics_auth=self.auth.metrics_auth)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finals = asyncio.Event()  # set (and replaced) whenever a call becomes final
        self._wake_scheduled = False  # one wake-up per burst of finalizations, not one each (a self-pipe write)
        pipeline.rollup.on_final.append(self._on_final)
        self.draining = False  # set at shutdown: /readyz says 503 so load balancers stop sending

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[self.auth.middleware, _unreadable_state])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/v1/openapi.json", self.openapi_doc)
        app.router.add_get("/api/v1/calls", self.list_calls)
        app.router.add_get("/api/v1/calls/{call_id}", self.get_call)
        app.router.add_post("/api/v1/calls/{call_id}/finalize", self.finalize)
        app.router.add_get("/", self.index_page)
        app.router.add_get("/calls/{call_id}", self.call_page)
        return app

    def _on_final(self, _state: Any, _envelope: Any) -> None:
        if not self._wake_scheduled and self._loop is not None and not self._loop.is_closed():
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._wake_list_waiters)

    def _wake_list_waiters(self) -> None:
        self._wake_scheduled = False  # first: a call final after this point schedules the next wake-up
        event, self._finals = self._finals, asyncio.Event()
        event.set()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        checks = self.pipeline.readiness()
        ready = self.pipeline.ready
        if self.draining:
            checks, ready = {**checks, "shutdown": "draining"}, False
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.pipeline.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_doc(self, _: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    async def _all_calls(self) -> list[dict[str, Any]]:
        """Every call's envelope, built in slices with the event loop let go in between."""
        out: list[dict[str, Any]] = []
        slice_end = time.perf_counter() + LIST_SLICE_S
        for env in self.pipeline.rollup.iter_calls():
            out.append(env)
            if time.perf_counter() >= slice_end:
                await asyncio.sleep(0)
                slice_end = time.perf_counter() + LIST_SLICE_S
        return out

    async def list_calls(self, request: web.Request) -> web.Response:
        """Filtered, paged; with wait=final, once at least `min_count` calls match and all of them are final."""
        try:
            query = CallsQuery.parse(request.query)
        except QueryError as e:
            return _bad(str(e))
        matches = query.select(await self._all_calls())
        if query.wait:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + query.timeout
            while not query.satisfied(matches):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    calls, cursor = query.page(matches)
                    return web.json_response({"error": "timed out waiting for the matching calls to be final",
                                              "calls": calls, "count": len(calls), "next_cursor": cursor,
                                              "units": UNITS}, status=408)
                finals = self._finals
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finals.wait(), min(remaining, LIST_RECHECK_S))
                matches = query.select(await self._all_calls())
        calls, cursor = query.page(matches)
        return web.json_response({"calls": calls, "count": len(calls), "next_cursor": cursor, "units": UNITS})

    async def get_call(self, request: web.Request) -> web.Response:
        """The envelope; with wait=final, once the call is final (an id not seen yet waits for it too)."""
        call_id = request.match_info["call_id"]
        rollup = self.pipeline.rollup
        try:
            check_params(request.query, GET_PARAMS)
            wait = parse_wait(request.query)
            timeout = (parse_seconds(request.query["timeout"], "timeout", MAX_WAIT_S)
                       if "timeout" in request.query else DEFAULT_WAIT_S)
        except QueryError as e:
            return _bad(str(e))
        if wait and not await rollup.wait_final(call_id, timeout):
            return web.json_response({"error": "timed out waiting for the call to be final",
                                      "call": rollup.get(call_id)}, status=408)
        env = rollup.get(call_id)
        if env is None:
            return web.json_response({"error": "no such call"}, status=404)
        return web.json_response(env)

    async def finalize(self, request: web.Request) -> web.Response:
        """Final now (200), or asked for and retried by the ticker when the store failed (202)."""
        call_id = request.match_info["call_id"]
        rollup = self.pipeline.rollup
        if not rollup.request_finalize(call_id):
            return web.json_response({"error": "no such call"}, status=404)
        rollup.tick()
        env = rollup.get(call_id)
        return web.json_response(env, status=202 if env["status"] == "in_progress" else 200)

    async def index_page(self, _: web.Request) -> web.Response:
        calls = filter_calls(await self._all_calls(), limit=PAGE_CALLS)
        return web.Response(text=page.render_index(calls, limit=PAGE_CALLS), content_type="text/html",
                            headers=page.SECURITY_HEADERS)

    async def call_page(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        env = self.pipeline.rollup.get(call_id)
        if env is None:
            return web.Response(text=page.render_not_found(call_id), status=404, content_type="text/html",
                                headers=page.SECURITY_HEADERS)
        return web.Response(text=page.render_call(env), content_type="text/html", headers=page.SECURITY_HEADERS)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake_scheduled = False  # a wake-up scheduled on a loop that closed before running it
        # the OTLP listeners' read_timeout bounds how long a connection may idle or dribble its request head
        cfg = getattr(self.pipeline, "cfg", None)
        read_timeout = cfg.receivers.otlp.read_timeout if cfg is not None else 30.0
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, keepalive_timeout=read_timeout)
        await self.runner.setup()
        tls = getattr(getattr(getattr(self.pipeline, "cfg", None), "admin", None), "tls", None)
        site = web.TCPSite(self.runner, self.host, self.requested_port, reuse_address=True,
                           ssl_context=server_ssl_context(tls))
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("admin listening on %s:%s%s", self.host, self.port, " (TLS)" if tls is not None else "")

    async def shutdown(self, grace: float = 60.0) -> None:
        """Close the listener; requests in flight (a `?wait=final` long poll) get `grace` seconds, then are cut."""
        if self.runner is not None:
            self.runner._shutdown_timeout = grace  # aiohttp only takes it in AppRunner(); it is read in cleanup()
            await self.runner.cleanup()
