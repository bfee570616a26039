"""sdk_ingest (optional, off by default): the SDK's own call reports, as a sidecar to its spans.

getpatter 0.7.0's `notify_dashboard` POSTs each call's `initiated` / call_start / call_end report as
JSON to `http://127.0.0.1:8000/api/dashboard/ingest` (httpx, 1 s timeout, fire-and-forget; the
SDK's own standalone dashboard listens there). With `sdk_ingest: {endpoint: "127.0.0.1:8000"}`
otel-patter listens there instead and reads them as it reads spans: sanitized first
(processors/sdk_report: a closed list of numbers, names and codes; caller/callee redacted; no text),
then a small append to the call's WAL, then the rollup (call_end is the call's definitive end
signal; `reconciliation` in the envelope sets the SDK's cost beside the span-derived one).

Never in the SDK's way: the body is bounded (`max_body_bytes`, 413 beyond; read within
`READ_TIMEOUT_S`), the work per report is a JSON parse, a walk over a fixed list of fields and one
small append (no envelope write, no fsync unless `store.fsync` asks for it), and the answer is
`200 {}` at once. Nothing of a payload is ever logged. The SDK ignores our answer either way.

Port 8000 is also where `Patter.serve()` binds by default: if something holds it, `start()` fails
with a message that says so (and `serve` exits), rather than quietly receiving nothing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from typing import Any

from aiohttp import web

from otel_patter.config import split_endpoint
from otel_patter.receivers.decode import Unavailable

log = logging.getLogger("otel_patter.receivers.sdk_ingest")

PATH = "/api/dashboard/ingest"
READ_TIMEOUT_S = 5.0


def _answer(status: int, body: dict[str, Any], retry_after: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.json_response(body, status=status, headers=headers)


class SdkIngestReceiver:
    def __init__(self, endpoint: str, pipeline: Any, max_body_bytes: int) -> None:
        self.endpoint = endpoint
        self.host, self.requested_port = split_endpoint(endpoint, "127.0.0.1")
        self.pipeline = pipeline
        self.max_body_bytes = max_body_bytes
        self.runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(PATH, self.ingest)
        return app

    async def ingest(self, request: web.Request) -> web.Response:
        metrics = self.pipeline.metrics
        try:
            raw = await asyncio.wait_for(request.read(), READ_TIMEOUT_S)
        except web.HTTPRequestEntityTooLarge:
            metrics.sdk_reports.labels("unknown", "too_large").inc()
            return _answer(413, {"error": f"report over sdk_ingest.max_body_bytes ({self.max_body_bytes} bytes)"})
        except TimeoutError:
            metrics.sdk_reports.labels("unknown", "timeout").inc()
            return _answer(408, {"error": "report body not received in time"})
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):
            metrics.sdk_reports.labels("unknown", "malformed").inc()
            return _answer(400, {"error": "expected a JSON object"})
        if not isinstance(payload, dict):
            metrics.sdk_reports.labels("unknown", "malformed").inc()
            return _answer(400, {"error": "expected a JSON object"})
        try:
            self.pipeline.consume_sdk_report(payload)
        except Unavailable as e:
            return _answer(503, {"error": "unavailable"}, e.retry_after)
        return _answer(200, {})

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                    keepalive_timeout=READ_TIMEOUT_S)  # also bounds a dribbled request head
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.requested_port)
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            self.runner = None
            why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise OSError(e.errno, (
                f"sdk_ingest: cannot listen on {self.endpoint}: {why}. getpatter posts its call reports to "
                f"127.0.0.1:8000, where the SDK's own Patter.serve() (or `patter dashboard`) binds by default: "
                f"serve the app on another port (Patter.serve(port=...)) or turn sdk_ingest off "
                f"(sdk_ingest.endpoint: null)")) from e
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("sdk_ingest listening on %s:%s%s", self.host, self.port, PATH)

    async def shutdown(self, grace: float = 5.0) -> None:
        if self.runner is not None:
            self.runner._shutdown_timeout = grace  # aiohttp only takes it in AppRunner(); it is read in cleanup()
            await self.runner.cleanup()
