"""What the OpenAPI document says about errors, made true for every operation.

FastAPI cannot describe what happens outside a route's own declarations, so after it builds the
document:
- problem responses carry their schema under `application/problem+json`, the type they are sent
  with (FastAPI files a `responses=` model under `application/json`);
- a 422 is the problem document with `errors` (FastAPI documents its own validation body, which
  `api.problems` replaces);
- every operation with a user key names the 429 of the rate limits (`api.ratelimit`, inside the
  auth dependency) with its `Retry-After` header.
Schemathesis (services/api/tests/test_schemathesis.py) holds the answers to this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api.problems import PROBLEM_JSON

_KEYED = "HTTPBearer"  # the security scheme of user API keys (api.deps, api.streamauth)
_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
_PROBLEM = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemOut"}}}


def _problem(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": dict(_PROBLEM), **extra}


def _fix(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, response in responses.items():
        content = response.get("content") or {}
        if PROBLEM_JSON in content:
            response["content"] = dict(_PROBLEM)
        elif status == "422":
            responses[status] = _problem("Unprocessable Content (`errors` says what and where)")
    if any(_KEYED in s for s in operation.get("security", [])):
        retry_after = {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer"},
            }
        }
        limited = _problem("Too Many Requests (a rate limit or a quota)", headers=retry_after)
        responses.setdefault("429", limited)


def complete_openapi(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for item in schema.get("paths", {}).values():
            for method in _METHODS:
                if method in item:
                    _fix(item[method])
        # The validation bodies FastAPI documents by default are never sent.
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
