"""S3Storage against moto in server mode over real HTTP (no mocks of our client).

The test reads objects back with plain boto3 and httpx, independent of the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from shared.media import build_storage, thumbnail_key, video_key
from shared.s3_storage import DEFAULT_PART_SIZE, MIB, S3Storage, S3StorageError
from shared.settings import Settings, SettingsError, load_settings
from sqlalchemy.ext.asyncio import AsyncSession

from tests.fake_s3 import moto_endpoint, s3_client
from tests.support import free_port

BUCKET = "reelflow-test"
TTL = 900
_S3_VARS = (
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "S3_REGION",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "R2_ACCOUNT_ID",
    "R2_BUCKET_NAME",
    "R2_ACCESS_KEY_ID",
    "R2_SECRET_ACCESS_KEY",
    "STORAGE_BACKEND",
    "MEDIA_URL_TTL_SECONDS",
)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in _S3_VARS:
        monkeypatch.delenv(name, raising=False)


def s3_settings(endpoint: str, **extra: str) -> Settings:
    values = {
        "STORAGE_BACKEND": "s3",
        "S3_ENDPOINT_URL": endpoint,
        "S3_BUCKET": BUCKET,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": "test",
        "S3_SECRET_ACCESS_KEY": "test",
        "MEDIA_URL_TTL_SECONDS": str(TTL),
        **extra,
    }
    return load_settings(**values)


@pytest.fixture
async def storage(endpoint: str) -> AsyncIterator[S3Storage]:
    async with S3Storage(s3_settings(endpoint)) as s:
        await s.ensure_bucket()
        await s.ensure_bucket()  # a second call on an existing bucket is harmless
        yield s


@pytest.fixture
def inspector(endpoint: str) -> Any:
    """A plain boto3 client, to look at what the server stored."""
    return s3_client(endpoint)


def _random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


async def test_small_file_round_trip(storage: S3Storage, inspector: Any, tmp_path: Path) -> None:
    user, gen = uuid.uuid4(), uuid.uuid4()
    key = video_key(user, gen)
    assert key == f"videos/{user}/{gen}.mp4"
    data = _random_file(tmp_path / "small.mp4", 300 * 1024)

    assert not await storage.exists(key)
    await storage.put_file(key, tmp_path / "small.mp4", "video/mp4")
    assert await storage.exists(key)

    head = inspector.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ContentType"] == "video/mp4"
    assert head["ContentLength"] == len(data)
    assert "immutable" in head["CacheControl"]
    assert head["ChecksumSHA256"] == _b64sha(data)  # single PUT: whole-object checksum
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert "-" not in head["ETag"]  # one PUT, not multipart
    assert inspector.list_objects_v2(Bucket=BUCKET, Prefix=f"videos/{user}/")["KeyCount"] == 1

    async with httpx.AsyncClient() as http:
        got = await http.get(await storage.url_for(key))
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "video/mp4"

    thumb = thumbnail_key(user, gen)
    (tmp_path / "t.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    await storage.put_file(thumb, tmp_path / "t.jpg", "image/jpeg")
    assert inspector.head_object(Bucket=BUCKET, Key=thumb)["ContentType"] == "image/jpeg"

    await storage.delete(key)
    assert not await storage.exists(key)
    await storage.delete(key)  # deleting again is not an error


async def test_large_file_goes_multipart_and_round_trips(
    storage: S3Storage, inspector: Any, tmp_path: Path
) -> None:
    key = video_key(uuid.uuid4(), uuid.uuid4())
    size = 20 * MIB + 12345
    data = _random_file(tmp_path / "large.mp4", size)

    await storage.put_file(key, tmp_path / "large.mp4", "video/mp4")

    parts = math.ceil(size / DEFAULT_PART_SIZE)
    head = inspector.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # S3's mark of a multipart upload
    assert head["ContentType"] == "video/mp4"
    # Composite checksum: SHA-256 over the parts' SHA-256s, as the server computed them.
    digests = b"".join(
        hashlib.sha256(data[i : i + DEFAULT_PART_SIZE]).digest()
        for i in range(0, size, DEFAULT_PART_SIZE)
    )
    # (moto's HEAD drops the `-N` suffix S3 gives a composite checksum; its GET keeps it.)
    got = inspector.get_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    got["Body"].close()
    assert got["ChecksumSHA256"] == f"{_b64sha(digests)}-{parts}"
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert inspector.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []

    url = await storage.url_for(key)
    h = hashlib.sha256()
    async with httpx.AsyncClient() as http, http.stream("GET", url) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "video/mp4"
        async for chunk in resp.aiter_bytes():
            h.update(chunk)
    assert h.digest() == hashlib.sha256(data).digest()


async def test_presigned_url_expiry_and_layout(storage: S3Storage) -> None:
    key = video_key(uuid.uuid4(), uuid.uuid4())
    url = await storage.url_for(key)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.path == f"/{BUCKET}/{key}"  # path-style on a custom endpoint
    assert query["X-Amz-Expires"] == [str(TTL)]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("test/")
    assert query["X-Amz-Credential"][0].endswith("/us-east-1/s3/aws4_request")
    assert re.fullmatch(r"[0-9a-f]{64}", query["X-Amz-Signature"][0])


async def test_altered_signature_is_refused(storage: S3Storage, tmp_path: Path) -> None:
    key = video_key(uuid.uuid4(), uuid.uuid4())
    (tmp_path / "v.mp4").write_bytes(b"video")
    await storage.put_file(key, tmp_path / "v.mp4", "video/mp4")
    parts = urlsplit(await storage.url_for(key))
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    sig = query["X-Amz-Signature"]
    query["X-Amz-Signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    forged = urlunsplit(parts._replace(query=urlencode(query)))
    async with httpx.AsyncClient() as http:
        resp = await http.get(forged)
    if resp.status_code == 200:
        pytest.skip("moto does not verify presigned-URL signatures (nor their expiry)")
    assert resp.status_code == 403


async def test_r2_aliases_give_the_r2_endpoint() -> None:
    settings = load_settings(
        STORAGE_BACKEND="s3",
        R2_ACCOUNT_ID="acct123",
        R2_BUCKET_NAME="videos",
        R2_ACCESS_KEY_ID="r2id",
        R2_SECRET_ACCESS_KEY="r2secret",
    )
    async with S3Storage(settings) as s:
        assert s.endpoint_url == "https://acct123.r2.cloudflarestorage.com"
        assert s.region == "auto"
        url = await s.url_for("videos/u/g.mp4")  # local computation, no request
    assert url.startswith("https://acct123.r2.cloudflarestorage.com/videos/videos/u/g.mp4?")
    assert parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].startswith("r2id/")
    assert "/auto/s3/aws4_request" in parse_qs(urlsplit(url).query)["X-Amz-Credential"][0]


async def test_build_storage_makes_s3(endpoint: str) -> None:
    # The s3 branch needs no database session.
    built = await build_storage(cast(AsyncSession, None), s3_settings(endpoint))
    assert isinstance(built, S3Storage)
    await built.close()


async def test_failed_multipart_upload_is_aborted(
    storage: S3Storage, inspector: Any, tmp_path: Path
) -> None:
    key = video_key(uuid.uuid4(), uuid.uuid4())
    _random_file(tmp_path / "v.mp4", 3 * MIB)
    # Below S3's 5 MiB part minimum on purpose: the server refuses the upload at completion.
    storage.part_size = MIB
    with pytest.raises(S3StorageError, match="EntityTooSmall"):
        await storage.put_file(key, tmp_path / "v.mp4", "video/mp4")
    assert inspector.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert not await storage.exists(key)


async def test_configuration_errors_name_the_variable(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError, match="S3_BUCKET"):
        S3Storage(load_settings(S3_ENDPOINT_URL=endpoint))
    with pytest.raises(SettingsError, match="S3_SECRET_ACCESS_KEY"):
        S3Storage(load_settings(S3_BUCKET=BUCKET, S3_ACCESS_KEY_ID="test"))
    with pytest.raises(SettingsError, match="MEDIA_URL_TTL_SECONDS"):
        S3Storage(s3_settings(endpoint, MEDIA_URL_TTL_SECONDS=str(8 * 24 * 3600)))

    # No keys and no AWS default credentials anywhere.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    bare = S3Storage(load_settings(S3_ENDPOINT_URL=endpoint, S3_BUCKET=BUCKET))
    with pytest.raises(SettingsError, match="S3_ACCESS_KEY_ID"):
        await bare.open()


async def test_missing_bucket_names_the_variable(endpoint: str, tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"video")
    async with S3Storage(s3_settings(endpoint, S3_BUCKET="no-such-bucket")) as s:
        with pytest.raises(S3StorageError, match="S3_BUCKET") as caught:
            await s.put_file("videos/u/g.mp4", tmp_path / "v.mp4", "video/mp4")
    assert "no-such-bucket" in str(caught.value)


async def test_refused_credentials_name_the_variables(endpoint: str, tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"video")
    async with S3Storage(s3_settings(endpoint), max_attempts=1) as s, httpx.AsyncClient() as http:
        await s.ensure_bucket()
        # moto checks header signatures only once asked to (its own /moto-api/reset-auth);
        # then our "test" key is unknown to its IAM.
        await http.post(f"{endpoint}/moto-api/reset-auth", content=b"0")
        try:
            with pytest.raises(S3StorageError, match=r"S3_ACCESS_KEY_ID.*S3_SECRET_ACCESS_KEY"):
                await s.put_file("videos/u/g.mp4", tmp_path / "v.mp4", "video/mp4")
        finally:
            await http.post(f"{endpoint}/moto-api/reset-auth", content=b"inf")


async def test_unreachable_endpoint_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"video")
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = load_settings(
        S3_ENDPOINT_URL=nowhere,
        S3_BUCKET=BUCKET,
        S3_ACCESS_KEY_ID="test",
        S3_SECRET_ACCESS_KEY="test",
    )
    async with S3Storage(settings, max_attempts=1) as s:
        with pytest.raises(S3StorageError, match="S3_ENDPOINT_URL"):
            await s.put_file("videos/u/g.mp4", tmp_path / "v.mp4", "video/mp4")


# The upload runs in a child process: the moto server shares this process (and its heap), so
# measuring here would count the server's copy of the object too.
_CHILD = """
import asyncio, json, sys, tracemalloc
from pathlib import Path
from shared.s3_storage import S3Storage
from shared.settings import load_settings


