"""Value objects shared by the API, the message catalogue and the database's JSON columns."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AspectRatio = Literal["16:9", "9:16"]
Resolution = Literal["720p", "1080p"]
ProgressStage = Literal["queued", "submitted", "generating", "downloading", "uploading"]
ErrorCode = Literal[
    "content_policy",
    "invalid_request",
    "provider_unavailable",
    "timeout",
    "quota_exceeded",
    "internal",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationParams(Strict):
    """What the user asked for; every field optional (the clarifier fills the gaps)."""

    model: str | None = Field(None, min_length=1, max_length=100)
    aspect_ratio: AspectRatio | None = None
    resolution: Resolution | None = None
    duration_seconds: Literal[4, 6, 8] | None = None
    negative_prompt: str | None = Field(None, max_length=1000)
    generate_audio: bool | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)


class RenderSpec(Strict):
    """The final, complete request the worker renders: nothing left to guess."""

    model: str
    prompt: str
    aspect_ratio: AspectRatio
    resolution: Resolution
    duration_seconds: int
    negative_prompt: str | None = None
    generate_audio: bool = False
    seed: int | None = None

    @property
    def frame_size(self) -> tuple[int, int]:
        short = 720 if self.resolution == "720p" else 1080
        long = short * 16 // 9
        return (long, short) if self.aspect_ratio == "16:9" else (short, long)


class Choice(Strict):
    value: str
    label: str


class Question(Strict):
    id: str
    text: str
    choices: list[Choice] | None = None


class Progress(Strict):
    stage: ProgressStage
    percent: float | None = Field(None, ge=0, le=100)
    queue_position: int | None = None
    elapsed_ms: int | None = None


class RenderResult(Strict):
    """What the worker stored, probed from the file; links are signed when read."""

    video_key: str
    thumbnail_key: str
    duration_seconds: float
    file_size_bytes: int
    resolution: str
    format: str
    processing_time_ms: int


class ErrorInfo(Strict):
    code: ErrorCode
    message: str
