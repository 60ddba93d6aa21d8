"""The API's SERVER span per HTTP request (OpenTelemetry HTTP semantic conventions): the root of
a generation's trace, or a child of the caller's `traceparent` when one is sent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from shared.telemetry import GENERATION_ID, extract, tracer
from starlette.datastructures import Headers
from starlette.types import Scope


@contextmanager
def server_span(scope: Scope, headers: Headers) -> Iterator[Span]:
    """Named `METHOD` until the route is known (`finish` names it `METHOD /route/{template}`)."""
    server = scope.get("server") or ("", None)
    client = scope.get("client") or ("", None)
    attributes = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "server.address": headers.get("host", server[0] or "").split(":")[0],
        "network.protocol.version": scope.get("http_version", "1.1"),
        "client.address": client[0] or "",
        "user_agent.original": headers.get("user-agent", ""),
    }
    if server[1]:
        attributes["server.port"] = server[1]
    with tracer().start_as_current_span(
        scope["method"],
        context=extract(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=True,
    ) as span:
        yield span


def finish(span: Span, scope: Scope, route: str, status: int) -> None:
    if not span.is_recording():
        return
    span.update_name(f"{scope['method']} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    generation_id = (scope.get("path_params") or {}).get("generation_id")
    if generation_id is not None:
        span.set_attribute(GENERATION_ID, str(generation_id))
    if status >= 500:  # a server span's 4xx is the caller's error, not ours
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
