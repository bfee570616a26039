"""The OpenAPI 3.1 document of the admin port, served at `/api/v1/openapi.json`.

Built per server so that it says what the handlers do: the security requirements appear only
when `admin.auth_token` is set (and on `/metrics` only with `admin.metrics_auth`).
A test compares its paths with the routes of the aiohttp app, and a property test (schemathesis)
sends what the document allows, and what it forbids, and checks the answers against it.
"""

from __future__ import annotations

import copy
from typing import Any

from otel_patter import __version__
from otel_patter.admin.query import (
    DEFAULT_LIMIT,
    DEFAULT_WAIT_S,
    MAX_LIMIT,
    MAX_MIN_COUNT,
    MAX_RUN_ID_LEN,
    MAX_WAIT_S,
    SIDES,
    STATUSES,
    UNITS,
)

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_COMPONENTS = ("stt", "tts", "llm", "telephony", "realtime")

_COST = {
    "type": "object",
    "description": "USD by component, each rounded half-even to 6 places; total from the exact sum.",
    "required": [*_COMPONENTS, "total"],
    "properties": {k: _NUM for k in (*_COMPONENTS, "total")},
}
_USAGE_LINE = {
    "type": "object",
    "description": "One priced usage line. Quantities by unit name: seconds, chars, input_tokens, output_tokens, "
                   "minutes, billed_minutes; `usd` is null when the line has no rate (see `unpriced`).",
    "required": ["provider", "usd"],
    "properties": {
        "provider": {"type": "string"},
        "model": _STR_OR_NULL,
        "usd": _NUM_OR_NULL,
        "seconds": _NUM,
        "chars": {"type": "integer"},
        "input_tokens": {"type": "integer"},
        "output_tokens": {"type": "integer"},
        "minutes": _NUM,
        "billed_minutes": _NUM,
    },
}
_USAGE = {"type": "object",
          "additionalProperties": {"type": "array", "items": {"$ref": "#/components/schemas/UsageLine"}}}
_LATENCY = {
    "type": "object",
    "description": "Turn latency in milliseconds: p50/p95/p99 over `patter.latency.ttfb_ms` (linear interpolation), "
                   "`turns_ms` the per-turn figures in turn order; null when nothing was measured.",
    "properties": {
        "p50_ms": _NUM_OR_NULL, "p95_ms": _NUM_OR_NULL, "p99_ms": _NUM_OR_NULL,
        "llm_ttft_p50_ms": _NUM_OR_NULL, "turn_p50_ms": _NUM_OR_NULL,
        "turns_ms": {"type": "array", "items": _NUM},
    },
}
_COUNTS = {
    "type": "object",
    "properties": {k: {"type": "integer"} for k in ("spans", "barge_ins", "tool_calls", "errors", "redactions")},
}
_RUN_IDS = {"type": "array", "items": {"type": "string"},
            "description": "`test.run_id` resource attribute values seen on the call's spans"}
