"""Traces with the OpenTelemetry SDK: one trace per chunk, and one per HTTP request.

A chunk's trace is a ``soundstream.chunk`` span (kind consumer) from its delivery
to its commit, continuing the W3C ``traceparent`` a sensor put in the message's
AMQP headers when there is one, with an ``extract`` and a ``write`` span under it.
The exporter comes from the standard ``OTEL_*`` variables (``config.trace_exporter``):
with none, no span is made at all, so tracing costs nothing unless asked for; the
incoming ``traceparent``'s trace id still reaches the log lines about that message.

One ``Tracing`` per process, made by the supervisor; the SDK's global provider is
never set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE_NAME = "soundstream"
TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_PROPAGATOR = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[Mapping[Any, Any]]):
    """W3C trace context from headers of any shape: AMQP tables (values as str or
    bytes), ASGI header lists turned into a mapping. Anything else reads as absent."""

    def get(self, carrier: Mapping[Any, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("latin-1")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[Any, Any]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


_GETTER = _HeaderGetter()


def trace_id_of(headers: object) -> str | None:
    """The trace id of a valid ``traceparent`` header, for log lines."""
    if not isinstance(headers, Mapping):
        return None
    values = _GETTER.get(headers, TRACEPARENT)
    match = _TRACEPARENT.fullmatch(values[0].strip()) if values else None
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # Imported only when asked for: it pulls in protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*


class Tracing:
    """Spans for one process, or none when no exporter is configured."""

    def __init__(self, exporter: str) -> None:
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if exporter != "none":
            # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES;
            # the provider reads OTEL_TRACES_SAMPLER, the processor OTEL_BSP_*.
            resource = Resource.create({"service.name": SERVICE_NAME})
            self._provider = TracerProvider(resource=resource)
            self._provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
            self._tracer = self._provider.get_tracer("soundstream")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def shutdown(self) -> None:
        """Export what is pending and stop (blocks: run it in a thread)."""
        if self._provider is not None:
            self._provider.shutdown()

    # --- chunks ------------------------------------------------------------------

    def chunk(self, headers: object, attributes: Mapping[str, Any], start_ns: int) -> Span | None:
        """The span of one delivered chunk, child of its ``traceparent`` if valid."""
        if self._tracer is None:
            return None
        parent = None
        if isinstance(headers, Mapping):
            try:
                parent = _PROPAGATOR.extract(headers, getter=_GETTER)
            except Exception:  # hostile headers never stop a delivery
                parent = None
        return self._tracer.start_span(
            "soundstream.chunk",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=dict(attributes),
            start_time=start_ns,
        )

    def step(
        self,
        spans: Iterable[object],
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """A finished step (``extract``, ``write``) under each of ``spans``, timed by
        the caller: one step of a batch of chunks appears in each chunk's trace."""
        if self._tracer is None:
            return
        for parent in spans:
            if not isinstance(parent, Span):
                continue
            step = self._tracer.start_span(
                name,
                context=trace.set_span_in_context(parent),
                attributes=dict(attributes or {}),
                start_time=start_ns,
            )
            step.end(end_time=end_ns)

    @staticmethod
    def finish(span: object, error: str | None = None) -> None:
        """End a span made here (anything else, such as None, is ignored)."""
        if not isinstance(span, Span):
            return
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    # --- HTTP --------------------------------------------------------------------

    def request(self, headers: Mapping[str, str], method: str) -> Span | None:
        """A server span for one HTTP request, continuing the client's
        ``traceparent``; named by route template once routing has found it."""
        if self._tracer is None:
            return None
        parent = _PROPAGATOR.extract(headers, getter=_GETTER)
        return self._tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes={"http.request.method": method}
        )
