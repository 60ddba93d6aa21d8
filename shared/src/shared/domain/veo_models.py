"""What each Veo model can honour, from Google's "Veo API parameters and specifications" table
(ai.google.dev/gemini-api/docs/video), as the Gemini API enforces it.

Pure data and one check, used twice: by `pricing.check_supported` on the user's (partial)
params at creation, so the API answers 422 at once, and by the worker on the final spec before
anything is sent (a late `invalid_request` only for what creation could not see, e.g. a duration
given as an answer to a question).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VeoModel:
    durations: tuple[int, ...]  # seconds the model renders (within what our API offers)
    resolutions: tuple[str, ...]
    full_hd_needs_8s: bool  # Veo 3.x: 1080p only with durationSeconds 8
    audio: bool  # Veo 3.x always renders audio (the API refuses `generateAudio`); Veo 2 never
    seed: bool  # Veo 2 refuses `seed`
    typical_seconds: float  # usual submit-to-done time, for the `generating` percent estimate


_VEO_3 = VeoModel(
    durations=(4, 6, 8),
    resolutions=("720p", "1080p"),
    full_hd_needs_8s=True,
    audio=True,
    seed=True,
    typical_seconds=90.0,
)
_VEO_3_FAST = VeoModel(
    durations=(4, 6, 8),
    resolutions=("720p", "1080p"),
    full_hd_needs_8s=True,
    audio=True,
    seed=True,
    typical_seconds=50.0,
)
# Veo 2 renders 5, 6 or 8 s; our API offers 4, 6 or 8, so 6 and 8. It takes no `resolution`
# (always 720p) and no `seed`.
_VEO_2 = VeoModel(
    durations=(6, 8),
    resolutions=("720p",),
    full_hd_needs_8s=False,
    audio=False,
    seed=False,
    typical_seconds=60.0,
)

MODELS: dict[str, VeoModel] = {
    "veo-3.1-generate-preview": _VEO_3,
    "veo-3.1-fast-generate-preview": _VEO_3_FAST,
    "veo-3.0-generate-001": _VEO_3,
    "veo-3.0-fast-generate-001": _VEO_3_FAST,
    "veo-2.0-generate-001": _VEO_2,
}


def durations_for(model_name: str, resolution: str | None) -> tuple[int, ...] | None:
    """The durations `model_name` renders at `resolution`; None when the model is not in the
    table (the local renderer, or one the operator priced): then nothing is narrowed."""
    model = MODELS.get(model_name)
    if model is None:
        return None
    if model.full_hd_needs_8s and resolution == "1080p":
        return (8,)
    return model.durations


def problems(
    model: VeoModel,
    *,
    resolution: str | None,
    duration_seconds: int | None,
    generate_audio: bool | None,
    seed: int | None,
) -> dict[str, str]:
    """What `model` cannot honour, by params field; None means "not given" (nothing to check)."""
    found: dict[str, str] = {}
    if duration_seconds is not None and duration_seconds not in model.durations:
        allowed = ", ".join(map(str, model.durations))
        found["params.duration_seconds"] = f"this model renders {allowed} seconds"
    if resolution is not None and resolution not in model.resolutions:
        found["params.resolution"] = f"this model renders only {', '.join(model.resolutions)}"
    elif (
        model.full_hd_needs_8s
        and resolution == "1080p"
        and duration_seconds is not None
        and duration_seconds != 8
    ):
        found["params.duration_seconds"] = "1080p is rendered only at 8 seconds"
    if generate_audio is not None and generate_audio != model.audio:
        found["params.generate_audio"] = (
            "this model always renders audio (it cannot be turned off)"
            if model.audio
            else "this model renders no audio"
        )
    if seed is not None and not model.seed:
        found["params.seed"] = "this model takes no seed"
    return found