_SIDE = {
    "type": "object",
    "properties": {
        "cost": {"$ref": "#/components/schemas/Cost"},
        "usage": {"$ref": "#/components/schemas/Usage"},
        "turns": {"type": "integer"},
        "latency": {"$ref": "#/components/schemas/Latency"},
        "counts": {"$ref": "#/components/schemas/Counts"},
        "test_run_id": _RUN_IDS,
    },
}
_ENVELOPE = {
    "type": "object",
    "description": "One call's envelope (the `metadata.json` otel-patter writes). Top-level figures are the uut "
                   "side; `sides` has each side.",
    "required": ["schema_version", "writer", "revision", "call_id", "status", "turns", "cost", "cost_complete",
                 "unpriced", "usage", "latency", "sides", "counts", "warnings"],
    "properties": {
        "schema_version": {"type": "string"},
        "writer": {"const": "otel-patter"},
        "revision": {"type": "integer", "minimum": 1},
        "call_id": {"type": "string"},
        "trace_id": _STR_OR_NULL,
        "test_run_id": _RUN_IDS,
        "started_at": _STR_OR_NULL,
        "ended_at": _STR_OR_NULL,
        "duration_ms": _NUM,
        "status": {"enum": list(STATUSES)},
        "final_reason": {"type": ["string", "null"],
                         "enum": ["hangup_usage", "root_span_end", "finalize_request", "idle_timeout",
                                  "sdk_call_end", None]},
        "caller": {"type": "string"},
        "callee": {"type": "string"},
        "direction": {"type": "string"},
        "telephony_provider": {"type": "string"},
        "provider_mode": {"type": "string"},
        "agent": {"type": "object", "additionalProperties": _STR_OR_NULL},
        "turns": {"type": "integer", "minimum": 0},
        "cost": {"$ref": "#/components/schemas/Cost"},
        "cost_complete": {"type": "boolean", "description": "false when some usage has no rate (see unpriced)"},
        "unpriced": {"type": "array", "items": {"type": "object", "required": ["side", "component", "reason"]}},
        "usage": {"$ref": "#/components/schemas/Usage"},
        "latency": {"$ref": "#/components/schemas/Latency"},
        "sides": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Side"}},
        "counts": {"$ref": "#/components/schemas/Counts"},
        "warnings": {"type": "array", "items": {"type": "object", "required": ["code", "text"],
                                                "properties": {"code": {"type": "string"},
                                                               "text": {"type": "string"}}}},
        "error": _STR_OR_NULL,
        "pricing_version": {"type": "string"},
        "reconciliation": {
            "type": ["object", "null"],
            "description": "the SDK's own call report (sdk_ingest) beside the span-derived figures; null without "
                           "one. `difference[component].usd` is spans - SDK, with the known blind spots as `causes`",
            "properties": {
                "reports": {"type": "array", "items": {"enum": ["initiated", "call_start", "call_end"]}},
                "sdk": {"type": ["object", "null"], "additionalProperties": _NUM},
                "spans": {"type": "object", "additionalProperties": _NUM},
                "difference": {"type": ["object", "null"], "additionalProperties": {
                    "type": "object", "required": ["usd", "pct", "causes", "unexplained"],
                    "properties": {"usd": _NUM, "pct": {"type": ["number", "null"]},
                                   "causes": {"type": "array", "items": {"type": "string"}},
                                   "unexplained": {"type": "boolean"}}}},
                "tolerance_usd": _NUM,
                "mismatch": {"type": ["boolean", "null"]},
            },
        },
    },
}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_CALL_LIST = {
    "type": "object",
    "required": ["calls", "count", "next_cursor", "units"],
    "properties": {
        "calls": {"type": "array", "items": {"$ref": "#/components/schemas/Envelope"}},
        "count": {"type": "integer", "description": "calls on this page"},
        "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
        "units": {"$ref": "#/components/schemas/Units"},
    },
}
_CALL_LIST_TIMEOUT = copy.deepcopy(_CALL_LIST)
_CALL_LIST_TIMEOUT["required"] = ["error", *_CALL_LIST["required"]]
_CALL_LIST_TIMEOUT["properties"]["error"] = {"type": "string"}
_CALL_TIMEOUT = {
    "type": "object",
    "required": ["error", "call"],
    "properties": {"error": {"type": "string"},
                   "call": {"oneOf": [{"$ref": "#/components/schemas/Envelope"}, {"type": "null"}],
                            "description": "the call as it is now, or null when no span of it arrived yet"}},
}
_UNITS = {"type": "object", "additionalProperties": {"type": "string"}, "example": UNITS}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _err(description: str) -> dict[str, Any]:
    return _json("#/components/schemas/Error", description)


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


_WAIT = {"name": "wait", "in": "query", "schema": {"enum": ["final"]},
         "description": "`final`: answer once the call (or every matching call) is final"}
_TIMEOUT = {"name": "timeout", "in": "query",
            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": DEFAULT_WAIT_S},
            "description": "seconds to wait with wait=final; then 408 with what is known now"}
_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
            "description": "the call id (e.g. a Twilio CallSid), as the app put it on its spans"}


