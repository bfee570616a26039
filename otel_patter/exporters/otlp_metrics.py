"""The `patter_*` Prometheus families as one OTLP metrics request (cumulative temporality).

Used by `metrics.otlp_push`: every interval the current values are enqueued to the chosen
forward targets' persistent queues, so a push survives a downstream outage like any
other forwarded data. Counters become monotonic cumulative Sums (start time from the
`_created` sample), gauges Gauges, histograms explicit-bucket Histograms. Label values
are the allowlisted Prometheus ones.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client import CollectorRegistry

from otel_patter import __version__

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def _key(labels: dict[str, str], drop: str = "") -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def _attrs(target: Any, labels: tuple[tuple[str, str], ...]) -> None:
    for k, v in labels:
        target.add(key=k).value.string_value = v


def registry_to_otlp(registry: CollectorRegistry, now_ns: int, prefix: str = "patter_") -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, (("service.name", "otel-patter"), ("service.version", __version__)))
    sm = rm.scope_metrics.add()
    sm.scope.name = "otel-patter"
    sm.scope.version = __version__
    for family in registry.collect():
        if not family.name.startswith(prefix) or family.type not in ("counter", "gauge", "histogram"):
            continue
        created = {_key(s.labels): int(s.value * 1e9) for s in family.samples if s.name.endswith("_created")}
        metric = sm.metrics.add(name=family.name, description=family.documentation, unit=family.unit or "")
        if family.type == "counter":
            metric.sum.aggregation_temporality = CUMULATIVE
            metric.sum.is_monotonic = True
            for s in family.samples:
                if s.name.endswith("_total"):
                    dp = metric.sum.data_points.add(as_double=float(s.value), time_unix_nano=now_ns,
                                                    start_time_unix_nano=created.get(_key(s.labels), 0))
                    _attrs(dp.attributes, _key(s.labels))
        elif family.type == "gauge":
            for s in family.samples:
                dp = metric.gauge.data_points.add(as_double=float(s.value), time_unix_nano=now_ns)
                _attrs(dp.attributes, _key(s.labels))
        else:
            metric.histogram.aggregation_temporality = CUMULATIVE
            series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
            for s in family.samples:
                key = _key(s.labels, drop="le")
                cur = series.setdefault(key, {"buckets": [], "sum": 0.0, "count": 0})
                if s.name.endswith("_bucket"):
                    cur["buckets"].append((float(s.labels["le"]), int(s.value)))
                elif s.name.endswith("_sum"):
                    cur["sum"] = float(s.value)
                elif s.name.endswith("_count"):
                    cur["count"] = int(s.value)
            for key, cur in series.items():
                buckets = sorted(cur["buckets"])
                dp = metric.histogram.data_points.add(time_unix_nano=now_ns, start_time_unix_nano=created.get(key, 0),
                                                      count=cur["count"], sum=cur["sum"])
                dp.explicit_bounds.extend(b for b, _ in buckets if b != float("inf"))
                previous = 0
                for _, cumulative in buckets:
                    dp.bucket_counts.append(cumulative - previous)
                    previous = cumulative
                _attrs(dp.attributes, key)
    return req
