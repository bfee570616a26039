"""The `patter.call.summary` span: one per finalization, in the call's first trace.

It carries what the envelope says about the call as `patter.summary.*` attributes plus
`patter.call_id` and `patter.summary.revision`, and never a `patter.cost.*` key. Its
resource says `service.name=otel-patter`, which rollup ignores, so a collector that tees
it back to us cannot double count. A re-finalization (a late span reopened the call)
sends a new summary with a new span id and the next revision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_patter import __version__
from otel_patter.exporters import labels
from otel_patter.processors.rollup_state import CallState, GroupAgg
from otel_patter.spans import STATUS_ERROR
from otel_patter.store.envelope_store import parse_iso

SUMMARY_SPAN = "patter.call.summary"
OWN_SERVICE = "otel-patter"
COMPONENTS = ("stt", "tts", "llm", "telephony", "realtime")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended, as label-safe values; None when nothing says."""

    error_layer: str | None
    disconnect_reason: str | None
    error_layers: dict[str, int]  # error spans by (allowlisted) layer
    tenant_raw: Any  # the tenant resource attribute value, before the cardinality cap


def top_side(state: CallState) -> GroupAgg:
    """The side the envelope's top-level figures describe: uut, else the only side seen."""
    sides = state.sides()
    return sides.get("uut") or next(iter(sides.values()), GroupAgg())


def outcome(state: CallState, envelope: dict[str, Any], tenant_attribute: str) -> Outcome:
    g = top_side(state)
    layers: dict[str, int] = {}
    for layer, n in g.error_layers.items():
        key = labels.error_layer(layer)
        layers[key] = layers.get(key, 0) + n
    if g.error_layer is not None:
        layer: str | None = labels.error_layer(g.error_layer)
    elif layers:
        layer = max(sorted(layers), key=lambda k: layers[k])
    elif envelope.get("status") == "error":
        layer = "other"
    else:
        layer = "none"  # no span of the call failed
    reason = labels.disconnect_reason(g.disconnect_reason) if g.disconnect_reason else None
    tenant = g.resource.get(tenant_attribute)
    if tenant is None:
        tenant = next((gg.resource.get(tenant_attribute) for gg in state.groups.values()
                       if gg.resource.get(tenant_attribute) is not None), None)
    return Outcome(layer, reason, layers, tenant)


def _ns(iso: str | None, default: int) -> int:
    if not iso:
        return default
    try:
        return round(parse_iso(iso) * 1000) * 1_000_000
    except ValueError:
        return default


def summary_attributes(envelope: dict[str, Any], out: Outcome) -> dict[str, Any]:
    cost = envelope.get("cost") or {}
    latency = envelope.get("latency") or {}
    attrs: dict[str, Any] = {
        "patter.call_id": envelope["call_id"],
        "patter.summary.revision": int(envelope.get("revision") or 1),
        "patter.summary.usd_total": float(cost.get("total") or 0.0),
    }
    for c in COMPONENTS:
        attrs[f"patter.summary.usd_{c}"] = float(cost.get(c) or 0.0)
    attrs["patter.summary.turns"] = int(envelope.get("turns") or 0)
    attrs["patter.summary.duration_ms"] = float(envelope.get("duration_ms") or 0.0)
    for q in ("p50_ms", "p95_ms", "p99_ms"):
        if latency.get(q) is not None:
            attrs[f"patter.summary.{q}"] = float(latency[q])
    attrs["patter.summary.status"] = str(envelope.get("status") or "")
    if envelope.get("final_reason"):
        attrs["patter.summary.final_reason"] = str(envelope["final_reason"])
    attrs["patter.summary.cost_complete"] = bool(envelope.get("cost_complete"))
    if out.error_layer is not None:
        attrs["patter.summary.error_layer"] = out.error_layer
    if out.disconnect_reason is not None:
        attrs["patter.summary.disconnect_reason"] = out.disconnect_reason
    if envelope.get("pricing_version"):
        attrs["patter.summary.pricing_version"] = str(envelope["pricing_version"])
    return attrs


def build_summary(envelope: dict[str, Any], out: Outcome, now_ns: int) -> ExportTraceServiceRequest | None:
    """The request carrying one summary span; None when the call has no trace to join."""
    trace_hex = envelope.get("trace_id")
    try:
        trace_id = bytes.fromhex(trace_hex) if isinstance(trace_hex, str) else b""
    except ValueError:
        trace_id = b""
    if len(trace_id) != 16 or trace_id == bytes(16):
        return None
    start = _ns(envelope.get("started_at"), now_ns)
    end = max(start, _ns(envelope.get("ended_at"), now_ns))
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _put(rs.resource.attributes, {"service.name": OWN_SERVICE, "service.version": __version__})
    ss = rs.scope_spans.add()
    ss.scope.name = OWN_SERVICE
    ss.scope.version = __version__
    span = ss.spans.add(name=SUMMARY_SPAN, trace_id=trace_id, span_id=summary_span_id(envelope),
                        kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=start, end_time_unix_nano=end)
    _put(span.attributes, summary_attributes(envelope, out))
    if envelope.get("status") == "error":
        span.status.code = STATUS_ERROR
    return req


def summary_span_id(envelope: dict[str, Any]) -> bytes:
    """From the call id and revision: a summary queued again after a crash is the same span, not a second one."""
    digest = hashlib.sha256(f"{envelope.get('call_id')}\0{int(envelope.get('revision') or 1)}".encode(
        "utf-8", "surrogatepass")).digest()
    return digest[:8] if digest[:8] != bytes(8) else digest[8:16]


def _put(target: Any, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        kv = target.add(key=k)
        if isinstance(v, bool):
            kv.value.bool_value = v
        elif isinstance(v, int):
            kv.value.int_value = v
        elif isinstance(v, float):
            kv.value.double_value = v
        else:
            kv.value.string_value = str(v)
