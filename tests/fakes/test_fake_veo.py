"""The fake Veo server over plain HTTP: every scenario, Google's errors, counting, process mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from tests.fakes.fake_veo import FakeVeo, FakeVeoProcess
from tests.fakes.veo_client import (
    MODEL,
    body,
    error_of,
    poll_until_done,
    probe,
    sample_uris,
    submit,
    submit_path,
)

KEY = "test-key"


@pytest.fixture
async def veo() -> AsyncIterator[FakeVeo]:
    async with FakeVeo(api_key=KEY, scenario="succeed polls=0") as fake:
        yield fake


@pytest.fixture
async def client(veo: FakeVeo) -> AsyncIterator[httpx.AsyncClient]:
    # A long timeout: the first download of a size renders its MP4 (1080p x 8 s takes about a
    # second on a quiet machine, several on a loaded one).
    async with httpx.AsyncClient(
        base_url=veo.base_url,
        headers={"x-goog-api-key": KEY},
        follow_redirects=True,
        timeout=60,
    ) as http:
        yield http


async def test_succeed_pending_then_done_with_a_real_video(
    veo: FakeVeo, client: httpx.AsyncClient
) -> None:
    name = await submit(
        client, "a fox [scenario:succeed polls=2]", aspectRatio="9:16", durationSeconds=4
    )
    assert name.startswith(f"models/{MODEL}/operations/")

    for _ in range(2):
        pending = (await client.get(f"/v1beta/{name}")).json()
        assert pending == {"name": name}  # proto3 JSON: no `done: false`
    operation = (await client.get(f"/v1beta/{name}")).json()
    assert operation["done"] is True
    response = operation["response"]
    assert response["@type"].endswith(
        "google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
    )
    [uri] = sample_uris(operation)
    assert uri.startswith(f"{veo.base_url}/v1beta/files/") and uri.endswith(":download?alt=media")

    redirect = await client.get(uri, follow_redirects=False)
    assert redirect.status_code == 302
    video = await client.get(uri)
    assert video.headers["content-type"] == "video/mp4"
    assert video.content == await veo.video(720, 1280, 4)
    found = probe(video.content)
    assert (found.width, found.height, found.codec) == (720, 1280, "h264")
    assert found.streams == ("video", "audio")
    assert found.seconds == pytest.approx(4, abs=0.05)
    assert veo.polls == 3 and veo.downloads == 2


@pytest.mark.parametrize(
    ("parameters", "size", "seconds"),
    [
        ({}, (1280, 720), 8),
        ({"resolution": "1080p", "aspectRatio": "16:9", "durationSeconds": 8}, (1920, 1080), 8),
        ({"aspectRatio": "16:9", "durationSeconds": 6}, (1280, 720), 6),
    ],
)
async def test_video_matches_the_request(
    client: httpx.AsyncClient, parameters: dict[str, Any], size: tuple[int, int], seconds: int
) -> None:
    operation = await poll_until_done(client, await submit(client, "a boat", **parameters))
    found = probe((await client.get(sample_uris(operation)[0])).content)
    assert (found.width, found.height) == size
    assert found.seconds == pytest.approx(seconds, abs=0.05)


async def test_succeed_after_seconds_and_sample_count(client: httpx.AsyncClient) -> None:
    name = await submit(client, "x [scenario:succeed polls=0 seconds=0.3]", sampleCount=2)
    assert (await client.get(f"/v1beta/{name}")).json() == {"name": name}
    operation = await poll_until_done(client, name)
    assert len(set(sample_uris(operation))) == 2


async def test_filtered(client: httpx.AsyncClient) -> None:
    operation = await poll_until_done(client, await submit(client, "x [scenario:filtered]"))
    result = operation["response"]["generateVideoResponse"]
    assert "generatedSamples" not in result and "error" not in operation
    assert result["raiMediaFilteredCount"] == 1
    assert "Responsible AI" in result["raiMediaFilteredReasons"][0]


async def test_error(client: httpx.AsyncClient) -> None:
    name = await submit(client, "x [scenario:error code=3 message=cannot_render]")
    operation = await poll_until_done(client, name)
    assert operation == {
        "name": name,
        "done": True,
        "error": {"code": 3, "message": "cannot render"},
    }


async def test_rate_limited_then_accepted(veo: FakeVeo, client: httpx.AsyncClient) -> None:
    request = body("x [scenario:rate_limited times=2 retry_after=7]")
    for _ in range(2):
        response = await client.post(submit_path(), json=request)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        error = error_of(response)
        assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in error[
            "details"
        ]
    assert (await client.post(submit_path(), json=request)).status_code == 200
    stats = veo.stats()
    assert (stats["submit_attempts"], stats["submissions"], stats["rejections"]) == (
        3,
        1,
        {"429": 2},
    )


@pytest.mark.parametrize(("status", "google_status"), [(503, "UNAVAILABLE"), (500, "INTERNAL")])
async def test_unavailable_then_accepted(
    veo: FakeVeo, client: httpx.AsyncClient, status: int, google_status: str
) -> None:
    veo.set_scenario(f"unavailable times=1 status={status}")
    first = await client.post(submit_path(), json=body())
    assert first.status_code == status
    assert (error_of(first)["code"], error_of(first)["status"]) == (status, google_status)
    assert (await client.post(submit_path(), json=body())).status_code == 200
    assert veo.submissions == 1


@pytest.mark.parametrize("spec", ["slow", "never"])
async def test_slow_and_never_stay_pending(client: httpx.AsyncClient, spec: str) -> None:
    name = await submit(client, f"x [scenario:{spec}]")
    for _ in range(5):
        assert (await client.get(f"/v1beta/{name}")).json() == {"name": name}


async def test_malformed_poll_then_recovers(client: httpx.AsyncClient) -> None:
    name = await submit(client, "x [scenario:malformed polls=0 times=1]")
    bad = await client.get(f"/v1beta/{name}")
    assert bad.status_code == 200 and bad.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.content)
    assert (await client.get(f"/v1beta/{name}")).json()["done"] is True


async def test_malformed_forever(client: httpx.AsyncClient) -> None:
    name = await submit(client, "x [scenario:malformed polls=0]")
    for _ in range(3):
        with pytest.raises(json.JSONDecodeError):
            json.loads((await client.get(f"/v1beta/{name}")).content)


async def test_poll_errors(client: httpx.AsyncClient) -> None:
    name = await submit(client, "x [scenario:succeed polls=0 poll_errors=1]")
    first = await client.get(f"/v1beta/{name}")
    assert (first.status_code, error_of(first)["status"]) == (503, "UNAVAILABLE")
    assert (await client.get(f"/v1beta/{name}")).json()["done"] is True


async def test_video_404(client: httpx.AsyncClient) -> None:
    operation = await poll_until_done(client, await submit(client, "x [scenario:video_404]"))
    response = await client.get(sample_uris(operation)[0])
    assert (response.status_code, error_of(response)["status"]) == (404, "NOT_FOUND")


async def test_empty_video(client: httpx.AsyncClient) -> None:
    operation = await poll_until_done(client, await submit(client, "x [scenario:empty_video]"))
    response = await client.get(sample_uris(operation)[0])
    assert response.status_code == 200 and response.content == b""


async def test_unknown_operation_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1beta/models/{MODEL}/operations/nosuchop")
    assert (response.status_code, error_of(response)["status"]) == (404, "NOT_FOUND")


async def test_api_keys(veo: FakeVeo) -> None:
    async with httpx.AsyncClient(base_url=veo.base_url) as anonymous:
        missing = await anonymous.post(submit_path(), json=body())
        assert (missing.status_code, error_of(missing)["status"]) == (403, "PERMISSION_DENIED")
        wrong = await anonymous.post(submit_path(), json=body(), headers={"x-goog-api-key": "nope"})
        assert (wrong.status_code, error_of(wrong)["status"]) == (400, "INVALID_ARGUMENT")
        assert error_of(wrong)["details"][0]["reason"] == "API_KEY_INVALID"
        by_query = await anonymous.post(f"{submit_path()}?key={KEY}", json=body())
        assert by_query.status_code == 200
        poll = await anonymous.get(f"/v1beta/{by_query.json()['name']}")
        assert poll.status_code == 403
    # Auth is checked before the model sees anything: only the good request was an attempt.
    assert (veo.submissions, veo.stats()["submit_attempts"]) == (1, 1)


@pytest.mark.parametrize(
    ("request_body", "status", "needle"),
    [
        (body(None), 400, "prompt is required"),
        (body("x", resolution="1080p", durationSeconds=4), 400, "must be 8"),
        (body("x", resolution="4k", durationSeconds=6), 400, "must be 8"),
        (body("x", durationSeconds="8"), 400, "needs to be a number"),
        (body("x", durationSeconds=5), 400, "out of the supported range"),
        (body("x", aspectRatio="1:1"), 400, "Aspect ratio"),
        (body("x", generateAudio=True), 400, "`generateAudio` isn't supported"),
        (body("x", personGeneration="allow_adult"), 400, "allow_adult for personGeneration"),
        (body("x", seed=-1), 400, "seed"),
        (body("x", sampleCount=5), 400, "sampleCount"),
        ({"instances": []}, 400, "instances"),
        ({"instances": [{"prompt": "x"}], "config": {}}, 400, 'Unknown name "config"'),
        ({"instances": [{"prompt": "x", "lastFrame": {}}]}, 400, "lastFrame"),
    ],
)
async def test_validation_like_google(
    veo: FakeVeo, client: httpx.AsyncClient, request_body: dict[str, Any], status: int, needle: str
) -> None:
    response = await client.post(submit_path(), json=request_body)
    assert response.status_code == status
    error = error_of(response)
    assert error["status"] == "INVALID_ARGUMENT" and needle in error["message"]
    assert veo.submissions == 0 and veo.stats()["rejections"] == {"400": 1}


async def test_accepted_parameters(veo: FakeVeo, client: httpx.AsyncClient) -> None:
    accepted = [
        body(
            "x",
            aspectRatio="9:16",
            resolution="1080p",
            durationSeconds=8,
            seed=42,
            negativePrompt="blur",
            personGeneration="allow_all",
            sampleCount=1,
        ),
        {
            "instances": [
                {"prompt": "x", "image": {"bytesBase64Encoded": "AA==", "mimeType": "image/png"}}
            ],
            "parameters": {"personGeneration": "allow_adult", "durationSeconds": 6},
        },
    ]
    for request_body in accepted:
        response = await client.post(submit_path(), json=request_body)
        assert response.status_code == 200, response.text
    assert [record["body"] for record in veo.requests] == accepted


async def test_invalid_json_and_unknown_model(client: httpx.AsyncClient) -> None:
    garbage = await client.post(submit_path(), content=b"{not json")
    assert (garbage.status_code, error_of(garbage)["status"]) == (400, "INVALID_ARGUMENT")
    unknown = await client.post(submit_path("veo-9-imaginary"), json=body())
    assert (unknown.status_code, error_of(unknown)["status"]) == (404, "NOT_FOUND")


async def test_counts_per_model_and_records_bodies(veo: FakeVeo, client: httpx.AsyncClient) -> None:
    await client.post(submit_path("veo-3.1-generate-preview"), json=body("one"))
    await client.post(submit_path(MODEL), json=body("two", durationSeconds=4))
    await client.post(submit_path(MODEL), json=body("three"))
    assert veo.submissions == 3
    assert veo.submissions_by_model == {"veo-3.1-generate-preview": 1, MODEL: 2}
    assert [r["body"]["instances"][0]["prompt"] for r in veo.requests] == ["one", "two", "three"]
    assert veo.requests[1]["body"]["parameters"] == {"durationSeconds": 4}
    ops = veo.stats()["operations"]
    assert sorted(op["prompt"] for op in ops.values()) == ["one", "three", "two"]
    veo.reset()
    assert veo.submissions == 0 and veo.requests == []


async def test_a_thousand_concurrent_operations(veo: FakeVeo) -> None:
    """1,000 operations pending at once, each submitted and polled (aiohttp: httpx's pool
    queues badly under this load, encode/httpx#3215)."""
    veo.set_scenario("slow seconds=3600")
    headers = {"x-goog-api-key": KEY}

    async def one(http: aiohttp.ClientSession, index: int) -> tuple[str, dict[str, Any]]:
        async with http.post(submit_path(), json=body(f"clip {index}")) as submitted:
            name = (await submitted.json())["name"]
        async with http.get(f"/v1beta/{name}") as polled:
            return name, await polled.json()

    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(veo.base_url, headers=headers, connector=connector) as http:
        results = await asyncio.gather(*(one(http, i) for i in range(1000)))
    assert len({name for name, _ in results}) == 1000
    assert all(poll == {"name": name} for name, poll in results)
    stats = veo.stats(operations=False)
    assert (stats["submissions"], stats["operations_total"], stats["operations_done"]) == (
        1000,
        1000,
        0,
    )
    assert stats["polls"] == 1000


async def test_standalone_process_with_control_api() -> None:
    async with FakeVeoProcess(api_key=KEY, scenario="succeed polls=1") as veo:
        async with httpx.AsyncClient(
            base_url=veo.base_url,
            headers={"x-goog-api-key": KEY},
            follow_redirects=True,
            timeout=60,
        ) as http:
            name = await submit(http, "a lighthouse", aspectRatio="9:16", durationSeconds=4)
            operation = await poll_until_done(http, name)
            video = await http.get(sample_uris(operation)[0])
            assert (probe(video.content).width, probe(video.content).height) == (720, 1280)

            await veo.set_scenario("rate_limited times=1")
            assert (await http.post(submit_path(), json=body("b"))).status_code == 429
            assert (await http.post(submit_path(), json=body("b"))).status_code == 200

        stats = await veo.stats()
        assert stats["scenario"] == "rate_limited times=1"
        assert (stats["submit_attempts"], stats["submissions"], stats["downloads"]) == (3, 2, 1)
        assert stats["operations"][name]["polls"] == 2
        assert [r["status"] for r in await veo.requests()] == [200, 429, 200]
        await veo.reset()
        assert (await veo.stats())["submissions"] == 0
        assert veo.process is not None
    assert veo.process.returncode is not None