def build_openapi(*, auth: bool = False, metrics_auth: bool = False) -> dict[str, Any]:
    """The document for a server with (or without) `admin.auth_token` and `admin.metrics_auth`."""
    unreadable = {"503": _err("a call's state could not be read from disk yet (Retry-After)")}
    unauthorized = {"401": _err("missing or wrong bearer token")} if auth else {}
    list_params = [
        {"name": "status", "in": "query", "schema": {"enum": list(STATUSES)}},
        {"name": "since", "in": "query", "schema": {"type": "string", "minLength": 1},
         "description": "calls that started at or after: a duration back from now (`30m`, `1h`, `2d`), "
                        "an ISO 8601 time, or epoch seconds"},
        {"name": "side", "in": "query", "schema": {"enum": list(SIDES)},
         "description": "calls that have this side; with test_run_id or min_cost_usd, those apply to this side"},
        {"name": "min_cost_usd", "in": "query", "schema": {"type": "number", "minimum": 0},
         "description": "calls whose cost.total (of `side` when given) is at least this many USD"},
        {"name": "test_run_id", "in": "query", "schema": {"type": "string", "minLength": 1,
                                                          "maxLength": MAX_RUN_ID_LEN},
         "description": "calls whose spans' resources carried this `test.run_id` (set with OTEL_RESOURCE_ATTRIBUTES)"},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
        {"name": "cursor", "in": "query", "schema": {"type": "string", "minLength": 1},
         "description": "`next_cursor` of the previous page (opaque)"},
        _WAIT,
        _TIMEOUT,
        {"name": "min_count", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_MIN_COUNT, "default": 1},
         "description": "with wait=final: wait until at least this many calls match (and all are final)"},
    ]
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "otel-patter admin API",
            "version": __version__,
            "description": "Per-call USD and latency envelopes of Patter voice-agent calls. Money is USD (keys "
                           "`cost`, `usd`), durations are milliseconds (keys ending `_ms`).",
        },
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "summary": "liveness", "security": [],
                                 "responses": {"200": {"description": "alive", "content": {"application/json": {
                                     "schema": {"type": "object", "required": ["status"],
                                                "properties": {"status": {"const": "ok"}}}}}}}}},
            "/readyz": {"get": {"operationId": "readyz", "summary": "readiness, with the failing check", "security": [],
                                "responses": {
                                    "200": _json("#/components/schemas/Readiness", "ready"),
                                    "503": _json("#/components/schemas/Readiness", "not ready: see checks"),
                                }}},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus self-metrics",
                **({} if metrics_auth else {"security": []}),
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **(unauthorized if metrics_auth else {})}}},
            "/api/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "this document", "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}},
                **unauthorized}}},
            "/api/v1/calls": {"get": {
                "operationId": "listCalls",
                "summary": "calls, newest first, filtered and paged; with wait=final, once the matches are final",
                "parameters": list_params,
                "responses": {
                    "200": _json("#/components/schemas/CallList", "one page of matching calls"),
                    "400": _err("a bad parameter"),
                    "408": _json("#/components/schemas/CallListTimeout",
                                 "wait=final timed out: the matches as they are now"),
                    **unreadable,
                    **unauthorized,
                }}},
            "/api/v1/calls/{call_id}": {"get": {
                "operationId": "getCall",
                "summary": "one call's envelope; with wait=final, once it is final (an id not yet seen waits too)",
                "parameters": [_CALL_ID, _WAIT, _TIMEOUT],
                "responses": {
                    "200": _json("#/components/schemas/Envelope", "the envelope"),
                    "400": _err("a bad parameter"),
                    "404": _err("no such call"),
                    "408": _json("#/components/schemas/CallTimeout", "wait=final timed out"),
                    **unreadable,
                    **unauthorized,
                }}},
            "/api/v1/calls/{call_id}/finalize": {"post": {
                "operationId": "finalizeCall",
                "summary": "finalize the call now instead of waiting for its hang-up, root span or idle timeout",
                "parameters": [_CALL_ID],
                "responses": {
                    "200": _json("#/components/schemas/Envelope", "final now"),
                    "202": _json("#/components/schemas/Envelope", "asked for; not final yet (the store failed)"),
                    "404": _err("no such call"),
                    **unreadable,
                    **unauthorized,
                }}},
            "/": {"get": {"operationId": "page", "summary": "recent calls (HTML, refreshes itself)",
                          "responses": {"200": _html("the page"), **unauthorized}}},
            "/calls/{call_id}": {"get": {"operationId": "callPage",
                                         "summary": "one call (HTML): cost, usage lines priced, per-turn latency",
                                         "parameters": [_CALL_ID],
                                         "responses": {"200": _html("the page"), "404": _html("no such call"),
                                                       **unauthorized}}},
        },
        "components": {"schemas": {
            "Envelope": _ENVELOPE, "Cost": _COST, "Usage": _USAGE, "UsageLine": _USAGE_LINE, "Latency": _LATENCY,
            "Counts": _COUNTS, "Side": _SIDE, "Error": _ERROR, "CallList": _CALL_LIST,
            "CallListTimeout": _CALL_LIST_TIMEOUT, "CallTimeout": _CALL_TIMEOUT, "Units": _UNITS,
            "Readiness": {"type": "object", "required": ["ready", "checks"],
                          "properties": {"ready": {"type": "boolean"},
                                         "checks": {"type": "object", "additionalProperties": {"type": "string"}}}},
        }},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                           "description": "admin.auth_token"}}
        doc["security"] = [{"bearer": []}]
    return doc
