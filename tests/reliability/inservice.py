"""The whole service (decode, pipeline, store, the real OTLP/HTTP and OTLP/gRPC receivers) in this process, on
an event loop in a background thread, bound to 127.0.0.1 on free ports: for fuzzing and for slow-client tests,
where starting a subprocess per input would cost too much and where errors must be caught where they happen.

Every record logged at ERROR or above (aiohttp's "Error handling request", grpc's servicer exceptions, our own)
and every exception the event loop sees unhandled is kept in `errors`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from otel_patter.config import load_config
from otel_patter.service import Service
from tests.server import free_port


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.sink.append(f"{record.name}: {text}")


class InService:
    def __init__(self, log_dir: Path, **overrides: Any) -> None:
        base = {"store.log_dir": str(log_dir), "receivers.otlp.grpc.endpoint": f"127.0.0.1:{free_port()}",
                "receivers.otlp.http.endpoint": f"127.0.0.1:{free_port()}", "admin.endpoint": None}
        base.update(overrides)
        self.cfg = load_config(None, env={}, overrides=base)
        self.errors: list[str] = []
        self._handler = _Collect(self.errors)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(
            f"event loop: {ctx.get('message')}: {ctx.get('exception')!r}"))
        self._thread = threading.Thread(target=self.loop.run_forever, name="inservice", daemon=True)
        self.service: Service | None = None

    def __enter__(self) -> InService:
        logging.getLogger().addHandler(self._handler)
        self._thread.start()
        self.service = Service(self.cfg)
        self.call(self.service.start())
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self.service is not None:
                self.call(self.service.shutdown(timeout=10), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
            logging.getLogger().removeHandler(self._handler)

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def http_port(self) -> int:
        assert self.service is not None and self.service.http is not None
        return self.service.http.port

    @property
    def grpc_port(self) -> int:
        assert self.service is not None and self.service.grpc is not None
        return self.service.grpc.port

    @property
    def pipeline(self) -> Any:
        assert self.service is not None
        return self.service.pipeline
