"""What a video provider is to the worker: check a spec up front, then make one video file.

The worker owns everything around the provider (the job row, reports, cancellation, probing,
storage); a provider only turns a `RenderSpec` into an MP4 at a path. Long-running providers
(Veo) record their operation name through `ProviderJob.remember_operation` before they wait,
and get it back in `ProviderJob.operation_name` when a restarted worker resumes the job, so
they poll the same operation instead of submitting (and paying) again.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.schemas import ErrorCode, ErrorInfo, Progress, RenderSpec

# Called with the provider's progress; raises `JobCancelled` when the generation was cancelled,
# which the provider must let propagate (it is how a render is stopped).
ProgressCallback = Callable[[Progress], Coroutine[Any, Any, None]]


class JobCancelled(Exception):
    """The generation was cancelled (or otherwise ended) while its render was under way."""


class ProviderError(Exception):
    """A failure the provider can name: reported as `failed` with this code, never retried."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message)


class InvalidRequest(ProviderError):
    """The spec asks for something this provider cannot do."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_request", message)


@dataclass(frozen=True)
class ProviderJob:
    generation_id: uuid.UUID
    spec: RenderSpec
    attempt: int  # 1 on the first try; more when a crashed render is resumed
    operation_name: str | None  # what an earlier attempt recorded, if anything
    remember_operation: Callable[[str], Awaitable[None]]  # persist before waiting on it


class VideoProvider(Protocol):
    name: str

    def check(self, spec: RenderSpec) -> None:
        """Raise `InvalidRequest` for what the provider cannot honour (before any work)."""

    async def generate(self, job: ProviderJob, out_path: Path, progress: ProgressCallback) -> None:
        """Write the video to `out_path`, or raise `ProviderError` / `JobCancelled`."""
