"""A fake of the Gemini API's Veo endpoints: a real HTTP server for tests (see README.md).

In a test's event loop::

    async with FakeVeo(api_key="test-key", scenario="succeed polls=2") as veo:
        env["GOOGLE_GEMINI_BASE_URL"] = veo.base_url
        ...
        assert veo.submissions == 1

As a process of its own (state survives whatever the test kills)::

    python -m tests.fakes.fake_veo --port 0 --scenario "slow seconds=30"

or `async with FakeVeoProcess(...) as veo:` and `await veo.stats()` over the control API
(`GET /_fake/stats`, `GET /_fake/requests`, `POST /_fake/scenario`, `POST /_fake/reset`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import socket
import string
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tests.fakes.mp4 import render_mp4
from tests.fakes.veo_scenarios import DEFAULT_FILTER_REASON, Scenario, from_prompt
from tests.fakes.veo_wire import (
    RESPONSE_TYPE,
    VideoRequest,
    WireError,
    api_key_invalid,
    api_key_missing,
    json_response,
    not_found,
    parse_submission,
    resource_exhausted,
    server_error,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
_ID_CHARS = string.ascii_lowercase + string.digits
# Long strings (base64 images) are cut in the recorded bodies to keep memory bounded.
_RECORD_MAX_STRING = 4096
# Rendered MP4s by (width, height, seconds): deterministic, so shared by every fake in the
# process; at most a few dozen keys exist.
_VIDEOS: dict[tuple[int, int, int], bytes] = {}


def _new_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(12))


@dataclass(slots=True)
class Operation:
    name: str
    request: VideoRequest
    scenario: Scenario
    file_ids: list[str]
    created: float = field(default_factory=time.monotonic)
    polls: int = 0
    downloads: int = 0
    bad_polls: int = 0
    done: bool = False

    def info(self) -> dict[str, Any]:
        return {
            "model": self.request.model,
            "prompt": self.request.prompt,
            "scenario": self.scenario.spec,
            "polls": self.polls,
            "downloads": self.downloads,
            "done": self.done,
            "files": self.file_ids,
        }


class VeoState:
    """Everything the fake knows; lives in the server's process."""

    def __init__(self, api_key: str, scenario: str | Scenario, record_limit: int) -> None:
        self.api_key = api_key
        self.scenario = Scenario.parse(scenario)
        self._record_limit = record_limit
        self._rendering: dict[tuple[int, int, int], asyncio.Lock] = {}
        self.reset()

    def reset(self) -> None:
        self.submit_attempts = 0
        self.submissions_by_model: Counter[str] = Counter()
        self.rejections: Counter[int] = Counter()
        self.polls = 0
        self.downloads = 0
        self.bytes_served = 0
        self.requests: deque[dict[str, Any]] = deque(maxlen=self._record_limit)
        self.operations: dict[str, Operation] = {}
        self.files: dict[str, Operation] = {}
        self._rejected: Counter[tuple[str, str]] = Counter()

    @property
    def submissions(self) -> int:
        return sum(self.submissions_by_model.values())

    def stats(self, *, operations: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "scenario": self.scenario.spec,
            "submit_attempts": self.submit_attempts,
            "submissions": self.submissions,
            "submissions_by_model": dict(self.submissions_by_model),
            "rejections": {str(k): v for k, v in self.rejections.items()},
            "polls": self.polls,
            "downloads": self.downloads,
            "bytes_served": self.bytes_served,
            "operations_total": len(self.operations),
            "operations_done": sum(op.done for op in self.operations.values()),
        }
        if operations:
            body["operations"] = {name: op.info() for name, op in self.operations.items()}
        return body

    # -- the Gemini API ----------------------------------------------------------------------

    def submit(self, model: str, raw: bytes, base_url: str) -> Response:
        self.submit_attempts += 1
        record: dict[str, Any] = {"model": model, "body": _recordable(raw), "status": 200}
        self.requests.append(record)
        try:
            request = parse_submission(model, raw)
            scenario = from_prompt(request.prompt) or self.scenario
            self._maybe_reject(scenario, request)
        except WireError as error:
            record["status"] = error.http
            self.rejections[error.http] += 1
            return error.response()
        name = f"models/{model}/operations/{_new_id()}"
        operation = Operation(name, request, scenario, [_new_id() for _ in range(request.samples)])
        self.operations[name] = operation
        for file_id in operation.file_ids:
            self.files[file_id] = operation
        self.submissions_by_model[model] += 1
        record["operation"] = name
        return json_response({"name": name})

    def _maybe_reject(self, scenario: Scenario, request: VideoRequest) -> None:
        status = scenario.rejects_with
        if status is None:
            return
        key = (request.model, request.prompt)
        if self._rejected[key] >= scenario.times:
            del self._rejected[key]  # this attempt goes through
            return
        self._rejected[key] += 1
        if status == 429:
            raise resource_exhausted(scenario.retry_after)
        raise server_error(status)

    def poll(self, name: str, base_url: str) -> Response:
        operation = self.operations.get(name)
        if operation is None:
            raise not_found(f"Operation not found: {name}")
        self.polls += 1
        operation.polls += 1
        scenario = operation.scenario
        if operation.polls <= scenario.poll_errors:
            raise server_error(503)
        pending_polls = operation.polls - scenario.poll_errors <= scenario.polls
        too_soon = time.monotonic() - operation.created < scenario.seconds
        if scenario.kind == "never" or pending_polls or too_soon:
            # proto3 JSON leaves out `done: false`; clients must treat a missing `done` as false.
            return json_response({"name": name})
        if scenario.kind == "malformed" and (
            scenario.times == 0 or operation.bad_polls < scenario.times
        ):
            operation.bad_polls += 1
            return Response(
                f'{{\n  "name": "{name}",\n  "done": tru', media_type="application/json"
            )
        operation.done = True
        return json_response(_done_body(operation, base_url))

    async def download(self, file_id: str, base_url: str, redirect: bool) -> Response:
        operation = self.files.get(file_id)
        if operation is None:
            raise not_found()
        self.downloads += 1
        operation.downloads += 1
        if operation.scenario.kind == "video_404":
            raise not_found()
        if redirect:
            # Google answers the download with a redirect to a signed media URL (its docs
            # download with `curl -L`; its SDK's HTTP clients set follow_redirects=True).
            return RedirectResponse(f"{base_url}/_fake/media/{file_id}", status_code=302)
        return await self.media(file_id)

    async def media(self, file_id: str) -> Response:
        operation = self.files.get(file_id)
        if operation is None:
            raise not_found()
        if operation.scenario.kind == "empty_video":
            return Response(b"", media_type="video/mp4")
        data = await self.video(*operation.request.frame_size, operation.request.duration)
        self.bytes_served += len(data)
        return Response(data, media_type="video/mp4")

    async def video(self, width: int, height: int, seconds: int) -> bytes:
        """The MP4 for this size and length, rendered once per process."""
        key = (width, height, seconds)
        if key not in _VIDEOS:
            async with self._rendering.setdefault(key, asyncio.Lock()):
                if key not in _VIDEOS:
                    _VIDEOS[key] = await asyncio.to_thread(render_mp4, *key)
        return _VIDEOS[key]


