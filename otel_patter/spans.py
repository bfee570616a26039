"""The flat span view shared by rollup, the write-ahead log and restart recovery.

`flatten()` walks a (sanitized) OTLP request once and yields one `SpanRecord` per span.
The WAL stores `record.to_json()`; recovery rebuilds the same record with `from_json()`,
so rollup has exactly one input shape whether a span arrives live or from disk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

STATUS_ERROR = 2


def any_value(v: AnyValue) -> Any:
    """Plain Python value of an OTLP AnyValue (bytes as hex, maps and lists recursively)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        d = v.double_value
        return d if math.isfinite(d) else str(d)
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return None


_PLAIN = frozenset({"string_value", "int_value", "bool_value"})  # kinds whose protobuf value is the plain value


class DuplicateKeys(dict):  # type: ignore[type-arg]
    """An attribute dict whose protobuf list repeated a key (the dict keeps the last value)."""


def attrs_dict(kvs: Any) -> dict[str, Any]:
    """`{key: any_value(value)}` (a later duplicate key wins), with the common kinds inline."""
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        s = v.string_value  # most values are non-empty strings: one read instead of WhichOneof + getattr
        if s:
            out[kv.key] = s
            continue
        i = v.int_value  # then non-zero ints (a oneof: only an int_value reads non-zero)
        if i:
            out[kv.key] = i
            continue
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind in _PLAIN else any_value(v)
    if len(out) != len(kvs):
        return DuplicateKeys(out)
    return out


@dataclass(slots=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attrs: dict[str, Any]
    events: list[dict[str, Any]]  # {"name", "time_ns", "attrs"}
    resource: dict[str, Any]
    scope: str
    # assigned by rollup
    call_id: str | None = None
    side: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Dedupe key: a client retry re-sends the same trace id + span id."""
        return (self.trace_id, self.span_id)

    def to_json(self, resource: Any = None) -> dict[str, Any]:
        """The WAL line's `data`; `resource`, when given, stands for `self.resource` (the WAL writer passes the
        request's shared resource already encoded)."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": {"code": self.status_code, "message": self.status_message},
            "attributes": self.attrs,
            "events": self.events,
            "resource": self.resource if resource is None else resource,
            "scope": self.scope,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SpanRecord:
        status = d.get("status") or {}
        get = d.get
        return cls(d["trace_id"], d["span_id"], get("parent_span_id", ""), get("name", ""), int(get("kind", 0)),
                   int(get("start_ns", 0)), int(get("end_ns", 0)), int(status.get("code", 0)),
                   status.get("message", ""), get("attributes") or {}, get("events") or [], get("resource") or {},
                   get("scope", ""))


_RESOURCE_CACHE_MAX = 1024


class _Resources:
    """Resource attribute dicts shared across requests: an app sends the same resource in every request,
    so it is converted once and every record (and every call that keeps its first resource) shares one
    read-only dict. Keyed by the resource's (already sanitized) encoding; bounded."""

    def __init__(self) -> None:
        self.cache: dict[bytes, dict[str, Any]] = {}

    def get(self, resource: Any) -> dict[str, Any]:
        key = resource.SerializeToString(deterministic=True)
        d = self.cache.get(key)
        if d is None:
            if len(self.cache) >= _RESOURCE_CACHE_MAX:
                self.cache.clear()
            d = self.cache[key] = attrs_dict(resource.attributes)
        return d


_resources = _Resources()


def flatten(request: ExportTraceServiceRequest) -> Iterator[SpanRecord]:
    resources = _resources
    for rs in request.resource_spans:
        resource = resources.get(rs.resource)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for s in ss.spans:
                status = s.status
                events = s.events
                yield SpanRecord(
                    s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                    s.start_time_unix_nano, s.end_time_unix_nano, status.code, status.message,
                    attrs_dict(s.attributes),
                    [{"name": e.name, "time_ns": e.time_unix_nano, "attrs": attrs_dict(e.attributes)}
                     for e in events] if events else [],
                    resource, scope,
                )
