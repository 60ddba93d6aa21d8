"""The status read, `GET /v1/generations/{id}`, answered without FastAPI's routing and
dependency machinery: the route clients poll, so the one whose cost per request matters most.

Pure ASGI, innermost of the app's middleware. It serves only the plain case (a GET of a
canonical id with a bearer key) and does what the route does, with the same functions
(`api.deps.admit`, `api.queries`, `api.routes.generations.status_response`), the key and the
row read in one round trip: the same answers, 200 and 304 and their headers, and the same
problems (401, 404, 429, rendered as the app's exception handler renders them). Anything else
(no or another kind of credentials, an id in another spelling, other methods) goes on to the
app, whose route answers it. It names the route in the scope as the router would, so the
access log, the metrics and the span see the route's template.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.auth import hash_api_key
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import admit
from api.problems import Problem, not_found, problem_of
from api.queries import caller_and_generation
from api.routes import generations

PREFIX = "/v1/generations/"
_ID_CHARS = 36  # the canonical 8-4-4-4-12 form


def _read_route() -> Route:
    """The route the router would have matched (`scope["route"]`: the access log, metrics and
    span name requests by its template)."""
    for route in generations.router.routes:
        if isinstance(route, Route) and route.endpoint is generations.read:
            return route
    raise LookupError("the status read route is not in api.routes.generations")


class StatusReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = _read_route()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or len(path) != len(PREFIX) + _ID_CHARS
            or not path.startswith(PREFIX)
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        token, if_none_match = _headers(scope["headers"])
        try:
            generation_id = uuid.UUID(path[len(PREFIX) :])
        except ValueError:
            generation_id = None
        if token is None or generation_id is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        scope["endpoint"] = self.route.endpoint
        scope["path_params"] = {"generation_id": generation_id}
        state = scope["app"].state
        try:
            # `authorize` and `owned_generation_row` in one round trip (the key found, then
            # admitted or not, before the row is looked at: the same answers in the same order).
            digest = hash_api_key(token)
            state.rate_limiter.check_local(digest)
            found, gen = await caller_and_generation(state.pg, token, digest, generation_id)
            await admit(state, digest, found)
            if gen is None:
                raise not_found("generation")
        except Problem as exc:
            response = problem_of(exc)
        else:
            response = await generations.status_response(gen, if_none_match, state.storage)
        await response(scope, receive, send)


def _headers(raw: Any) -> tuple[str | None, str | None]:
    """(the bearer token, If-None-Match), each from its first header, as FastAPI reads them
    (`HTTPBearer`, `Header()`); no token for anything but `Bearer <token>`."""
    authorization = if_none_match = None
    for name, value in raw:
        if name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"if-none-match" and if_none_match is None:
            if_none_match = value.decode("latin-1")
    if not authorization:
        return None, if_none_match
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if not scheme or not token or scheme.lower() != "bearer":
        return None, if_none_match
    return token, if_none_match