async def main() -> None:
    path = Path(sys.argv[2])
    async with S3Storage(load_settings()) as storage:
        await storage.ensure_bucket()
        tracemalloc.start()
        await storage.put_file(sys.argv[1], path, "video/mp4")
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        path.read_bytes()  # the baseline: what reading it all at once looks like
        _, read_all_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(json.dumps({"upload_peak": upload_peak, "read_all_peak": read_all_peak}))

asyncio.run(main())
"""


async def test_large_upload_memory_stays_below_file_size(
    endpoint: str, inspector: Any, tmp_path: Path
) -> None:
    size = 48 * MIB
    _random_file(tmp_path / "big.mp4", size)
    key = video_key(uuid.uuid4(), uuid.uuid4())
    env = {
        **os.environ,
        "S3_ENDPOINT_URL": endpoint,
        "S3_BUCKET": BUCKET,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": "test",
        "S3_SECRET_ACCESS_KEY": "test",
    }
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, key, str(tmp_path / "big.mp4")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"upload of {size} bytes: tracemalloc peak {measured}")
    assert measured["read_all_peak"] >= size  # the measurement does see big buffers
    # One 8 MiB part (plus its request) at a time; generous bounds: half the file, and less
    # than two parts (a copy of each part would cross it).
    assert measured["upload_peak"] < size // 2, measured
    assert measured["upload_peak"] < 2 * DEFAULT_PART_SIZE, measured
    assert inspector.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size
