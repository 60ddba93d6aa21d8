"""Baseline for live streams: a bare Starlette SSE route under uvicorn (its defaults: uvloop,
httptools), every stream waiting on one in-process broadcast; `POST /fire` sends one event to
all of them, serialised per stream as a generation of the same size would be.

    python -m bench.baseline_sse --port 8124
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# About the size of a generation as `GET /v1/generations/{id}` returns it.
PAYLOAD: dict[str, Any] = {
    "id": "00000000-0000-0000-0000-000000000000",
    "status": "pending_confirmation",
    "prompt": "A red fox running through fresh snow at dawn, cinematic, golden light",
    "params": {"aspect_ratio": "16:9", "resolution": "720p", "duration_seconds": 4},
    "questions": [],
    "answers": {},
    "estimated_cost_usd": "0.60",
    "progress": None,
    "result": None,
    "error": None,
    "padding": "x" * 600,
}


def frame(event: str, status: str, version: int) -> bytes:
    data = json.dumps({**PAYLOAD, "status": status})
    return f"id: {version}\nevent: {event}\ndata: {data}\n\n".encode()


def create_app() -> Starlette:
    fired = asyncio.Event()
    held = {"streams": 0}

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            held["streams"] += 1
            try:
                yield b"retry: 2000\n\n"
                yield frame("generation.awaiting_confirmation", "pending_confirmation", 3)
                await fired.wait()
                yield frame("generation.cancelled", "cancelled", 4)
            finally:
                held["streams"] -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def fire(request: Request) -> Response:
        fired.set()
        return JSONResponse({"streams": held["streams"]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", **held})

    return Starlette(
        routes=[
            Route("/v1/generations/{generation_id}/events", events),
            Route("/fire", fire, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
