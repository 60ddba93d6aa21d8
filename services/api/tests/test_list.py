"""`GET /v1/generations`: newest first, keyset pages with an opaque cursor, a status filter."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

Problem = Callable[[httpx.Response, int], dict[str, Any]]
Create = Callable[..., Awaitable[dict[str, Any]]]


async def _all_pages(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/generations", params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def test_pages_cover_every_item_once_newest_first(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    create: Create,
    make_user: Callable[[str], Awaitable[dict[str, Any]]],
) -> None:
    made = [(await create(f"fox number {i} in the snow"))["id"] for i in range(23)]
    other = await make_user("bob")
    await client.post("/v1/generations", json={"prompt": "not alice's"}, headers=other["headers"])

    pages = await _all_pages(client, user["headers"], limit=10)
    assert [len(p) for p in pages] == [10, 10, 3]
    ids = [g["id"] for page in pages for g in page]
    assert ids == list(reversed(made))
    stamps = [g["created_at"] for page in pages for g in page]
    assert stamps == sorted(stamps, reverse=True)


async def test_default_limit_is_20_and_an_exact_fit_has_no_next_page(
    client: httpx.AsyncClient, user: dict[str, Any], create: Create
) -> None:
    for i in range(20):
        await create(f"fox number {i}")
    body = (await client.get("/v1/generations", headers=user["headers"])).json()
    assert len(body["items"]) == 20 and body["next_cursor"] is None
    await create("one more fox")
    body = (await client.get("/v1/generations", headers=user["headers"])).json()
    assert len(body["items"]) == 20 and body["next_cursor"]


async def test_status_filter(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    create: Create,
    set_row: Callable[..., Awaitable[None]],
) -> None:
    ids = [(await create(f"fox {i}"))["id"] for i in range(5)]
    for gid in ids[:3]:
        await set_row(gid, status="cancelled")
    pages = await _all_pages(client, user["headers"], status="cancelled", limit=2)
    assert sorted(g["id"] for p in pages for g in p) == sorted(ids[:3])
    assert all(g["status"] == "cancelled" for p in pages for g in p)
    r = await client.get("/v1/generations?status=completed", headers=user["headers"])
    assert r.json() == {"items": [], "next_cursor": None}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("status=", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=1e3", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=%FF%FE", "cursor"),
        ("cursor=" + _b64(b"[1,2]"), "cursor"),
        ("cursor=" + _b64(b'["2026-01-01T00:00:00","not-a-uuid"]'), "cursor"),
        (
            "cursor="
            + _b64(b'["2026-01-01T00:00:00",' + b'"00000000-0000-0000-0000-000000000000"]'),
            "cursor",
        ),  # a naive timestamp: not one of ours
        ("cursor=" + _b64(b"[" * 5000), "cursor"),
        ("cursor=" + "A" * 501, "cursor"),
    ],
)
async def test_bad_query_is_a_422(
    client: httpx.AsyncClient, user: dict[str, Any], problem: Problem, query: str, field: str
) -> None:
    r = await client.get(f"/v1/generations?{query}", headers=user["headers"])
    errors = problem(r, 422)["errors"]
    assert errors[0]["field"] == field and errors[0]["location"] == "query"
