"""Which addresses a user-registered webhook may reach.

The check runs on the addresses the connection is actually made to: the resolver hands the
HTTP client only addresses that passed, and IP literals (which never reach a resolver) are
checked before the request. Every attempt (first, retry, manual redelivery) connects through
here, and redirects are never followed, so a 3xx to an internal address goes nowhere.
`NEXTJS_URL`, set by the operator, is trusted and skips this. The address rules themselves are
`shared.webhook_urls.is_forbidden`, which the API's registration check uses too.
"""

from __future__ import annotations

import socket
from typing import Any

from aiohttp import DefaultResolver
from aiohttp.abc import AbstractResolver, ResolveResult
from shared.webhook_urls import is_forbidden

__all__ = ["ForbiddenAddress", "GuardedResolver", "check_literal", "is_forbidden"]


class ForbiddenAddress(OSError):
    """The webhook URL leads to an address we refuse to call."""


def check_literal(host: str) -> None:
    """Raise for a forbidden IP literal; names are checked by `GuardedResolver`."""
    try:
        forbidden = is_forbidden(host.strip("[]"))
    except ValueError:
        return  # a name, not an address
    if forbidden:
        raise ForbiddenAddress(f"{host} is not a public address")


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then keeps only public addresses."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not is_forbidden(r["host"])]
        if not allowed:
            refused = ", ".join(sorted({r["host"] for r in results}))
            raise ForbiddenAddress(f"{host} resolves only to non-public addresses ({refused})")
        return allowed

    async def close(self, *args: Any) -> None:
        await self._inner.close()
