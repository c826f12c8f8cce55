"""Optional OpenTelemetry tracing (TRACING__ENABLED, the ``otel`` extra): one server span per chatmem RPC."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import grpc

from server.interceptors import Call, code_of

log = logging.getLogger(__name__)


def build_tracing_layer(enabled: bool, tracer_provider: Any = None) -> TracingLayer | None:
    """Return the tracing layer, or None when tracing is off or opentelemetry-api is not installed.

    Args:
        enabled: TRACING__ENABLED.
        tracer_provider: where spans go; by default the process's OpenTelemetry tracer provider (set up
            by the OpenTelemetry SDK or ``opentelemetry-instrument``; without one, spans are dropped).
    """
    if not enabled:
        return None
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        log.warning("TRACING__ENABLED is set but opentelemetry-api is not installed (install the otel extra)")
        return None
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()

    def error(name: str) -> Any:
        return trace.Status(trace.StatusCode.ERROR, name)

    return TracingLayer(provider.get_tracer("chatmem.server"), propagate.extract, trace.SpanKind.SERVER, error)


class TracingLayer:
    """Starts a SERVER span per RPC, continuing the caller's trace from its ``traceparent`` metadata."""

    def __init__(self, tracer: Any, extract: Any, kind: Any, error: Any) -> None:
        self._tracer = tracer
        self._extract = extract
        self._kind = kind
        self._error = error

    def around(self, call: Call) -> _Traced:
        """Return the span scope of one RPC."""
        return _Traced(self, call)


class _Traced:
    __slots__ = ("_call", "_layer", "_scope", "_span")

    def __init__(self, layer: TracingLayer, call: Call) -> None:
        self._layer = layer
        self._call = call
        self._scope: Any = None
        self._span: Any = None

    async def __aenter__(self) -> None:
        call, layer = self._call, self._layer
        self._scope = layer._tracer.start_as_current_span(
            call.method[1:],
            context=layer._extract(call.metadata),
            kind=layer._kind,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": call.service,
                "rpc.method": call.name,
                "chatmem.request_id": call.request_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        self._span = self._scope.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        code = code_of(exc, self._call.context)
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            self._span.set_status(self._layer._error(code.name))
        self._scope.__exit__(None, None, None)
