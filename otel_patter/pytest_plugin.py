"""pytest plugin (entry point `otel_patter`): the `patter_calls` fixture for acceptance suites.

    def test_support_call_stays_on_budget(patter_calls):
        call_id = run_my_scripted_call()
        patter_calls.wait(call_id).assert_budget(usd=0.05, p95_ms=1200, side="uut")

The server is `--otel-patter-url`, else `$OTEL_PATTER_URL`, else http://localhost:4319; a token
(`admin.auth_token`) comes from `$OTEL_PATTER_TOKEN`. A suite that starts otel-patter itself
overrides the `otel_patter_url` fixture. The plugin is inert unless used: importing it touches no
network, and the fixture connects only when one of its methods is called.
"""

from __future__ import annotations

import os

import pytest

from otel_patter.client import DEFAULT_URL, URL_ENV, PatterCalls


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("otel-patter", "otel-patter (per-call USD and latency of Patter voice agents)")
    group.addoption("--otel-patter-url", default=None, metavar="URL",
                    help=f"admin URL of otel-patter for the patter_calls fixture (default ${URL_ENV}, "
                         f"else {DEFAULT_URL})")


@pytest.fixture
def otel_patter_url(request: pytest.FixtureRequest) -> str:
    """The admin URL `patter_calls` talks to; override this fixture to point it at a server you start."""
    return request.config.getoption("--otel-patter-url") or os.environ.get(URL_ENV) or DEFAULT_URL


@pytest.fixture
def patter_calls(otel_patter_url: str) -> PatterCalls:
    """A `PatterCalls` client: `.wait(call_id)`, `.find(test_run_id=...)`, `.get`, `.list`, `.finalize`."""
    return PatterCalls(otel_patter_url)
