"""`s3` storage: AWS S3, Cloudflare R2 and MinIO through one aioboto3 client per process.

Objects are private (no ACL is ever set); readers get presigned GET links that expire after
MEDIA_URL_TTL_SECONDS. Uploads stream from disk: a file up to one part is sent whole, a larger
one as a multipart upload read one part at a time, so at most one part is held in memory.
Every object carries S3's own SHA-256 checksum (whole-object for a single PUT, composite
`…-N` for multipart) and, in metadata `sha256`, the hex SHA-256 of the whole file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)
from pydantic import SecretStr

from shared.settings import Settings, SettingsError

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
DEFAULT_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer
# Keys are per generation and never rewritten, so a browser may keep a copy for good;
# `private` keeps shared caches from storing one user's video.
CACHE_CONTROL = "private, max-age=31536000, immutable"

BUCKET_VARS = "S3_BUCKET (or R2_BUCKET_NAME)"
KEY_ID_VARS = "S3_ACCESS_KEY_ID (or R2_ACCESS_KEY_ID)"
SECRET_VARS = "S3_SECRET_ACCESS_KEY (or R2_SECRET_ACCESS_KEY)"
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "InvalidToken",
    "ExpiredToken",
}


class S3StorageError(Exception):
    """An S3 call failed; the message says which setting to look at when one is to blame."""


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _sha256_of_file(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _read_part(
    f: io.BufferedIOBase, size: int, running: Any = None
) -> tuple[io.BytesIO, int, bytes]:
    """Read up to `size` bytes straight into a BytesIO's own buffer: no second copy.

    (Bytes would be wrapped in a BytesIO sharing them, and aiohttp's getbuffer() would then
    copy; a bytearray is sliced and joined with the headers by aiohttp, two more copies.)
    """
    body = io.BytesIO()
    if size:
        body.seek(size - 1)
        body.write(b"\0")  # allocates the buffer once
    with body.getbuffer() as view:
        n = f.readinto(view)
        digest = hashlib.sha256(view[:n]).digest()
        if running is not None:
            running.update(view[:n])
    body.truncate(n)
    body.seek(0)
    return body, n, digest


def _read_whole(path: Path, size: int) -> tuple[io.BytesIO, int, bytes]:
    with path.open("rb") as f:
        return _read_part(f, size)


class S3Storage:
    """The `Storage` of shared.media over S3. Opens its client on first use; `close()` at exit
    (or use `async with`)."""

    def __init__(
        self, settings: Settings, *, part_size: int = DEFAULT_PART_SIZE, max_attempts: int = 5
    ) -> None:
        if not settings.s3_bucket:
            raise SettingsError(f"invalid configuration: {BUCKET_VARS}: not set")
        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        if (key_id is None) != (secret is None):
            missing = SECRET_VARS if secret is None else KEY_ID_VARS
            raise SettingsError(f"invalid configuration: {missing}: not set (the other key is)")
        if settings.media_url_ttl_seconds > MAX_PRESIGN_SECONDS:
            raise SettingsError(
                "invalid configuration: MEDIA_URL_TTL_SECONDS: S3 presigned links last at most "
                f"{MAX_PRESIGN_SECONDS} seconds (7 days)"
            )
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.bucket = settings.s3_bucket
        self.endpoint_url = settings.s3_endpoint
        # R2 takes the region "auto"; AWS needs a real one (us-east-1 when unset).
        r2 = settings.r2_account_id is not None and not settings.s3_endpoint_url
        self.region = settings.s3_region or ("auto" if r2 else "us-east-1")
        self.url_ttl = settings.media_url_ttl_seconds
        self.part_size = part_size
        self._key_id = key_id
        self._secret = secret
        self._config = AioConfig(
            signature_version="s3v4",
            # MinIO and moto serve buckets on paths, not on subdomains of the endpoint.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=120,
            # We always send our own SHA-256; no extra CRC32 that older MinIO/R2 may reject.
            request_checksum_calculation="when_required",
        )
        self._session = aioboto3.Session()
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    # -- lifecycle: one client (one connection pool) for the life of the process ------------

    async def open(self) -> S3Storage:
        async with self._lock:
            if self._client is not None:
                return self
            if self._key_id is None and await self._session.get_credentials() is None:
                # Neither key set and no AWS default credentials (env, profile, instance role).
                raise SettingsError(
                    f"invalid configuration: {KEY_ID_VARS} and {SECRET_VARS}: not set"
                )
            stack = AsyncExitStack()
            self._client = await stack.enter_async_context(
                self._session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=_reveal(self._key_id),
                    aws_secret_access_key=_reveal(self._secret),
                    config=self._config,
                )
            )
            self._stack = stack
            return self

    async def close(self) -> None:
        async with self._lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()

    async def __aenter__(self) -> S3Storage:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _ready(self) -> Any:
        if self._client is None:
            await self.open()
        return self._client

    # -- the Storage protocol -----------------------------------------------------------------

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        client = await self._ready()
        size = (await asyncio.to_thread(path.stat)).st_size
        common = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": content_type,
            "CacheControl": CACHE_CONTROL,
        }
        try:
            if size <= self.part_size:
                data, _, digest = await asyncio.to_thread(_read_whole, path, size)
                await client.put_object(
                    **common,
                    Body=data,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=_b64(digest),
                    Metadata={"sha256": digest.hex()},
                )
            else:
                await self._put_multipart(client, common, path, size)
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, f"upload of {key}") from exc

    async def _put_multipart(
        self, client: Any, common: dict[str, str], path: Path, size: int
    ) -> None:
        # The whole-file digest goes into metadata, which S3 takes at creation: one extra
        # streaming read of the file (disk, not memory) pays for it.
        whole = await asyncio.to_thread(_sha256_of_file, path)
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        created = await client.create_multipart_upload(
            **common, ChecksumAlgorithm="SHA256", Metadata={"sha256": whole.hex()}
        )
        upload_id = created["UploadId"]
        ids = {"Bucket": common["Bucket"], "Key": common["Key"], "UploadId": upload_id}
        try:
            parts: list[dict[str, Any]] = []
            running = hashlib.sha256()
            f = await asyncio.to_thread(path.open, "rb")
            try:
                while True:
                    data, n, digest = await asyncio.to_thread(_read_part, f, part_size, running)
                    if n == 0:
                        break
                    number = len(parts) + 1
                    sent = await client.upload_part(
                        **ids,
                        PartNumber=number,
                        Body=data,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=_b64(digest),
                    )
                    del data  # drop this part before the next one is read
                    parts.append(
                        {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": _b64(digest)}
                    )
            finally:
                await asyncio.to_thread(f.close)
            if running.digest() != whole:
                raise S3StorageError(f"{path} changed while it was being uploaded")
            await client.complete_multipart_upload(**ids, MultipartUpload={"Parts": parts})
        except BaseException:
            # Parts of an unfinished upload are billed until aborted.
            with suppress(ClientError, BotoCoreError):
                await client.abort_multipart_upload(**ids)
            raise

    async def url_for(self, key: str) -> str:
        """A presigned GET link (computed locally, no request)."""
        client = await self._ready()
        url: str = await client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.url_ttl,
        )
        return url

    # -- the rest ------------------------------------------------------------------------------

    async def exists(self, key: str) -> bool:
        client = await self._ready()
        try:
            await client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            # HEAD has no body: a missing bucket reads as a missing key here.
            if _code(exc) in _NOT_FOUND:
                return False
            raise self._explain(exc, f"lookup of {key}") from exc
        except BotoCoreError as exc:
            raise self._explain(exc, f"lookup of {key}") from exc
        return True

    async def delete(self, key: str) -> None:
        """Remove an object; deleting one that is not there is not an error (as in S3)."""
        client = await self._ready()
        try:
            await client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, f"delete of {key}") from exc

    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (dev, MinIO, tests); private, as S3 makes it."""
        client = await self._ready()
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise self._explain(exc, "check of the bucket") from exc
        except BotoCoreError as exc:
            raise self._explain(exc, "check of the bucket") from exc
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region not in ("us-east-1", "auto"):
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await client.create_bucket(**args)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyExists":  # AWS names are global: another account's
                raise S3StorageError(
                    f"bucket {self.bucket!r} belongs to someone else: choose another {BUCKET_VARS}"
                ) from exc
            if _code(exc) != "BucketAlreadyOwnedByYou":  # (a concurrent creator won the race)
                raise self._explain(exc, "creation of the bucket") from exc
        except BotoCoreError as exc:
            raise self._explain(exc, "creation of the bucket") from exc

    # -- errors that name the setting to fix ----------------------------------------------------

    def _where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def _explain(self, exc: Exception, what: str) -> S3StorageError:
        if isinstance(exc, NoCredentialsError):
            return S3StorageError(
                f"{what} failed: no credentials; set {KEY_ID_VARS} and {SECRET_VARS}"
            )
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "InvalidBucketName":
                return S3StorageError(
                    f"{what} failed: {self.bucket!r} is not a valid {BUCKET_VARS}"
                )
            if code == "NoSuchBucket":
                return S3StorageError(
                    f"{what} failed: bucket {self.bucket!r} does not exist at {self._where()}; "
                    f"check {BUCKET_VARS} (or create the bucket)"
                )
            if code in _BAD_CREDENTIALS:
                return S3StorageError(
                    f"{what} failed: {self._where()} refused the credentials ({code}); "
                    f"check {KEY_ID_VARS} and {SECRET_VARS}"
                )
            if code in ("AccessDenied", "403", "Forbidden"):
                return S3StorageError(
                    f"{what} failed: access to bucket {self.bucket!r} denied; check that "
                    f"{KEY_ID_VARS} may use {BUCKET_VARS}"
                )
            message = exc.response.get("Error", {}).get("Message", "")
            return S3StorageError(f"{what} failed at {self._where()}: {code} {message}".strip())
        if isinstance(exc, EndpointConnectionError):
            return S3StorageError(
                f"{what} failed: cannot reach {self._where()}; check S3_ENDPOINT_URL"
            )
        return S3StorageError(f"{what} failed at {self._where()}: {exc}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None
