"""OpenTelemetry tracing: the SDK set-up from the standard `OTEL_*` variables, the W3C trace
context carried through the outbox and RabbitMQ, and small span helpers.

One trace per generation. The API's request span is the root; `outbox.enqueue` stores the
current `traceparent` with each row; the relay publishes every row inside a PRODUCER span
that is a child of the stored context and sends *that* span's `traceparent`; each consumer
(`consumer.traced`) runs a CONSUMER span under it, whose context flows into the rows it
writes. The generation row keeps its creation context, so a later move made in another trace
(a confirm request, a deadline) still announces its events in the generation's trace
(`generation_span`). The worker keeps the context with its job row for the same reason.

Cost: with no exporter (the default) the SDK runs with an always-off sampler, so span and trace
ids are still made and passed on (log lines, webhooks and `reelflow generations show` carry the
trace id) but nothing is recorded, buffered or sent. An unreachable collector costs a warning
from the exporter's background thread, never a failed request.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from shared.logging import current_context, redact, register_secrets, set_service
from shared.settings import Settings

TRACER_NAME = "reelflow"
GENERATION_ID = "reelflow.generation_id"
USER_ID = "reelflow.user_id"

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


def tracer() -> trace.Tracer:
    """The process's tracer (a no-op one until `setup_telemetry` ran)."""
    return _tracer


def setup_telemetry(
    service: str, settings: Settings, *, exporter: SpanExporter | None = None
) -> None:
    """Set up tracing for this process, once: the first service set up in a process names it
    (tests run several in one). `exporter` replaces the configured one (tests)."""
    global _provider, _tracer
    set_service(service)
    register_secrets(_configured_secrets(settings))
    if _provider is not None and exporter is None:
        return
    if settings.otel_sdk_disabled:
        _tracer = trace.NoOpTracer()
        return
    exporters = [exporter] if exporter is not None else _exporters(settings)
    # A collector that is away: one error line per lost batch, not one per retry.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.ERROR)
    resource = Resource.create(
        {
            "service.name": settings.otel_service_name or f"reelflow-{service}",
            "service.namespace": "reelflow",
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }
    )
    # No exporter: ids without recording. Otherwise OTEL_TRACES_SAMPLER (SDK default: parent
    # based, always on).
    provider = TracerProvider(resource=resource, sampler=None if exporters else ALWAYS_OFF)
    provider.add_span_processor(_Labels())
    for each in exporters:
        inner = SimpleSpanProcessor(each) if exporter is not None else BatchSpanProcessor(each)
        provider.add_span_processor(_Redacting(inner))
    if _provider is not None:
        _provider.shutdown()
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)


def shutdown_telemetry() -> None:
    """Flush and drop the process's provider (the next `setup_telemetry` sets up afresh)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, trace.NoOpTracer()


def flush(timeout_seconds: float = 3.0) -> None:
    """Send what is buffered (blocking; call from a thread at shutdown)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_seconds * 1000))


def _exporters(settings: Settings) -> list[SpanExporter]:
    names = set(settings.otel_traces_exporter.split(",")) - {"none"}
    found: list[SpanExporter] = []
    if "console" in names:
        found.append(ConsoleSpanExporter())
    if "otlp" in names:
        found.append(_otlp(settings))
    return found


def _otlp(settings: Settings) -> SpanExporter:
    base = settings.otel_exporter_otlp_endpoint
    endpoint = settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_protocol == "grpc":
        # Imported only when asked for: grpc is a heavy import.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint or base)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if endpoint is None and base is not None:
        endpoint = base.rstrip("/") + "/v1/traces"  # the spec's rule for the base variable
    return HttpExporter(endpoint=endpoint)


def _configured_secrets(settings: Settings) -> list[str | None]:
    values: list[str | None] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            values.append(value.get_secret_value())
    for url in (settings.database_url, settings.amqp_url):
        values.append(urlsplit(url).password)
    return values


# -- context through the outbox and RabbitMQ --------------------------------------------------


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """AMQP header values may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode() if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def inject(carrier: dict[str, Any], context: Context | None = None) -> dict[str, Any]:
    """Write the current (or given) context's `traceparent`/`tracestate` into `carrier`; a
    carrier already holding a `traceparent` keeps it when there is no valid context."""
    propagate.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, Any] | None) -> Context:
    return propagate.extract(carrier or {}, getter=_GETTER)


def carrier() -> dict[str, str] | None:
    """The current context as headers to store with a row (None without a valid span)."""
    found: dict[str, str] = {}
    propagate.inject(found)
    return found or None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`)."""
    parts = (traceparent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1]
    return None


