"""The `veo` provider's HTTP side: plain REST to the Gemini API over one shared
`httpx.AsyncClient` per process (bounded pool), not Google's SDK (DESIGN.md: its 3.x refuses API
keys for video, its downloads need https).

Three calls, each short: `submit` (predictLongRunning → operation name), `poll` (one GET of the
operation), `download` (the video, streamed to a file, redirects followed by hand so the key is
sent to the API's own origin only). The waiting between them belongs to the worker's scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from opentelemetry.trace import Span
from shared.schemas import RenderSpec
from shared.settings import Settings
from shared.telemetry import client_span, http_status

from veo_worker.observe import ProviderMetrics
from veo_worker.providers import veo_wire
from veo_worker.providers.base import ProviderError
from veo_worker.providers.veo_wire import OperationState, TransientError

MAX_VIDEO_BYTES = 2 * 1024**3
MAX_REDIRECTS = 5
CHUNK = 256 * 1024


def submit_slots(settings: Settings) -> int:
    """Submissions one process has on the wire at once (a quarter of the request budget)."""
    return max(1, settings.veo_max_concurrent_requests // 4)


class SubmitOutcomeUnknown(Exception):
    """The submission was sent but no answer came back: Veo may have accepted it."""


class VeoClient:
    def __init__(self, settings: Settings) -> None:
        if settings.gemini_api_key is None:
            raise ValueError("the veo provider needs GEMINI_API_KEY (or VEO3_API_KEY)")
        self.base_url = settings.google_gemini_base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._key = settings.gemini_api_key.get_secret_value()
        # Polls and downloads share VEO_MAX_CONCURRENT_REQUESTS; submissions have their own
        # connections, so one is never queued behind polls while its job is `submitting`.
        size = settings.veo_max_concurrent_requests + submit_slots(settings)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0),
            # Idle connections are dropped before a server would drop them: a request sent on
            # a connection the server just closed would look like an unanswered submission.
            limits=httpx.Limits(
                max_connections=size, max_keepalive_connections=size, keepalive_expiry=4.0
            ),
            follow_redirects=False,
        )
        self.metrics: ProviderMetrics | None = None  # set by the wiring (the service's registry)

    async def aclose(self) -> None:
        await self.http.aclose()

    @contextlib.contextmanager
    def _call(self, operation: str, method: str, url: str, template: str) -> Iterator[Span]:
        """A CLIENT span (the key travels in a header, never in `url.full`) and the metrics."""
        timing = self.metrics.call("veo", operation) if self.metrics else contextlib.nullcontext()
        with timing, client_span(method, url, template=template) as span:
            span.set_attribute("gen_ai.provider.name", "gcp.gemini")
            span.set_attribute("reelflow.provider.operation", operation)
            yield span

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key}

    async def submit(self, spec: RenderSpec) -> str:
        """The operation name; `TransientError`, `ProviderError` or `SubmitOutcomeUnknown`."""
        url = f"{self.base_url}/v1beta/models/{spec.model}:predictLongRunning"
        template = "/v1beta/models/{model}:predictLongRunning"
        with self._call("submit", "POST", url, template) as span:
            span.set_attribute("gen_ai.request.model", spec.model)
            name = await self._submit(url, spec, span)
            span.set_attribute("reelflow.veo.operation", name)
            return name

    async def _submit(self, url: str, spec: RenderSpec, span: Span) -> str:
        try:
            response = await self.http.post(
                url, json=veo_wire.request_body(spec), headers=self._headers()
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientError(f"submit: cannot reach Veo: {_describe(exc)}") from exc
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            # The request never got out whole: Veo cannot have acted on it.
            raise TransientError(f"submit: sending failed: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:  # read timeout, reset, disconnect: sent, no answer
            raise SubmitOutcomeUnknown(f"submit sent but not answered: {_describe(exc)}") from exc
        http_status(span, response.status_code)
        if response.status_code != 200:
            raise veo_wire.http_failure(
                response.status_code, dict(response.headers), response.content, "submit"
            )
        try:
            body = veo_wire.read_json(response.content, "submit")
        except TransientError as exc:
            # A 200 whose body we cannot read: the operation exists but its name is lost.
            raise SubmitOutcomeUnknown(str(exc)) from exc
        return veo_wire.operation_name(body)

    async def poll(self, name: str) -> OperationState:
        url = f"{self.base_url}/v1beta/{name}"
        with self._call("poll", "GET", url, "/v1beta/{operation}") as span:
            state = await self._poll(url, name, span)
            span.set_attribute("reelflow.veo.done", state.done)
            return state

    async def _poll(self, url: str, name: str, span: Span) -> OperationState:
        try:
            response = await self.http.get(url, headers=self._headers())
        except httpx.HTTPError as exc:  # polling is read-only: every transport error is retried
            raise TransientError(f"poll: {_describe(exc)}") from exc
        http_status(span, response.status_code)
        if response.status_code == 404:
            raise ProviderError("internal", f"Veo no longer knows the operation {name}")
        if response.status_code != 200:
            raise veo_wire.http_failure(
                response.status_code, dict(response.headers), response.content, "poll"
            )
        return veo_wire.operation_state(veo_wire.read_json(response.content, "poll"))

    async def download(self, uri: str, path: Path) -> int:
        """Stream the video at `uri` into `path`; its size in bytes."""
        with self._call("download", "GET", uri, "/v1beta/files/{file}:download") as span:
            size = await self._download(uri, path, span)
            span.set_attribute("http.response.body.size", size)
            return size

    async def _download(self, uri: str, path: Path, span: Span) -> int:
        url = uri
        for _ in range(MAX_REDIRECTS + 1):
            headers = self._headers() if _origin(url) == self._origin else {}
            try:
                async with self.http.stream("GET", url, headers=headers) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        # Read to its end (it is short), so the connection goes back to the
                        # pool instead of being closed with a body still unread.
                        await response.aread()
                        continue
                    http_status(span, response.status_code)
                    if response.status_code in (404, 410):
                        raise ProviderError(
                            "internal",
                            f"Veo's video could not be downloaded: HTTP {response.status_code}"
                            " (missing or expired)",
                        )
                    if response.status_code != 200:
                        content = await response.aread()
                        raise _download_failure(response, content)
                    return await _save(response, path)
            except httpx.HTTPError as exc:
                raise TransientError(f"download: {_describe(exc)}") from exc
        raise ProviderError(
            "internal", f"Veo's video download redirected more than {MAX_REDIRECTS} times"
        )


def _download_failure(response: httpx.Response, content: bytes) -> Exception:
    failure = veo_wire.http_failure(
        response.status_code, dict(response.headers), content, "download"
    )
    if isinstance(failure, ProviderError) and failure.info.code == "invalid_request":
        return ProviderError("internal", failure.info.message)  # not the user's request
    return failure


async def _save(response: httpx.Response, path: Path) -> int:
    size = 0
    handle = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in response.aiter_bytes(CHUNK):
            size += len(chunk)
            if size > MAX_VIDEO_BYTES:
                raise ProviderError(
                    "internal", f"Veo's video is larger than {MAX_VIDEO_BYTES} bytes"
                )
            handle.write(chunk)  # page cache: microseconds per chunk
    finally:
        handle.close()
    return size


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class VeoProvider:
    """The `veo` provider: the model table's checks and the process's one HTTP client."""

    name = "veo"

    def __init__(self, settings: Settings) -> None:
        self.client = VeoClient(settings)

    def check(self, spec: RenderSpec) -> None:
        veo_wire.check_spec(spec)

    async def aclose(self) -> None:
        await self.client.aclose()
