"""The local media route reads nothing outside its folder, even with a valid signature: `..`
(plain and percent-encoded), absolute paths, NUL bytes, symlinks (to a file or a folder) that
point out. And a signature opens only the key it was made for: the same link with another key,
a path spelled differently, a changed expiry or a stream token for a signature is a 403.
(Plain tampering and expiry: test_media.py.)"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from shared.media import LinkSigner
from shared.settings import Settings

Problem = Callable[[httpx.Response, int], dict[str, Any]]
SECRET_BYTES = b"outside the media folder: must never be served"


@pytest.fixture
def signer(prepared: Settings) -> LinkSigner:
    assert prepared.media_signing_key is not None
    return LinkSigner(prepared.media_signing_key.get_secret_value().encode(), 300)


@pytest.fixture
def layout(prepared: Settings, clean_db: None) -> dict[str, str]:
    """A real video inside the folder; a file and a folder outside it; symlinks to both."""
    root = Path(prepared.local_storage_dir).resolve()
    outside = root.parent / f"outside-{uuid.uuid4().hex[:8]}"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(SECRET_BYTES)
    inside = root / "videos" / uuid.uuid4().hex
    inside.mkdir(parents=True)
    (inside / "ok.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 inside")
    os.symlink(outside / "secret.mp4", inside / "link.mp4")
    os.symlink(outside, inside / "linkdir")
    rel_inside = inside.relative_to(root).as_posix()
    depth = "../" * len(inside.relative_to(root.parent).parts)
    return {
        "ok": f"{rel_inside}/ok.mp4",
        "file link": f"{rel_inside}/link.mp4",
        "folder link": f"{rel_inside}/linkdir/secret.mp4",
        "dot-dot": f"../{outside.name}/secret.mp4",
        "deep dot-dot": f"{rel_inside}/{depth}{outside.name}/secret.mp4",
        "absolute": str(outside / "secret.mp4"),
        "root file": "../../../../../../../../etc/passwd",
    }


def signed(signer: LinkSigner, key: str, path: str | None = None) -> str:
    """A link to `key` signed as the API signs, its path spelled `path` (default: as signed)."""
    return f"/media/{path if path is not None else quote(key)}?{urlencode(signer.sign(key))}"


async def test_a_valid_signature_does_not_open_anything_outside(
    client: httpx.AsyncClient, signer: LinkSigner, layout: dict[str, str], problem: Problem
) -> None:
    ok = await client.get(signed(signer, layout["ok"]))
    assert ok.status_code == 200 and ok.content.endswith(b"inside")
    for name in ("file link", "folder link", "dot-dot", "deep dot-dot", "absolute", "root file"):
        key = layout[name]
        for path in (quote(key), quote(key, safe=""), key.replace("/", "%2f")):
            r = await client.get(signed(signer, key, path))
            assert r.status_code in (403, 404), (name, path, r.status_code)
            assert SECRET_BYTES not in r.content and b"root:" not in r.content, (name, path)
            problem(r, r.status_code)


async def test_odd_bytes_in_the_key_are_refused_not_crashed_on(
    client: httpx.AsyncClient, signer: LinkSigner, layout: dict[str, str], problem: Problem
) -> None:
    for key in (layout["ok"] + "\x00.jpg", "videos/\x00", "videos/%ff", "\\..\\..\\etc\\passwd"):
        r = await client.get(signed(signer, key))
        assert r.status_code in (403, 404), (key, r.status_code)
        problem(r, r.status_code)


async def test_a_signature_opens_only_its_own_key(
    client: httpx.AsyncClient,
    signer: LinkSigner,
    layout: dict[str, str],
    problem: Problem,
    prepared: Settings,
) -> None:
    key = layout["ok"]
    mine = signer.sign(key)
    other = f"videos/{uuid.uuid4()}/{uuid.uuid4()}.mp4"
    root = Path(prepared.local_storage_dir)
    (root / other).parent.mkdir(parents=True, exist_ok=True)
    (root / other).write_bytes(b"someone else's video")
    spellings = [
        other,  # another object, same signature
        key.replace("/", "//", 1),  # the same file, spelled differently
        key + "/",
        "%2e/" + key,  # dot segments encoded, or the client itself would resolve them
        key.replace("videos/", "videos/%2e/"),
        key.replace("videos/", "videos/x/%2e%2e/"),
        key.upper(),
    ]
    for path in spellings:
        r = await client.get(f"/media/{path}?{urlencode(mine)}")
        assert r.status_code == 403, path
        problem(r, 403)
    tampered = [
        {"exp": str(int(mine["exp"]) + 1), "sig": mine["sig"]},
        {"exp": mine["exp"], "sig": mine["sig"].swapcase()},
        {"exp": mine["exp"], "sig": mine["sig"] + "A"},
        {"exp": mine["exp"], "sig": ""},
        {"exp": "-1", "sig": mine["sig"]},
        {"exp": "1e99", "sig": mine["sig"]},
        {"exp": mine["exp"], "sig": signer.sign(other)["sig"]},
    ]
    for query in tampered:
        problem(await client.get(f"/media/{quote(key)}?{urlencode(query)}"), 403)
    # Nor does a stream token pass for a signature (its key is derived apart).
    r = await client.post("/v1/admin/users", json={"name": "s"}, headers=ADMIN)
    token = (
        await client.post(
            "/v1/stream-tokens", headers={"Authorization": f"Bearer {r.json()['api_key']}"}
        )
    ).json()["token"]
    problem(await client.get(f"/media/{quote(key)}?exp={mine['exp']}&sig={token}"), 403)


ADMIN = {"Authorization": "Bearer test-admin-key"}
