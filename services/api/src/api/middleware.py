"""Pure ASGI middleware: request ids, logging and metrics, the catch-all 500, the body limit."""

from __future__ import annotations

import re
import time
import uuid

from opentelemetry.trace import Span
from shared.logging import get_logger, log_context
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response
from api.tracing import finish, server_span

log = get_logger("HTTP")

DRAIN_LIMIT_BYTES = 1024 * 1024
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: logged at debug only
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(headers: Headers) -> str:
    """The caller's `X-Request-ID` when it is a sane token, else a new one."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


class RequestContextMiddleware:
    """Outermost: the request's SERVER span (probes get none), a request id in the log context
    and the response, one access line, request metrics by route template, and a problem+json
    500 for anything a handler let escape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"] in _QUIET:
            await self._handle(scope, receive, send, headers)
            return
        with server_span(scope, headers) as span:
            await self._handle(scope, receive, send, headers, span)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        span: Span | None = None,
    ) -> None:
        request_id = request_id_from(headers)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("Unhandled error", method=scope["method"], path=scope["path"])
                if response_started:
                    raise  # nothing sound left to send; the server closes the connection
                await problem_response(500, "an internal error occurred; it has been logged")(
                    scope, receive, send_with_id
                )
            finally:
                elapsed = time.perf_counter() - started
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                if span is not None:
                    finish(span, scope, template, status)
                metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
                if metrics is not None:
                    metrics.observe(scope["method"], template, status, elapsed)
                (log.debug if template in _QUIET else log.info)(
                    "Request handled",
                    method=scope["method"],
                    route=template,
                    status=status,
                    duration_ms=round(elapsed * 1000, 1),
                )


class BodyLimitMiddleware:
    """Read the whole body before the app sees it and answer 413 once it passes `max_bytes`,
    whether or not a Content-Length was sent (chunked bodies are counted as they arrive)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            drain = int(declared) <= DRAIN_LIMIT_BYTES
            await self._too_large(scope, receive, send, drain=drain)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, drain=more)
                return
            chunks.append(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, *, drain: bool) -> None:
        # Many clients (httpx among them) read no response before their upload is done: read
        # and drop a modest rest so they see the 413; past that, answer and close.
        drained = 0
        while drain and drained <= DRAIN_LIMIT_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            drain = message.get("more_body", False)
        response = problem_response(
            413,
            f"the request body is larger than {self.max_bytes} bytes",
            headers={"Connection": "close"} if drain else None,
        )
        await response(scope, receive, send)
