"""The one lifecycle and the one batch type every pipeline stage shares.

Like the collector's `Start`/`Shutdown` + `ConsumeTraces`: each stage is a small class
with `start()`, `shutdown()` and `consume(batch)`. Only `pipeline` knows their order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from otel_patter.spans import SpanRecord


class Component(Protocol):
    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class Stage:
    """A stage with nothing to start or stop (it only transforms batches in `consume`)."""

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


@dataclass(slots=True)
class TraceBatch:
    """One OTLP export request on its way through the pipeline.

    `request` is decoded once and mutated in place by processors (bad spans removed,
    PII scrubbed); `records` are the flat per-span views rollup and the store share.
    """

    request: ExportTraceServiceRequest
    transport: str = "grpc"  # grpc | http/protobuf | http/json
    rejected: int = 0  # spans dropped as invalid; reported in partial_success
    messages: list[str] = field(default_factory=list)  # partial_success error_message parts
    records: list[SpanRecord] = field(default_factory=list)
    plan: Any = None  # rollup's WritePlan: what the store must make durable before the ack
    arrival: float = 0.0  # wall-clock receive time

    def reject(self, count: int, message: str) -> None:
        self.rejected += count
        if message not in self.messages:
            self.messages.append(message)
