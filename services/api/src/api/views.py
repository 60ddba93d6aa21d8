"""A generation row as the API shows it: signed media links, the seed's camelCase record."""

from __future__ import annotations

from typing import Any

from shared.db.models import Generation
from shared.domain.generation_rows import GenerationRow
from shared.media import Storage
from shared.schemas import GenerationParams, Question, RenderSpec
from shared.state_machine import Status

from api.schemas import (
    ErrorOut,
    GenerationOut,
    ProgressOut,
    ResultOut,
    SeedGeneration,
)


def etag(gen: Generation | GenerationRow) -> str:
    # Weak: the version pins the state, but the signed links inside are re-signed per read.
    return f'W/"{gen.id}.{gen.version}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == bare for t in if_none_match.split(","))


async def _result(raw: dict[str, Any] | None, storage: Storage) -> ResultOut | None:
    if not raw:
        return None
    return ResultOut(
        video_url=await storage.url_for(raw["video_key"]),
        thumbnail_url=await storage.url_for(raw["thumbnail_key"]),
        duration_seconds=raw["duration_seconds"],
        file_size_bytes=raw["file_size_bytes"],
        resolution=raw["resolution"],
        format=raw["format"],
        processing_time_ms=raw["processing_time_ms"],
    )


def _progress(raw: dict[str, Any] | None) -> ProgressOut | None:
    if not raw:
        return None
    return ProgressOut(
        stage=raw["stage"], percent=raw.get("percent"), queue_position=raw.get("queue_position")
    )


async def generation_out(
    gen: Generation | GenerationRow, storage: Storage, *, queue_position: int | None = None
) -> GenerationOut:
    """`queue_position`: for a confirmed generation waiting for a renderer (no progress yet)."""
    progress = _progress(gen.progress)
    if progress is None and queue_position is not None:
        progress = ProgressOut(stage="queued", queue_position=queue_position)
    return GenerationOut(
        id=gen.id,
        status=Status(gen.status),
        prompt=gen.prompt,
        params=GenerationParams.model_validate(gen.params),
        conversation_id=gen.conversation_id,
        auto_confirm=gen.auto_confirm,
        questions=[Question.model_validate(q) for q in gen.questions],
        answers={k: str(v) for k, v in gen.answers.items()},
        spec=RenderSpec.model_validate(gen.spec) if gen.spec else None,
        estimated_cost_usd=(
            float(gen.estimated_cost_usd) if gen.estimated_cost_usd is not None else None
        ),
        progress=progress,
        result=await _result(gen.result, storage),
        error=ErrorOut(code=gen.error["code"], message=gen.error["message"]) if gen.error else None,
        created_at=gen.created_at,
        updated_at=gen.updated_at,
    )


async def seed_generation(gen: Generation | GenerationRow, storage: Storage) -> SeedGeneration:
    result = await _result(gen.result, storage)
    progress = _progress(gen.progress)
    return SeedGeneration(
        id=gen.id,
        status=Status(gen.status),
        prompt=gen.prompt,
        resultUrl=result.video_url if result else None,
        thumbnailUrl=result.thumbnail_url if result else None,
        error=gen.error["message"] if gen.error else None,
        progress=progress.percent if progress else None,
        conversationId=gen.conversation_id,
        jobId=str(gen.id),
        createdAt=gen.created_at,
        updatedAt=gen.updated_at,
        userId=gen.user_id,
        duration=result.duration_seconds if result else None,
        fileSize=result.file_size_bytes if result else None,
        resolution=result.resolution if result else None,
        format=result.format if result else None,
        processingTime=result.processing_time_ms if result else None,
    )
