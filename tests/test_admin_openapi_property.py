"""Property test: schemathesis sends what the served OpenAPI document allows (and what it forbids) to a real
server with real calls in it; no answer is a 5xx, and every answer matches the document."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from otel_patter.admin.openapi import build_openapi
from tests.calls_data import call_id, send, send_call, turn_spans
from tests.otlp import T0
from tests.server import ServerProc

S = 1_000_000_000
WAIT_CAP = "0.05"  # generated waits are cut short: the property is about answers, not about waiting


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path_factory.mktemp("openapi"), {"rollup": {"idle_timeout": "60s"}}).start()
    try:
        send_call(s, call_id(901), [612.4, 845.0], run_id="prop-run")
        send_call(s, call_id(902), [700.0], side="driver", minutes=None, start=T0 + 60 * S)
        send(s, turn_spans(call_id(903), [500.0], start=T0 + 120 * S))  # stays in progress
        s.wait_final(call_id(901))
        yield s
    finally:
        s.stop()


# The document a server without admin.auth_token serves (the first test checks that it is); generating from
# it at collection time means no server is needed to collect the tests.
schema = schemathesis.openapi.from_dict(build_openapi())


def test_the_tested_document_is_the_served_one(served: ServerProc) -> None:
    assert served.get("/api/v1/openapi.json") == (200, build_openapi())


def _seconds(value: object) -> float:
    """The generated timeout as a number of seconds; -1 when it is not one (a negative case)."""
    if isinstance(value, bool):
        return -1.0
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1.0
    return v if v >= 0 else -1.0


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_admin_api_answers_as_documented_and_never_5xx(case: schemathesis.Case, served: ServerProc) -> None:
    query = case.query or {}
    excluded = []
    if query.get("wait") == "final":
        if "timeout" not in query or _seconds(query["timeout"]) > float(WAIT_CAP):
            if case.meta is not None and case.meta.generation.mode is not GenerationMode.POSITIVE:
                # a negative case that would wait: changing it could make it valid, and sending it as is
                # could wait 30 s (an "extra parameter" that is an empty list is not sent at all)
                reject()
            query["timeout"] = WAIT_CAP
            case.query = query
        excluded.append(positive_data_acceptance)  # a wait that runs out is a documented 408, not a refusal
    if "cursor" in query or "since" in query:
        # only the server mints cursors, and `since` is free-form (a duration, an ISO time, epoch seconds):
        # a made-up one is a documented 400, not a refused valid request
        excluded.append(positive_data_acceptance)
    case.call_and_validate(base_url=served.admin_url, timeout=10, excluded_checks=excluded)
