"""The pipeline in-process, for rollup and pricing tests that need no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from otel_patter.config import load_config
from otel_patter.pipeline import ExportResult, Pipeline
from tests.otlp import request


class InProcess:
    def __init__(self, log_dir: Path, *, recover: bool = True, **config: Any) -> None:
        """`recover=False`: only begin the recovery (as `serve` does before it is ready); the test steps it."""
        overrides = {"store.log_dir": str(log_dir)}
        overrides.update(config)
        self.pipeline = Pipeline(load_config(None, env={}, overrides=overrides))
        asyncio.run(self.pipeline.store.start())
        if recover:
            self.pipeline.rollup.recover()
        else:
            self.pipeline.rollup.begin_recovery()
        self.pipeline.rollup.ready = True

    def send(self, spans: list, resource: dict[str, Any] | None = None) -> ExportResult:
        return self.pipeline.consume_traces(request(spans, resource), "test")

    def final(self, call_id: str) -> dict[str, Any]:
        rollup = self.pipeline.rollup
        assert rollup.request_finalize(call_id)
        rollup.tick()
        env = rollup.get(call_id)
        assert env is not None and env["status"] != "in_progress"
        return env
