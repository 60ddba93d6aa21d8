"""RFC 9457 problem details: every error the API answers is `application/problem+json`.

`type` is a `tag:` URI (RFC 9457 §3.1.1 allows non-resolvable ones) naming the kind of problem;
`title` is the HTTP reason phrase; `detail` says what went wrong with this request; validation
problems add `errors: [{field, location, message}]`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from shared.logging import get_logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "tag:reelflow,2026:problems/"

_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal-error",
    503: "unavailable",
}

log = get_logger("HTTP")


class FieldError(BaseModel):
    field: str
    location: str
    message: str


class ProblemOut(BaseModel):
    """For the OpenAPI document; responses are built by `problem_response`."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class Problem(Exception):
    """Raise anywhere in a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})
        self.extensions = extensions


def not_found(what: str = "resource") -> Problem:
    return Problem(404, f"{what} not found")


def invalid(errors: Sequence[Mapping[str, str]], detail: str = "the request is invalid") -> Problem:
    return Problem(422, detail, errors=errors)


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: Sequence[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + (slug or _SLUGS.get(status, "error")),
        "title": _phrase(status),
        "status": status,
        "detail": detail,
        **extensions,
    }
    if errors is not None:
        body["errors"] = list(errors)
    # ensure_ascii: echoed names (an unknown field, a question id) may hold lone surrogates.
    content = json.dumps(body, ensure_ascii=True, default=str).encode()
    return Response(content, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _field(loc: Sequence[Any]) -> tuple[str, str]:
    """(location, dotted path) from a pydantic/FastAPI `loc`, e.g. ('body', 'params', 'model')."""
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        location, rest = str(loc[0]), loc[1:]
    else:
        location, rest = "body", loc
    return location, ".".join(str(p) for p in rest)


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        location, field = _field(err.get("loc", ()))
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            message = f"malformed JSON: {err.get('ctx', {}).get('error', 'decode error')}"
            field = ""
        out.append({"field": field, "location": location, "message": message})
    return out


async def _on_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_of(exc)


def problem_of(exc: Problem) -> Response:
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        errors=exc.errors,
        headers=exc.headers,
        **exc.extensions,
    )


async def _on_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc)
    if errors and all(e["location"] == "path" for e in errors):
        # A malformed id in the path names nothing that exists: 404, like an unknown id.
        return problem_response(404, "resource not found")
    return problem_response(422, "the request is invalid", errors=errors)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's answer to a body json.loads cannot decode (bad UTF-8, too deep): as
        # malformed JSON, a 422 like every other invalid body.
        return problem_response(
            422,
            "the request is invalid",
            errors=[{"field": "", "location": "body", "message": "malformed JSON"}],
        )
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(status)
    if status == 404 and detail == "Not Found":
        detail = "no such route"
    elif status == 405:
        detail = "method not allowed on this route"
        return problem_response(status, detail, headers={"Allow": _allowed(request)})
    return problem_response(status, detail, headers=exc.headers)


def _allowed(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)


# For route decorators: the problem documents a route may answer, in the OpenAPI document.
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {
            "model": ProblemOut,
            "description": _phrase(s),
            "content": {PROBLEM_JSON: {}},
        }
        for s in statuses
    }
