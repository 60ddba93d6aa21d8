"""Applying the worker's render reports to a generation.

Reports arrive at least once and possibly out of order (they are consumed concurrently), so
each is applied against the row as it is now:
- a report for a terminal generation (cancelled while rendering, or a duplicate) is ignored;
- a report for a generation still `confirmed` first moves it to `processing` (its `started`
  report may simply not have been applied yet);
- a report that cannot be genuine (see `check_plausible`) is dead-lettered;
- progress only moves forward (stage order, then percent, then the place in the queue): an
  older report arriving late is ignored rather than shown as progress going backwards.
"""

from __future__ import annotations

import math
from typing import Any

from shared.consumer import PermanentError, Transaction
from shared.domain.generation_rows import GenerationRow
from shared.logging import get_logger
from shared.media import thumbnail_key, video_key
from shared.messages import RenderReported
from shared.schemas import ErrorInfo, Progress
from shared.state_machine import Status, Trigger

from orchestrator.generations import transition

log = get_logger("ORCHESTRATOR")

STAGE_ORDER = {"queued": 0, "submitted": 1, "generating": 2, "downloading": 3, "uploading": 4}


def _rank(progress: Progress) -> tuple[int, float, float]:
    """Stage, then percent, then a place nearer the front of the queue (an unknown place is
    the back of it)."""
    place = progress.queue_position
    return STAGE_ORDER[progress.stage], progress.percent or 0.0, -(place or math.inf)


def is_newer(current: dict[str, Any] | None, reported: Progress) -> bool:
    if current is None:
        return True
    return _rank(reported) > _rank(Progress.model_validate(current))


def _json(value: Progress | ErrorInfo) -> dict[str, Any]:
    return value.model_dump(mode="json")


def check_plausible(gen: GenerationRow, report: RenderReported) -> None:
    """Bus input is validated like HTTP input: a report no worker could have sent (for a
    generation never dispatched, or naming another generation's files) is dead-lettered."""
    if Status(gen.status) in (Status.PENDING_CLARIFICATION, Status.PENDING_CONFIRMATION):
        raise PermanentError(f"a render report for a generation that is {gen.status}")
    if report.kind == "succeeded":
        if report.result is None:
            raise PermanentError("a succeeded report without a result")
        expected = (video_key(gen.user_id, gen.id), thumbnail_key(gen.user_id, gen.id))
        if (report.result.video_key, report.result.thumbnail_key) != expected:
            raise PermanentError("a succeeded report naming files of another generation")


async def apply_report(tx: Transaction, gen: GenerationRow, report: RenderReported) -> None:
    check_plausible(gen, report)
    status = Status(gen.status)
    if status not in (Status.CONFIRMED, Status.PROCESSING):
        # Terminal (cancelled while rendering, or already finished): the outcome stands.
        log.info("Render report ignored", kind=report.kind, status=status.value)
        return
    if report.kind == "failed":
        error = report.error or ErrorInfo(code="internal", message="the render failed")
        await transition(tx, gen, Trigger.RENDER_FAILED, error=_json(error), progress=None)
        log.info("Generation failed", code=error.code)
        return
    if status == Status.CONFIRMED:
        # The processing event carries the reported stage, so a first `progress` report needs
        # no separate progress event.
        first = report.progress if report.kind != "succeeded" and report.progress else None
        await transition(
            tx, gen, Trigger.RENDER_STARTED, progress=_json(first or Progress(stage="queued"))
        )
        log.info("Generation processing", stage=(first.stage if first else "queued"))
        if report.kind != "succeeded":
            return
    if report.kind == "progress":
        if report.progress is None or not is_newer(gen.progress, report.progress):
            log.debug("Stale progress ignored", progress=report.progress)
            return
        await transition(tx, gen, Trigger.PROGRESS, progress=_json(report.progress))
    elif report.kind == "succeeded" and report.result is not None:
        await transition(
            tx,
            gen,
            Trigger.RENDER_SUCCEEDED,
            result=report.result.model_dump(mode="json"),
            progress=None,
            error=None,
        )
        log.info("Generation completed", duration_seconds=report.result.duration_seconds)
    # A second `started` for a generation already processing (a resumed render): nothing new.
