"""What the Gemini API's Veo endpoints accept and how they answer, as Google documents it.

Sources (summarised in README.md beside this file):
- the request/response mapping of Google's own SDK (google-genai 2.x, models.py
  `_GenerateVideosConfig_to_mldev`, `_GenerateVideosOperation_from_mldev`);
- the "Veo API parameters and specifications" table of ai.google.dev/gemini-api/docs/video;
- error bodies Google's API returned to users (quoted where they are quoted below).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from starlette.responses import Response

RESPONSE_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
MAX_UINT32 = 4_294_967_295


class Family(Enum):
    VEO_31 = "3.1"
    VEO_3 = "3"
    VEO_2 = "2"


MODELS: dict[str, Family] = {
    "veo-3.1-generate-preview": Family.VEO_31,
    "veo-3.1-fast-generate-preview": Family.VEO_31,
    "veo-3.0-generate-001": Family.VEO_3,
    "veo-3.0-fast-generate-001": Family.VEO_3,
    "veo-3.0-generate-preview": Family.VEO_3,
    "veo-3.0-fast-generate-preview": Family.VEO_3,
    "veo-2.0-generate-001": Family.VEO_2,
}

# width x height of what Veo renders, by (resolution, aspect ratio).
FRAME_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("720p", "16:9"): (1280, 720),
    ("720p", "9:16"): (720, 1280),
    ("1080p", "16:9"): (1920, 1080),
    ("1080p", "9:16"): (1080, 1920),
    ("4k", "16:9"): (3840, 2160),
    ("4k", "9:16"): (2160, 3840),
}

_PARAMETERS = {
    "aspectRatio",
    "resolution",
    "durationSeconds",
    "negativePrompt",
    "personGeneration",
    "seed",
    "sampleCount",
    "enhancePrompt",
}
_INSTANCE_FIELDS = {"prompt", "image", "lastFrame", "referenceImages", "video"}


class WireError(Exception):
    """An error Google answers with its JSON error envelope."""

    def __init__(
        self,
        http: int,
        status: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http, self.status, self.message = http, status, message
        self.details, self.headers = details, headers or {}

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.http, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return json_response({"error": error}, self.http, self.headers)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # Google pretty-prints its JSON; clients must not care, but it keeps dumps readable.
    return Response(
        json.dumps(body, indent=2),
        status,
        headers=headers,
        media_type="application/json; charset=UTF-8",
    )


def invalid(message: str) -> WireError:
    return WireError(400, "INVALID_ARGUMENT", message)


def unsupported(field: str) -> WireError:
    # Verbatim what the Gemini API answers for `generateAudio` on Veo 3.x.
    return invalid(
        f"`{field}` isn't supported by this model. Please remove it or refer to the Gemini API "
        "documentation for supported usage."
    )


def api_key_invalid() -> WireError:
    # Google answers a wrong key with 400, not 401/403.
    message = "API key not valid. Please pass a valid API key."
    return WireError(
        400,
        "INVALID_ARGUMENT",
        message,
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ],
    )


def api_key_missing() -> WireError:
    return WireError(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    )


def not_found(message: str = "Requested entity was not found.") -> WireError:
    return WireError(404, "NOT_FOUND", message)


def model_not_found(model: str) -> WireError:
    return not_found(
        f"models/{model} is not found for API version v1beta, or is not supported for "
        "predictLongRunning. Call ListModels to see the list of available models and their "
        "supported methods."
    )


_QUOTA_METRIC = "generativelanguage.googleapis.com/predict_long_running_requests"


def resource_exhausted(retry_after: int) -> WireError:
    return WireError(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _QUOTA_METRIC,
                        "quotaId": "PredictLongRunningRequestsPerMinutePerProjectPerModel",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"},
        ],
        headers={"Retry-After": str(retry_after)},
    )


_SERVER_ERRORS = {
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    502: ("UNAVAILABLE", "Bad gateway."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


def server_error(http: int) -> WireError:
    status, message = _SERVER_ERRORS.get(http, _SERVER_ERRORS[503])
    return WireError(http, status, message)


@dataclass(frozen=True)
class VideoRequest:
    """A validated submission: what to render and what the caller asked for."""

    model: str
    prompt: str
    aspect_ratio: str
    resolution: str
    duration: int
    samples: int

    @property
    def frame_size(self) -> tuple[int, int]:
        return FRAME_SIZES[(self.resolution, self.aspect_ratio)]


def parse_submission(model: str, raw: bytes) -> VideoRequest:
    """Validate a predictLongRunning body the way the Gemini API does, or raise WireError."""
    family = MODELS.get(model)
    if family is None:
        raise model_not_found(model)
    try:
        body = json.loads(raw)
    except ValueError:
        raise invalid("Invalid JSON payload received. Unexpected token.") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    for key in body:
        if key not in ("instances", "parameters"):
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
            )
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise invalid("* PredictLongRunningRequest.instances: instances is not specified")
    if len(instances) != 1 or not isinstance(instances[0], dict):
        raise invalid("Exactly one instance is supported for video generation.")
    instance: dict[str, Any] = instances[0]
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("Invalid JSON payload received. parameters must be an object.")
    for key in instance:
        if key not in _INSTANCE_FIELDS:
            raise unsupported(key)
    for key in params:
        if key not in _PARAMETERS:
            raise unsupported(key)
    return _check(model, family, instance, params)


def _check(
    model: str, family: Family, instance: dict[str, Any], params: dict[str, Any]
) -> VideoRequest:
    prompt = instance.get("prompt")
    has_image = "image" in instance or "lastFrame" in instance
    references = instance.get("referenceImages")
    extension = "video" in instance
    if prompt is not None and not isinstance(prompt, str):
        raise invalid("Invalid value at 'instances[0].prompt', prompt must be a string.")
    if not (prompt or "").strip() and not (has_image or extension):
        raise invalid("A text prompt is required for text-to-video generation.")
    if "lastFrame" in instance and "image" not in instance:
        raise invalid("lastFrame must be used in combination with image.")
    if (references is not None or extension) and family is not Family.VEO_31:
        raise unsupported("referenceImages" if references is not None else "video")
    if references is not None and (
        not isinstance(references, list) or not 1 <= len(references) <= 3
    ):
        raise invalid("referenceImages accepts between 1 and 3 images.")

    aspect = params.get("aspectRatio", "16:9")
    if aspect not in ("16:9", "9:16"):
        raise invalid(f"Aspect ratio {aspect} is not supported. Supported values: 16:9, 9:16.")

    duration = params.get("durationSeconds", 8)
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        # Verbatim what the live API answered to "durationSeconds": "8".
        raise invalid("The value type for durationSeconds needs to be a number.")
    allowed = (5, 6, 8) if family is Family.VEO_2 else (4, 6, 8)
    if duration not in allowed:
        raise invalid(
            f"The durationSeconds {duration:g} is out of the supported range: "
            f"{', '.join(map(str, allowed))}."
        )
    duration = int(duration)

    if family is Family.VEO_2:
        if "resolution" in params:
            raise unsupported("resolution")
        if "seed" in params:
            raise unsupported("seed")
    resolution = params.get("resolution", "720p")
    if resolution not in ("720p", "1080p", "4k"):
        raise invalid(f"Resolution {resolution} is not supported. Supported: 720p, 1080p, 4k.")
    if resolution != "720p" and extension:
        raise invalid("Video extension only supports 720p resolution.")
    # Docs: durationSeconds "must be 8 when using extension, reference images or with 1080p
    # and 4k resolutions".
    if duration != 8 and (resolution != "720p" or extension or references is not None):
        raise invalid(
            f"durationSeconds must be 8 for {resolution} resolution, video extension or "
            f"reference images; got {duration}."
        )

    person = params.get("personGeneration")
    if person is not None:
        _check_person(family, person, image_input=has_image or references is not None)

    seed = params.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_UINT32
    ):
        raise invalid(f"seed must be an integer between 0 and {MAX_UINT32}.")
    negative = params.get("negativePrompt")
    if negative is not None and not isinstance(negative, str):
        raise invalid("Invalid value at 'parameters.negativePrompt', must be a string.")
    enhance = params.get("enhancePrompt")
    if enhance is not None and not isinstance(enhance, bool):
        raise invalid("Invalid value at 'parameters.enhancePrompt', must be a boolean.")
    samples = params.get("sampleCount", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 4:
        raise invalid("sampleCount must be between 1 and 4.")
    return VideoRequest(model, prompt or "", aspect, resolution, duration, samples)


def _check_person(family: Family, value: object, *, image_input: bool) -> None:
    # Docs table: Veo 3.x text-to-video and extension "allow_all" only; image-to-video,
    # interpolation and reference images "allow_adult" only. Veo 2: text-to-video any of
    # three, image-to-video "allow_adult" or "dont_allow".
    if family is Family.VEO_2:
        allowed = (
            {"allow_adult", "dont_allow"}
            if image_input
            else {"allow_all", "allow_adult", "dont_allow"}
        )
    else:
        allowed = {"allow_adult"} if image_input else {"allow_all"}
    if value not in allowed:
        # Verbatim shape of Google's answer ("allow_adult for personGeneration is ...").
        raise invalid(f"{value} for personGeneration is currently not supported.")
