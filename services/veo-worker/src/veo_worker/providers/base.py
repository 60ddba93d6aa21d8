"""What a video provider is to the worker, and the failures a job can end in.

Two shapes of provider sit behind the same job table (`jobs.py`) and scheduler:
- an inline renderer (`local`): `check` a spec, then `generate` one MP4 at a path, reporting
  progress through a callback that doubles as the cancellation check;
- a long-running remote one (`veo`): submit, poll, download, driven step by step by
  `flows.VeoFlow`, because its waits last minutes and must survive a restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.schemas import ErrorCode, ErrorInfo, Progress, RenderSpec

# Called with the provider's progress; raises `JobCancelled` (or `Interrupted`) to stop the
# render, which the provider must let propagate.
ProgressCallback = Callable[[Progress], Coroutine[Any, Any, None]]


class JobCancelled(Exception):
    """The generation was cancelled (or otherwise ended) while its render was under way."""


class Interrupted(Exception):
    """The worker is stopping: leave the job as it is, another process resumes it."""


class ProviderError(Exception):
    """A failure the provider can name: reported as `failed` with this code, never retried."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message[:1000])


class InvalidRequest(ProviderError):
    """The spec asks for something this provider cannot do."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_request", message)


@dataclass(frozen=True)
class ProviderJob:
    generation_id: uuid.UUID
    spec: RenderSpec
    attempt: int  # 1 on the first try; more when a crashed render is resumed


class VideoProvider(Protocol):
    name: str

    def check(self, spec: RenderSpec) -> None:
        """Raise `InvalidRequest` for what the provider cannot honour (before any work)."""


class InlineProvider(VideoProvider, Protocol):
    async def generate(self, job: ProviderJob, out_path: Path, progress: ProgressCallback) -> None:
        """Write the video to `out_path`, or raise `ProviderError` / `JobCancelled`."""
