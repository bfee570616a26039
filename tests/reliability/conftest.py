"""Reliability and security suite (issue #8): acknowledged means kept, under faults and hostile input.

`make test` runs the short version (a few kill -9 rounds, a few thousand fuzz inputs); `make reliability`
runs the long one (20 kill -9 rounds, 100k+ fuzz inputs, bigger floods): `OTEL_PATTER_LONG=1` (or
`OTEL_PATTER_RELIABILITY=long`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

LONG = (os.environ.get("OTEL_PATTER_RELIABILITY", "").strip().lower() == "long"
        or os.environ.get("OTEL_PATTER_LONG", "").strip().lower() in ("1", "true", "yes", "long"))


def pick(short: int, long: int) -> int:
    """The short figure for `make test`, the long one for `make reliability`."""
    return long if LONG else short


def pytest_report_header(config: object) -> str:
    return f"otel-patter reliability mode: {'long' if LONG else 'short'} (OTEL_PATTER_LONG=1 for long)"


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every `otel-patter serve` a test started is gone when the test ends, passed or failed."""
    from tests.server import ServerProc

    made: list[ServerProc] = []
    init = ServerProc.__init__

    def tracked(self: ServerProc, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ServerProc, "__init__", tracked)
    yield
    for s in made:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)
