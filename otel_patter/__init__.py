"""otel-patter: an OpenTelemetry companion for Patter voice agents."""

__version__ = "0.1.0"
