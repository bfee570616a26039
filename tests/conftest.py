from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.exporters.downstreams import GrpcDownstream, HttpDownstream
from tests.server import ServerProc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path).start()
    yield s
    s.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[object]:
    started: list[ServerProc] = []

    def make(config: dict | None = None, env: dict | None = None, root: Path | None = None) -> ServerProc:
        s = ServerProc(root or tmp_path, config, env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def grpc_down() -> Iterator[GrpcDownstream]:
    """A real OTLP/gRPC trace server standing in for a downstream backend."""
    d = GrpcDownstream().start()
    yield d
    d.stop()


@pytest.fixture
def http_down() -> Iterator[HttpDownstream]:
    """A real OTLP/HTTP server standing in for a downstream backend."""
    d = HttpDownstream().start()
    yield d
    d.stop()