def label(generation_id: Any = None, user_id: Any = None) -> None:
    """Name the generation (and user) the current span is about, once known."""
    span = trace.get_current_span()
    if span.is_recording():
        if generation_id is not None:
            span.set_attribute(GENERATION_ID, str(generation_id))
        if user_id is not None:
            span.set_attribute(USER_ID, str(user_id))


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextmanager
def generation_span(
    name: str, stored: Mapping[str, Any] | None, **attributes: Any
) -> Iterator[Span | None]:
    """Run inside the generation's own trace (`stored`: its creation context).

    Inside that trace already (a consumer of its messages): nothing to do. Elsewhere (a confirm
    request has its own trace; the sweeper has none): an INTERNAL span under the stored context,
    linked to the current span, so what is written here joins the generation's trace."""
    parent = extract(stored)
    stored_context = trace.get_current_span(parent).get_span_context()
    here = trace.get_current_span().get_span_context()
    if not stored_context.is_valid or stored_context.trace_id == here.trace_id:
        yield None
        return
    links = [Link(here)] if here.is_valid else []
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.INTERNAL, links=links, attributes=attributes
    ) as span:
        yield span


# -- HTTP client spans --------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """`url.full` without credentials or query values (a query may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    pairs = parts.query.split("&") if parts.query else []
    query = "&".join(p.split("=", 1)[0] + "=REDACTED" if "=" in p else p for p in pairs)
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


@contextmanager
def client_span(
    method: str, url: str, *, template: str | None = None, **attributes: Any
) -> Iterator[Span]:
    """A CLIENT span for one HTTP request (OpenTelemetry HTTP semantic conventions). Set the
    answer with `http_status(span, code)`; an exception marks the span as an error."""
    parts = urlsplit(url)
    name = f"{method} {template}" if template else method
    attrs: dict[str, Any] = {
        "http.request.method": method,
        "url.full": safe_url(url),
        "server.address": parts.hostname or "",
        **attributes,
    }
    if parts.port or parts.scheme:
        attrs["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    if template:
        attrs["url.template"] = template
    with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs) as span:
        yield span


def http_status(span: Span, status_code: int | None, error: str | None = None) -> None:
    """Record an HTTP answer (or its absence) on a client span: 4xx and 5xx are errors."""
    if not span.is_recording():
        return
    if status_code is not None:
        span.set_attribute("http.response.status_code", status_code)
        if status_code >= 400:
            span.set_attribute("error.type", str(status_code))
            span.set_status(Status(StatusCode.ERROR))
    elif error:
        span.set_attribute("error.type", error.split(":", 1)[0][:100])
        span.set_status(Status(StatusCode.ERROR, error[:300]))


# -- span processors -------------------------------------------------------------------------


class _Labels(SpanProcessor):
    """Every span started where a generation (or user) is known carries its id."""

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        ctx = current_context()
        for key, attribute in (("generation_id", GENERATION_ID), ("user_id", USER_ID)):
            value = ctx.get(key)
            if value is not None and not (span.attributes or {}).get(attribute):
                span.set_attribute(attribute, str(value))


class _Redacting(SpanProcessor):
    """Masks secret values in attributes, events and status before the exporter sees them."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.inner.on_end(redacted(span))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _clean(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not values:
        return None
    changed = False
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, str):
            masked = redact(value)
            changed = changed or masked != value
            value = masked
        out[key] = value
    return out if changed else None


def redacted(span: ReadableSpan) -> ReadableSpan:
    """`span` itself when it holds no secret (the usual case), else a masked copy."""
    attributes = _clean(span.attributes)
    events = [(e, _clean(e.attributes)) for e in span.events]
    description = span.status.description
    masked_description = redact(description) if description else description
    if (
        attributes is None
        and all(c is None for _, c in events)
        and (masked_description == description)
    ):
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes if attributes is not None else span.attributes,
        events=[
            Event(e.name, c if c is not None else e.attributes, e.timestamp) for e, c in events
        ],
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code, masked_description),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
