"""Signed media links: served with the right type and Range support; tampered or expired: 403."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from shared.media import LinkSigner
from shared.settings import Settings

from .conftest import CompleteWithMedia

Problem = Callable[[httpx.Response, int], dict[str, Any]]

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100 + b"\xff\xd9"


@pytest.fixture
async def completed(
    create: Callable[..., Awaitable[dict[str, Any]]],
    complete_with_media: CompleteWithMedia,
    client: httpx.AsyncClient,
    user: dict[str, Any],
) -> dict[str, Any]:
    gen = await create("a fox")
    await complete_with_media(user["id"], gen["id"], VIDEO, JPEG)
    r = await client.get(f"/v1/generations/{gen['id']}", headers=user["headers"])
    return r.json()["result"]


def _local(url: str) -> str:
    """The signed link's path and query (the ASGI client has its own host)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_signed_links_serve_the_files_without_a_key(
    client: httpx.AsyncClient, completed: dict[str, Any]
) -> None:
    video = await client.get(_local(completed["video_url"]))
    assert video.status_code == 200 and video.content == VIDEO
    assert video.headers["content-type"] == "video/mp4"
    assert video.headers["accept-ranges"] == "bytes"
    thumb = await client.get(_local(completed["thumbnail_url"]))
    assert thumb.status_code == 200 and thumb.content == JPEG
    assert thumb.headers["content-type"] == "image/jpeg"
    head = await client.head(_local(completed["video_url"]))
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(VIDEO)


async def test_range_requests_get_206(client: httpx.AsyncClient, completed: dict[str, Any]) -> None:
    url = _local(completed["video_url"])
    r = await client.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == VIDEO[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(VIDEO)}"
    tail = await client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == VIDEO[-10:]
    beyond = await client.get(url, headers={"Range": f"bytes={len(VIDEO) + 10}-"})
    assert beyond.status_code == 416


async def test_tampered_links_are_a_403(
    client: httpx.AsyncClient, completed: dict[str, Any], problem: Problem
) -> None:
    parts = urlsplit(completed["video_url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    other = path.replace(".mp4", ".jpg")
    cases = [
        f"{path}?exp={query['exp']}&sig={query['sig'][:-2]}xx",  # signature altered
        f"{path}?exp={int(query['exp']) + 3600}&sig={query['sig']}",  # lifetime extended
        f"{other}?exp={query['exp']}&sig={query['sig']}",  # another file, same signature
        f"{path}?exp={query['exp']}",  # no signature
        path,  # unsigned
    ]
    for url in cases:
        problem(await client.get(url), 403)


async def test_expired_links_are_a_403(
    client: httpx.AsyncClient, completed: dict[str, Any], prepared: Settings, problem: Problem
) -> None:
    assert prepared.media_signing_key is not None
    signer = LinkSigner(prepared.media_signing_key.get_secret_value().encode(), 60)
    key = urlsplit(completed["video_url"]).path.removeprefix("/media/")
    fresh = signer.sign(key)
    assert (
        await client.get(f"/media/{key}?exp={fresh['exp']}&sig={fresh['sig']}")
    ).status_code == 200
    old = signer.sign(key, now=time.time() - 3600)
    problem(await client.get(f"/media/{key}?exp={old['exp']}&sig={old['sig']}"), 403)


async def test_a_signed_link_to_a_missing_file_is_a_404(
    client: httpx.AsyncClient, clean_db: None, prepared: Settings, problem: Problem
) -> None:
    assert prepared.media_signing_key is not None
    signer = LinkSigner(prepared.media_signing_key.get_secret_value().encode(), 60)
    for key in ("videos/nobody/nothing.mp4", "../outside.mp4"):
        q = signer.sign(key)
        problem(await client.get(f"/media/{key}?exp={q['exp']}&sig={q['sig']}"), 404)
