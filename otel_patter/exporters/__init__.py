"""Outputs: forwarding to OTLP downstreams (persistent queues), the call summary span, `patter_*` metrics."""
