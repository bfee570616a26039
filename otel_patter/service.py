"""The running process: the pipeline plus its listeners, started and stopped in order."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from otel_patter.admin.server import AdminServer
from otel_patter.config import Config
from otel_patter.pipeline import Pipeline
from otel_patter.receivers.otlp_grpc import OtlpGrpcReceiver
from otel_patter.receivers.otlp_http import OtlpHttpReceiver

log = logging.getLogger("otel_patter.service")


class Service:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pipeline = Pipeline(cfg)
        otlp = cfg.receivers.otlp
        limit = otlp.max_request_bytes
        self.grpc = OtlpGrpcReceiver(otlp.grpc.endpoint, self.pipeline, limit) if otlp.grpc.endpoint else None
        self.http = OtlpHttpReceiver(otlp.http.endpoint, self.pipeline, limit) if otlp.http.endpoint else None
        self.admin = AdminServer(cfg.admin.endpoint, self.pipeline) if cfg.admin.endpoint else None

    @property
    def listeners(self) -> list[Any]:
        return [x for x in (self.admin, self.grpc, self.http) if x is not None]

    async def start(self) -> None:
        # admin first so probes answer (not ready) while state is recovered
        if self.admin is not None:
            await self.admin.start()
        await self.pipeline.start()
        for listener in (self.grpc, self.http):
            if listener is not None:
                await listener.start()

    async def shutdown(self) -> None:
        for listener in (self.grpc, self.http):
            if listener is not None:
                await listener.shutdown()
        await self.pipeline.shutdown()
        if self.admin is not None:
            await self.admin.shutdown()

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        log.info("otel-patter ready; envelopes in %s", self.cfg.store.log_dir)
        await stop.wait()
        log.info("shutting down")
        await self.shutdown()