def _done_body(operation: Operation, base_url: str) -> dict[str, Any]:
    scenario = operation.scenario
    body: dict[str, Any] = {"name": operation.name, "done": True}
    if scenario.kind == "error":
        message = scenario.message or "Video generation failed due to an internal error."
        body["error"] = {"code": scenario.code, "message": message}
        return body
    if scenario.kind == "filtered":
        video_response: dict[str, Any] = {
            "raiMediaFilteredCount": operation.request.samples,
            "raiMediaFilteredReasons": [scenario.message or DEFAULT_FILTER_REASON],
        }
    else:
        video_response = {
            "generatedSamples": [
                {"video": {"uri": f"{base_url}/v1beta/files/{file_id}:download?alt=media"}}
                for file_id in operation.file_ids
            ]
        }
    body["response"] = {"@type": RESPONSE_TYPE, "generateVideoResponse": video_response}
    return body


def _recordable(raw: bytes) -> Any:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:_RECORD_MAX_STRING]

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > _RECORD_MAX_STRING:
            return f"<{len(value)} chars>"
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v) for v in value]
        return value

    return cut(body)


def build_app(state: VeoState, *, redirect_downloads: bool = True) -> Starlette:
    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def authorize(request: Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            raise api_key_missing()
        if key != state.api_key:
            raise api_key_invalid()

    async def gemini(request: Request) -> Response:
        """Everything under /v1beta: Google's paths carry `:verb` suffixes, so route by hand."""
        path = request.path_params["path"]
        try:
            authorize(request)
            if request.method == "POST" and path.startswith("models/"):
                model, sep, verb = path.removeprefix("models/").partition(":")
                if sep and verb == "predictLongRunning" and "/" not in model:
                    return state.submit(model, await request.body(), base(request))
            if request.method == "GET" and path.startswith("models/") and "/operations/" in path:
                return state.poll(path, base(request))
            if request.method == "GET" and path.startswith("files/") and path.endswith(":download"):
                file_id = path.removeprefix("files/").removesuffix(":download")
                return await state.download(file_id, base(request), redirect_downloads)
            raise not_found(f"Method not found: {request.method} /v1beta/{path}")
        except WireError as error:
            return error.response()

    async def media(request: Request) -> Response:
        try:
            return await state.media(request.path_params["file_id"])
        except WireError as error:
            return error.response()

    async def stats(request: Request) -> Response:
        include = request.query_params.get("operations", "true") != "false"
        return json_response(state.stats(operations=include))

    async def requests_(request: Request) -> Response:
        return json_response({"requests": list(state.requests)})

    async def scenario(request: Request) -> Response:
        try:
            state.scenario = Scenario.parse((await request.json())["scenario"])
        except (ValueError, KeyError, TypeError) as error:
            return json_response({"error": str(error)}, 400)
        return json_response({"scenario": state.scenario.spec})

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response({"reset": True})

    async def health(request: Request) -> Response:
        return json_response({"ok": True})

    return Starlette(
        routes=[
            Route("/v1beta/{path:path}", gemini, methods=["GET", "POST"]),
            Route("/_fake/media/{file_id}", media),
            Route("/_fake/stats", stats),
            Route("/_fake/requests", requests_),
            Route("/_fake/scenario", scenario, methods=["POST"]),
            Route("/_fake/reset", reset, methods=["POST"]),
            Route("/_fake/health", health),
        ]
    )


class _QuietServer(uvicorn.Server):
    """uvicorn inside someone else's loop: leave the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and
    # without it Nagle + delayed ACKs cost ~40 ms per keep-alive request.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _config(app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
    )


class FakeVeo:
    """The fake Veo server, running in the current asyncio loop on a free port."""

    def __init__(
        self,
        api_key: str = "test-key",
        scenario: str | Scenario = "succeed",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect_downloads: bool = True,
        record_limit: int = 10_000,
    ) -> None:
        self.state = VeoState(api_key, scenario, record_limit)
        self._app = build_app(self.state, redirect_downloads=redirect_downloads)
        self._host, self._port = host, port
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.base_url = ""

    async def __aenter__(self) -> Self:
        sock = _listen(self._host, self._port)
        self.base_url = f"http://{self._host}:{sock.getsockname()[1]}"
        self._server = _QuietServer(_config(self._app))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                await self._task
                raise RuntimeError("the fake Veo server did not start")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    # -- what tests read and change -----------------------------------------------------------

    @property
    def api_key(self) -> str:
        return self.state.api_key

    @property
    def submissions(self) -> int:
        return self.state.submissions

    @property
    def submissions_by_model(self) -> dict[str, int]:
        return dict(self.state.submissions_by_model)

    @property
    def polls(self) -> int:
        return self.state.polls

    @property
    def downloads(self) -> int:
        return self.state.downloads

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every predictLongRunning body received (also the rejected ones), oldest first."""
        return list(self.state.requests)

    @property
    def operations(self) -> dict[str, Operation]:
        return self.state.operations

    def set_scenario(self, scenario: str | Scenario) -> None:
        self.state.scenario = Scenario.parse(scenario)

    def stats(self, *, operations: bool = True) -> dict[str, Any]:
        return self.state.stats(operations=operations)

    def reset(self) -> None:
        self.state.reset()

    async def video(self, width: int, height: int, seconds: int) -> bytes:
        """The exact bytes the fake serves for that size and length."""
        return await self.state.video(width, height, seconds)


class FakeVeoProcess:
    """The fake Veo in a process of its own; read it through the control API."""

    def __init__(
        self,
        api_key: str = "test-key",
        scenario: str = "succeed",
        *,
        redirect_downloads: bool = True,
    ) -> None:
        self.api_key, self._scenario = api_key, scenario
        self._redirect = redirect_downloads
        self.process: asyncio.subprocess.Process | None = None
        self.base_url = ""

    async def __aenter__(self) -> Self:
        args = ["--port", "0", "--api-key", self.api_key, "--scenario", self._scenario]
        if not self._redirect:
            args.append("--no-redirect")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fakes.fake_veo",
            *args,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=30)
        ready, _, url = line.decode().strip().partition(" ")
        if ready != "FAKE_VEO_READY":
            await self.aclose()
            raise RuntimeError(f"the fake Veo process did not start: {line!r}")
        self.base_url = url
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def _control(self, method: str, path: str, body: Any = None) -> Any:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            response = await client.request(method, path, json=body)
            response.raise_for_status()
            return response.json()

    async def stats(self, *, operations: bool = True) -> dict[str, Any]:
        query = "" if operations else "?operations=false"
        result: dict[str, Any] = await self._control("GET", f"/_fake/stats{query}")
        return result

    async def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._control("GET", "/_fake/requests"))["requests"]
        return result

    async def set_scenario(self, scenario: str) -> None:
        await self._control("POST", "/_fake/scenario", {"scenario": scenario})

    async def reset(self) -> None:
        await self._control("POST", "/_fake/reset")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Gemini API (Veo) server for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--scenario", default="succeed", help='e.g. "succeed polls=2"')
    parser.add_argument("--no-redirect", action="store_true", help="serve downloads directly")
    args = parser.parse_args(argv)
    state = VeoState(args.api_key, args.scenario, record_limit=10_000)
    app = build_app(state, redirect_downloads=not args.no_redirect)
    sock = _listen(args.host, args.port)
    print(f"FAKE_VEO_READY http://{args.host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(_config(app)).run(sockets=[sock])


if __name__ == "__main__":
    main()
