"""The `veo` provider's HTTP side: plain REST to the Gemini API over one shared aiohttp
`ClientSession` per process (bounded pool), not Google's SDK (DESIGN.md: its 3.x refuses API
keys for video, its downloads need https), nor httpx (a quarter of the CPU per request here:
~0.3 against ~1.5 ms, measured on the fake; four requests a video).

Three calls, each short: `submit` (predictLongRunning → operation name), `poll` (one GET of the
operation), `download` (the video, streamed to a file, redirects followed by hand so the key is
sent to the API's own origin only). The waiting between them belongs to the worker's scheduler.

A submission is retried only when it certainly did not reach Veo: the connection was never
made (refused, DNS, connect or pool-wait timeout). Every other transport failure (reset,
disconnect, read timeout, a body cut short) may have come after Veo read the request, so it is
`SubmitOutcomeUnknown` and never sent again (Veo would charge twice).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
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
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Idle connections are dropped before a server would drop them: a request sent on a connection
# the server just closed would look like an unanswered submission.
KEEPALIVE_SECONDS = 4.0
# Never established: the request cannot have reached Veo (a pool wait or connect timeout too).
NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
TRANSPORT = (aiohttp.ClientError, TimeoutError)


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
        self._headers = {"x-goog-api-key": self._key}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        # Polls and downloads share VEO_MAX_CONCURRENT_REQUESTS (the flow's semaphore), and
        # submissions have slots of their own on top, so the pool never makes a `submitting`
        # job wait behind polls.
        self._pool_size = settings.veo_max_concurrent_requests + submit_slots(settings)
        self._session: aiohttp.ClientSession | None = None  # made in the loop, at first use
        self.metrics: ProviderMetrics | None = None  # set by the wiring (the service's registry)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._pool_size, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
                ),
                # connect: the pool wait and the connection; sock_read: between two reads.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=30.0, sock_connect=10.0, sock_read=30.0
                ),
                auto_decompress=True,
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.contextmanager
    def _call(self, operation: str, method: str, url: str, template: str) -> Iterator[Span]:
        """A CLIENT span (the key travels in a header, never in `url.full`) and the metrics."""
        timing = self.metrics.call("veo", operation) if self.metrics else contextlib.nullcontext()
        with timing, client_span(method, url, template=template) as span:
            span.set_attribute("gen_ai.provider.name", "gcp.gemini")
            span.set_attribute("reelflow.provider.operation", operation)
            yield span

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
        body = json.dumps(veo_wire.request_body(spec)).encode()
        try:
            async with self._http().post(url, data=body, headers=self._json_headers) as response:
                status, headers = response.status, _lower(response.headers)
                content = await response.read()
        except NOT_CONNECTED as exc:
            raise TransientError(f"submit: cannot reach Veo: {_describe(exc)}") from exc
        except TRANSPORT as exc:  # reset, disconnect, read timeout: maybe sent, no answer
            raise SubmitOutcomeUnknown(f"submit sent but not answered: {_describe(exc)}") from exc
        http_status(span, status)
        if status != 200:
            raise veo_wire.http_failure(status, headers, content, "submit")
        try:
            answer = veo_wire.read_json(content, "submit")
        except TransientError as exc:
            # A 200 whose body we cannot read: the operation exists but its name is lost.
            raise SubmitOutcomeUnknown(str(exc)) from exc
        return veo_wire.operation_name(answer)

    async def poll(self, name: str) -> OperationState:
        url = f"{self.base_url}/v1beta/{name}"
        with self._call("poll", "GET", url, "/v1beta/{operation}") as span:
            state = await self._poll(url, name, span)
            span.set_attribute("reelflow.veo.done", state.done)
            return state

    async def _poll(self, url: str, name: str, span: Span) -> OperationState:
        try:
            async with self._http().get(url, headers=self._headers) as response:
                status, headers = response.status, _lower(response.headers)
                content = await response.read()
        except TRANSPORT as exc:  # polling is read-only: every transport error is retried
            raise TransientError(f"poll: {_describe(exc)}") from exc
        http_status(span, status)
        if status == 404:
            raise ProviderError("internal", f"Veo no longer knows the operation {name}")
        if status != 200:
            raise veo_wire.http_failure(status, headers, content, "poll")
        return veo_wire.operation_state(veo_wire.read_json(content, "poll"))

    async def download(self, uri: str, path: Path) -> int:
        """Stream the video at `uri` into `path`; its size in bytes."""
        with self._call("download", "GET", uri, "/v1beta/files/{file}:download") as span:
            size = await self._download(uri, path, span)
            span.set_attribute("http.response.body.size", size)
            return size

    async def _download(self, uri: str, path: Path, span: Span) -> int:
        url = uri
        for _ in range(MAX_REDIRECTS + 1):
            headers = self._headers if _origin(url) == self._origin else {}
            try:
                async with self._http().get(
                    url, headers=headers, allow_redirects=False
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in REDIRECTS and location:
                        url = urljoin(url, location)
                        # Read to its end (it is short), so the connection goes back to the
                        # pool instead of being closed with a body still unread.
                        await response.read()
                        continue
                    http_status(span, response.status)
                    if response.status in (404, 410):
                        raise ProviderError(
                            "internal",
                            f"Veo's video could not be downloaded: HTTP {response.status}"
                            " (missing or expired)",
                        )
                    if response.status != 200:
                        content = await response.read()
                        raise _download_failure(response.status, response.headers, content)
                    return await _save(response, path)
            except TRANSPORT as exc:
                raise TransientError(f"download: {_describe(exc)}") from exc
        raise ProviderError(
            "internal", f"Veo's video download redirected more than {MAX_REDIRECTS} times"
        )


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _download_failure(status: int, headers: Mapping[str, str], content: bytes) -> Exception:
    failure = veo_wire.http_failure(status, _lower(headers), content, "download")
    if isinstance(failure, ProviderError) and failure.info.code == "invalid_request":
        return ProviderError("internal", failure.info.message)  # not the user's request
    return failure


async def _save(response: aiohttp.ClientResponse, path: Path) -> int:
    size = 0
    handle = path.open("wb")  # a new file in our temp folder: no thread hop for that
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
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
