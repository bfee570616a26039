"""tests/sdk/emit_call.py with the SDK's dashboard notify left ON, and personal data planted in the call.

    PATTER_OTEL_ENABLED=1 OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \\
        python -m tests.sdk_ingest.emit_call_notify SDK_LOG_ROOT

The colleague's script forces `PATTER_DASHBOARD_NOTIFY=0`; here that one assignment is ignored, so
the real `getpatter.dashboard.persistence.notify_dashboard` POSTs the call_start and call_end
reports to `http://127.0.0.1:8000/api/dashboard/ingest` (fire-and-forget, 1 s timeout) exactly as
0.7.0 does in production. Everything else is the same call (same audio, replies, usage, so the same
SDK cost). The caller's final transcripts carry planted words, a phone number and an email: they
travel in the call_end report (`transcript`, `conversation_history`, `metrics.turns[].user_text`)
and must leave no trace in anything otel-patter writes or serves.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, MutableMapping
from types import SimpleNamespace
from typing import Any

from tests.sdk import emit_call

PLANTED_WORD = "zanzibarquux"
PLANTED_PHONE = "415 555 0173"  # in speech, as STT writes numbers
PLANTED_PHONE_DIGITS = "4155550173"
PLANTED_EMAIL = "jane.planted@example.com"
PLANTED = f" {PLANTED_WORD} call me back on {PLANTED_PHONE} or {PLANTED_EMAIL}"
NOTIFY_ENV = "PATTER_DASHBOARD_NOTIFY"


class _EnvKeepingNotify(MutableMapping[str, str]):
    """`os.environ`, except that emit_call's `PATTER_DASHBOARD_NOTIFY=0` is not applied."""

    def __getitem__(self, key: str) -> str:
        return os.environ[key]

    def __setitem__(self, key: str, value: str) -> None:
        if key != NOTIFY_ENV:
            os.environ[key] = value

    def __delitem__(self, key: str) -> None:
        del os.environ[key]

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


class PlantedDeepgramWS(emit_call.FakeDeepgramWS):
    """The same fake Deepgram script; every final transcript also says the planted words."""

    def __init__(self) -> None:
        super().__init__()
        self.script = [(at, [self._plant(f) for f in frames]) for at, frames in self.script]

    @staticmethod
    def _plant(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("is_final"):
            alt = frame["channel"]["alternatives"][0]
            alt["transcript"] += PLANTED
        return frame


def run(log_root: str) -> dict[str, Any]:
    emit_call.os = SimpleNamespace(environ=_EnvKeepingNotify())  # type: ignore[assignment]
    emit_call.FakeDeepgramWS = PlantedDeepgramWS  # type: ignore[misc]
    os.environ.pop(NOTIFY_ENV, None)
    return emit_call.run_call(log_root, fastapi_spans=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print("RESULT " + json.dumps(run(sys.argv[1])), flush=True)
