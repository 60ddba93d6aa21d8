"""Where videos live and how links to them are made.

`local` storage keeps files in a folder that the API serves through HMAC-signed, expiring links;
`s3` (a later step) presigns. Keys are `videos/{user_id}/{generation_id}.mp4` and `.jpg`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.settings import Settings

MEDIA_KEY_NAME = "media_signing_key"


def video_key(user_id: uuid.UUID, generation_id: uuid.UUID) -> str:
    return f"videos/{user_id}/{generation_id}.mp4"


def thumbnail_key(user_id: uuid.UUID, generation_id: uuid.UUID) -> str:
    return f"videos/{user_id}/{generation_id}.jpg"


class Storage(Protocol):
    async def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    async def url_for(self, key: str) -> str: ...


class LinkSigner:
    """HMAC-SHA256 over `key:expires`, so a link cannot be altered or extended."""

    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl = ttl_seconds

    def _mac(self, key: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{key}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, key: str, now: float | None = None) -> dict[str, str]:
        expires = int((now or time.time()) + self.ttl)
        return {"exp": str(expires), "sig": self._mac(key, expires)}

    def verify(self, key: str, exp: str, sig: str, now: float | None = None) -> bool:
        # isascii: int() accepts other digits ("²"), compare_digest refuses non-ASCII str.
        if not (exp.isascii() and exp.isdigit() and sig.isascii()):
            return False
        if int(exp) < (now or time.time()):
            return False
        return hmac.compare_digest(self._mac(key, int(exp)).encode(), sig.encode())


class LocalStorage:
    def __init__(self, root: Path, signer: LinkSigner, public_url: str) -> None:
        self.root = root.resolve()
        self.signer = signer
        self.public_url = public_url.rstrip("/")

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("key escapes the storage folder")
        return path

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        target = self.path_for(key)

        def copy() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            shutil.copyfile(path, tmp)
            tmp.replace(target)

        await asyncio.to_thread(copy)

    async def url_for(self, key: str) -> str:
        return f"{self.public_url}/media/{quote(key)}?{urlencode(self.signer.sign(key))}"


async def load_signing_secret(session: AsyncSession, settings: Settings) -> bytes:
    """MEDIA_SIGNING_KEY if set, else a random secret kept in the database for all services."""
    if settings.media_signing_key is not None:
        return settings.media_signing_key.get_secret_value().encode()
    await session.execute(
        text("INSERT INTO app_secrets (name, value) VALUES (:n, :v) ON CONFLICT DO NOTHING"),
        {"n": MEDIA_KEY_NAME, "v": secrets.token_urlsafe(32)},
    )
    value = await session.scalar(
        text("SELECT value FROM app_secrets WHERE name = :n"), {"n": MEDIA_KEY_NAME}
    )
    await session.commit()
    return str(value).encode()


async def build_storage(session: AsyncSession, settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        from shared.s3_storage import S3Storage  # aioboto3 is imported only when used

        return S3Storage(settings)
    signer = LinkSigner(
        await load_signing_secret(session, settings), settings.media_url_ttl_seconds
    )
    return LocalStorage(settings.local_storage_dir, signer, settings.public_url)
