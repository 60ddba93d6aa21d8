"""The OpenAPI document names the 429 every keyed route may answer (rate limits live in the
auth dependency, which FastAPI cannot describe), so clients and schema checkers expect it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api.problems import PROBLEM_JSON

_KEYED = "HTTPBearer"  # the security scheme of user API keys (api.deps, api.streamauth)
_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")


def document_rate_limits(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for item in schema.get("paths", {}).values():
            for method in _METHODS:
                operation = item.get(method)
                if not operation or not any(_KEYED in s for s in operation.get("security", [])):
                    continue
                operation.setdefault("responses", {}).setdefault(
                    "429",
                    {
                        "description": "Too Many Requests (rate limit or quota; see Retry-After)",
                        "headers": {
                            "Retry-After": {
                                "description": "Seconds to wait before trying again",
                                "schema": {"type": "integer"},
                            }
                        },
                        "content": {
                            PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemOut"}}
                        },
                    },
                )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
