"""The fake Veo checked against Google's own client (google-genai 2.x, Gemini API mode).

If the SDK parses what the fake answers, and the fake accepts exactly what the SDK sends,
the fake speaks the real wire format; our provider is then tested against that format.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.fakes.fake_veo import FakeVeo
from tests.fakes.veo_client import MODEL, probe

KEY = "test-key"
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def veo() -> AsyncIterator[FakeVeo]:
    async with FakeVeo(api_key=KEY, scenario="succeed polls=2") as fake:
        yield fake


@pytest.fixture
async def client(veo: FakeVeo) -> AsyncIterator[genai.Client]:
    sdk = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=veo.base_url))
    yield sdk
    await sdk.aio.aclose()


async def wait_done(
    sdk: genai.Client, operation: types.GenerateVideosOperation
) -> types.GenerateVideosOperation:
    give_up = time.monotonic() + 30
    while not operation.done:
        assert time.monotonic() < give_up, "operation never finished"
        operation = await sdk.aio.operations.get(operation)
    return operation


async def generate(sdk: genai.Client, prompt: str, **config: Any) -> types.GenerateVideosOperation:
    return await sdk.aio.models.generate_videos(
        model=MODEL,
        source=types.GenerateVideosSource(prompt=prompt),
        config=types.GenerateVideosConfig(**config),
    )


async def test_sdk_round_trip(veo: FakeVeo, client: genai.Client) -> None:
    operation = await generate(
        client,
        "a paper boat on a river",
        aspect_ratio="9:16",
        duration_seconds=4,
        negative_prompt="blur",
        number_of_videos=1,
    )
    assert operation.name is not None and operation.name.startswith(f"models/{MODEL}/operations/")
    assert not operation.done

    pending = await client.aio.operations.get(operation)
    assert pending.done is None and pending.response is None  # `done` absent while running

    finished = await wait_done(client, operation)
    assert finished.error is None and finished.response is not None
    assert finished.response.generated_videos is not None
    video = finished.response.generated_videos[0].video
    assert video is not None and video.uri is not None
    assert video.uri.startswith(f"{veo.base_url}/v1beta/files/")
    assert video.uri.endswith(":download?alt=media")

    # Exactly the SDK's wire format: camelCase names, durationSeconds and sampleCount numbers.
    [record] = veo.requests
    assert record["model"] == MODEL
    assert record["body"] == {
        "instances": [{"prompt": "a paper boat on a river"}],
        "parameters": {
            "sampleCount": 1,
            "durationSeconds": 4,
            "aspectRatio": "9:16",
            "negativePrompt": "blur",
        },
    }
    assert type(record["body"]["parameters"]["durationSeconds"]) is int
    assert veo.operations[operation.name].polls == 3

    # The SDK's files.download only takes https URIs; the key goes along as Google requires.
    async with httpx.AsyncClient(follow_redirects=True, timeout=60) as http:  # may render it
        media = await http.get(video.uri, headers={"x-goog-api-key": KEY})
    found = probe(media.content)
    assert (found.width, found.height, round(found.seconds)) == (720, 1280, 4)


async def test_sdk_reads_base_url_from_environment(
    veo: FakeVeo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", veo.base_url)
    sdk = genai.Client(api_key=KEY)
    try:
        finished = await wait_done(sdk, await generate(sdk, "a kite"))
    finally:
        await sdk.aio.aclose()
    assert finished.response is not None and finished.response.generated_videos
    assert veo.submissions == 1


async def test_sdk_filtered(client: genai.Client) -> None:
    finished = await wait_done(client, await generate(client, "x [scenario:filtered polls=0]"))
    assert finished.error is None and finished.response is not None
    assert finished.response.generated_videos is None
    assert finished.response.rai_media_filtered_count == 1
    reasons = finished.response.rai_media_filtered_reasons
    assert reasons and "Responsible AI" in reasons[0]


async def test_sdk_operation_error(client: genai.Client) -> None:
    finished = await wait_done(
        client, await generate(client, "x [scenario:error polls=0 code=13 message=boom]")
    )
    assert finished.response is None
    assert finished.error == {"code": 13, "message": "boom"}


async def test_sdk_rate_limited(veo: FakeVeo, client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as raised:
        await generate(client, "x [scenario:rate_limited times=1 retry_after=9]")
    assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
    details = raised.value.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9s"} in details
    await generate(client, "x [scenario:rate_limited times=1 retry_after=9]")
    assert (veo.stats()["submit_attempts"], veo.submissions) == (2, 1)


async def test_sdk_unavailable(client: genai.Client) -> None:
    with pytest.raises(errors.ServerError) as raised:
        await generate(client, "x [scenario:unavailable times=1]")
    assert (raised.value.code, raised.value.status) == (503, "UNAVAILABLE")


async def test_sdk_wrong_key(veo: FakeVeo) -> None:
    sdk = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=veo.base_url))
    try:
        with pytest.raises(errors.ClientError) as raised:
            await generate(sdk, "x")
    finally:
        await sdk.aio.aclose()
    assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")
    assert "API key not valid" in (raised.value.message or "")


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"resolution": "1080p", "duration_seconds": 4}, "must be 8"),
        ({"person_generation": "allow_adult"}, "allow_adult for personGeneration"),
        ({"duration_seconds": 5}, "out of the supported range"),
    ],
)
async def test_sdk_sees_google_validation(
    veo: FakeVeo, client: genai.Client, config: dict[str, Any], needle: str
) -> None:
    with pytest.raises(errors.ClientError) as raised:
        await generate(client, "x", **config)
    assert raised.value.code == 400 and needle in (raised.value.message or "")
    assert veo.submissions == 0


async def test_sdk_image_to_video(veo: FakeVeo, client: genai.Client) -> None:
    operation = await client.aio.models.generate_videos(
        model=MODEL,
        source=types.GenerateVideosSource(
            prompt="the cat starts walking",
            image=types.Image(image_bytes=PNG_1PX, mime_type="image/png"),
        ),
        config=types.GenerateVideosConfig(person_generation="allow_adult", resolution="1080p"),
    )
    finished = await wait_done(client, operation)
    assert finished.response is not None and finished.response.generated_videos
    instance = veo.requests[0]["body"]["instances"][0]
    assert instance["image"] == {
        "bytesBase64Encoded": base64.b64encode(PNG_1PX).decode(),
        "mimeType": "image/png",
    }


@pytest.mark.parametrize("config", [{"seed": 7}, {"generate_audio": True}])
async def test_sdk_refuses_vertex_only_fields_locally(
    veo: FakeVeo, client: genai.Client, config: dict[str, Any]
) -> None:
    # google-genai 2.x raises before sending: seed and generate_audio are Vertex-only there.
    with pytest.raises(ValueError, match="only supported in Gemini Enterprise"):
        await generate(client, "x", **config)
    assert veo.stats()["submit_attempts"] == 0
