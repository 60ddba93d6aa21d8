"""The Gemini API's Veo wire format, without I/O: the request we send, how we read what comes
back, and which failure class each answer belongs to (services/veo-worker/README.md).

Failure classes:
- `ProviderError(code, message)`: final; the job fails with that code, never retried.
- `TransientError`: HTTP 429/5xx, connection errors, malformed JSON; retried with backoff and
  jitter (honouring `Retry-After` / RetryInfo `retryDelay`) up to `VEO_MAX_RETRIES`.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from shared.domain import veo_models
from shared.schemas import ErrorCode, RenderSpec

from veo_worker.providers.base import InvalidRequest, ProviderError

MAX_RETRY_AFTER_SECONDS = 600.0  # a longer hint is capped, not obeyed blindly

# google.rpc.Code of a done operation's `error` → our code. Anything else is `internal`.
OPERATION_ERROR_CODES: dict[int, ErrorCode] = {
    3: "invalid_request",  # INVALID_ARGUMENT
    9: "invalid_request",  # FAILED_PRECONDITION
    11: "invalid_request",  # OUT_OF_RANGE
    8: "quota_exceeded",  # RESOURCE_EXHAUSTED
    4: "timeout",  # DEADLINE_EXCEEDED
    14: "provider_unavailable",  # UNAVAILABLE
}


class TransientError(Exception):
    """Worth retrying later; `retry_after` is the provider's hint in seconds, if any."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status

    @property
    def rate_limited(self) -> bool:
        return self.status == 429


@dataclass(frozen=True)
class OperationState:
    done: bool
    video_uri: str | None = None


def check_spec(spec: RenderSpec) -> None:
    """Refuse what the model cannot honour, before anything is sent (or paid for)."""
    model = veo_models.MODELS.get(spec.model)
    if model is None:
        return  # priced by the operator, unknown to our table: send it and let Veo judge
    found = veo_models.problems(
        model,
        resolution=spec.resolution,
        duration_seconds=spec.duration_seconds,
        generate_audio=spec.generate_audio,
        seed=spec.seed,
    )
    if found:
        raise InvalidRequest("; ".join(f"{k}: {v} ({spec.model})" for k, v in found.items()))


def request_body(spec: RenderSpec) -> dict[str, Any]:
    """predictLongRunning's body. The prompt goes as written; `generateAudio` is never sent
    (Veo 3.x always renders audio and refuses the parameter; Veo 2 renders none)."""
    model = veo_models.MODELS.get(spec.model)
    parameters: dict[str, Any] = {
        "aspectRatio": spec.aspect_ratio,
        "durationSeconds": spec.duration_seconds,  # a JSON number: Google refuses "8"
        "sampleCount": 1,  # one video, paid once
    }
    if model is None or "1080p" in model.resolutions:  # Veo 2 takes no `resolution`
        parameters["resolution"] = spec.resolution
    if spec.negative_prompt:
        parameters["negativePrompt"] = spec.negative_prompt
    if spec.seed is not None and (model is None or model.seed):
        parameters["seed"] = spec.seed
    return {"instances": [{"prompt": spec.prompt}], "parameters": parameters}


def read_json(content: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or `TransientError` (a cut-off body is worth another try)."""
    try:
        body = json.loads(content)
    except ValueError:
        raise TransientError(f"{what}: malformed JSON from Veo: {_excerpt(content)}") from None
    if not isinstance(body, dict):
        raise TransientError(f"{what}: expected a JSON object from Veo: {_excerpt(content)}")
    return body


def operation_name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name or ".." in name or name.startswith("/"):
        raise ProviderError(
            "internal", f"Veo accepted the submission without an operation name: {body!r:.300}"
        )
    return name


def operation_state(body: dict[str, Any]) -> OperationState:
    """Read a polled operation. A missing `done` means not done (proto3 JSON omits false).
    Raises `ProviderError` for every way a done operation can fail."""
    if not body.get("done"):
        return OperationState(done=False)
    error = body.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        ours = OPERATION_ERROR_CODES.get(code, "internal") if isinstance(code, int) else "internal"
        raise ProviderError(ours, f"Veo failed the operation (code {code}): {message or error}")
    response = body.get("response")
    video = response.get("generateVideoResponse") if isinstance(response, dict) else None
    if not isinstance(video, dict):
        raise ProviderError(
            "internal", f"Veo's operation is done without a response: {body!r:.300}"
        )
    reasons = video.get("raiMediaFilteredReasons")
    if reasons:
        text = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
        raise ProviderError("content_policy", text[:1000])
    samples = video.get("generatedSamples")
    uri = None
    if isinstance(samples, list) and samples and isinstance(samples[0], dict):
        sample_video = samples[0].get("video")
        uri = sample_video.get("uri") if isinstance(sample_video, dict) else None
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        raise ProviderError(
            "internal", "Veo's operation is done but returned no video (and no filter reason)"
        )
    return OperationState(done=True, video_uri=uri)


def http_failure(status: int, headers: dict[str, str], content: bytes, what: str) -> Exception:
    """The exception for an HTTP error answer: `TransientError` or a final `ProviderError`."""
    error = _error_body(content)
    detail = error.get("message") or _excerpt(content)
    message = f"{what}: HTTP {status} {error.get('status', '')}: {detail}"
    if status == 429 or status >= 500 or status == 408:
        retry_after = retry_after_seconds(headers.get("retry-after"), error)
        if status == 429 and _daily_quota(error):
            return ProviderError("quota_exceeded", message)  # waiting minutes cannot help
        return TransientError(message, retry_after=retry_after, status=status)
    if (status == 400 and _reason(error) == "API_KEY_INVALID") or status in (401, 403):
        return ProviderError(
            "internal", f"{what}: Veo refused our API key (GEMINI_API_KEY): HTTP {status}"
        )
    if status in (400, 404, 422):
        return ProviderError("invalid_request", message)
    return ProviderError("internal", message)


_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def retry_after_seconds(header: str | None, error: dict[str, Any] | None = None) -> float | None:
    """The longer of `Retry-After` (seconds) and Google's RetryInfo `retryDelay` ("12s")."""
    hints: list[float] = []
    if header:
        with contextlib.suppress(ValueError):  # an HTTP date: rare; our own backoff then
            hints.append(float(header))
    for detail in (error or {}).get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                hints.append(float(match.group(1)))
    if not hints:
        return None
    return min(max(hints), MAX_RETRY_AFTER_SECONDS)


def _error_body(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _reason(error: dict[str, Any]) -> str | None:
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("reason"):
            return str(detail["reason"])
    return None


def _daily_quota(error: dict[str, Any]) -> bool:
    for detail in error.get("details") or []:
        for violation in (detail.get("violations") or []) if isinstance(detail, dict) else []:
            if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                return True
    return False


def _excerpt(content: bytes) -> str:
    return content[:200].decode("utf-8", "replace")
