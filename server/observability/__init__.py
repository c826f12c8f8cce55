"""Observability: request context and logs, Prometheus metrics, optional OpenTelemetry tracing."""
