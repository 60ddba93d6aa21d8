"""Plain-REST helpers the fake's own tests share (a test-side client, not the product's)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import av
import httpx

MODEL = "veo-3.1-fast-generate-preview"


def submit_path(model: str = MODEL) -> str:
    return f"/v1beta/models/{model}:predictLongRunning"


def body(prompt: str | None = "a red fox in snow", **parameters: Any) -> dict[str, Any]:
    instance = {} if prompt is None else {"prompt": prompt}
    return {"instances": [instance], "parameters": parameters}


async def submit(client: httpx.AsyncClient, prompt: str, **parameters: Any) -> str:
    response = await client.post(submit_path(), json=body(prompt, **parameters))
    assert response.status_code == 200, response.text
    name: str = response.json()["name"]
    return name


async def poll_until_done(
    client: httpx.AsyncClient, name: str, *, deadline: float = 30.0
) -> dict[str, Any]:
    """Poll like a client should (a missing `done` is false) until done, within a deadline."""
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        response = await client.get(f"/v1beta/{name}")
        assert response.status_code == 200, response.text
        operation: dict[str, Any] = response.json()
        if operation.get("done"):
            return operation
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} not done after {deadline}s")


def sample_uris(operation: dict[str, Any]) -> list[str]:
    samples = operation["response"]["generateVideoResponse"]["generatedSamples"]
    return [sample["video"]["uri"] for sample in samples]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(response.content)["error"]
    return error


@dataclass(frozen=True)
class Probe:
    width: int
    height: int
    seconds: float
    streams: tuple[str, ...]
    codec: str


def probe(data: bytes) -> Probe:
    with av.open(io.BytesIO(data), "r") as container:
        video = container.streams.video[0]
        assert container.duration is not None
        return Probe(
            video.width,
            video.height,
            container.duration / av.time_base,
            tuple(stream.type for stream in container.streams),
            video.codec_context.name,
        )
