"""Structured logs: one JSON object per line. Messages never carry raw telemetry values."""

from __future__ import annotations

import json
import logging
import sys
import time

# `log.info(..., extra={"call_id": cid})`: the context fields a line may carry
CONTEXT_KEYS = ("call_id", "revision", "reason", "status", "downstream")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:  # ids and enum-like context passed as `extra=`, never telemetry values
            value = getattr(record, key, None)
            if value is not None and value != "":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
