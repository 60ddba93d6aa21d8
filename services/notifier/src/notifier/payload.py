"""The webhook body: the seed's payload, field for field, built from the event's snapshot.

Serialised once, compactly (as the seed's `JSON.stringify` did) and stored with the delivery, so
every retry sends the same bytes under the same `webhook-id`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.messages import LifecycleEvent
from shared.state_machine import Status


@dataclass(frozen=True)
class Links:
    """Signed links to the stored video and thumbnail (completed events only)."""

    video_url: str
    thumbnail_url: str


def iso_z(moment: datetime) -> str:
    """`2026-01-01T00:00:00.000Z`, as JavaScript's `toISOString()` writes it."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)


def body(event: LifecycleEvent, links: Links | None) -> dict[str, Any]:
    snap = event.snapshot
    result = None
    if snap.result is not None and links is not None:
        result = {
            "videoUrl": links.video_url,
            "thumbnailUrl": links.thumbnail_url,
            "duration": _number(snap.result.duration_seconds),
            "fileSize": snap.result.file_size_bytes,
            "resolution": snap.result.resolution,
            "format": snap.result.format,
            "processingTime": snap.result.processing_time_ms,
        }
    progress = None
    if snap.status == Status.PROCESSING and snap.progress is not None:
        progress = {
            "stage": snap.progress.stage,
            "percent": snap.progress.percent,
            "queuePosition": snap.progress.queue_position,
        }
    return {
        "event": event.event.value,
        "jobId": snap.job_id or str(event.generation_id),
        "generationId": str(event.generation_id),
        "userId": str(event.user_id),
        "conversationId": str(event.conversation_id) if event.conversation_id else None,
        "status": snap.status.value,
        "result": result,
        # The seed's receiver reads `error` as the failure's text.
        "error": snap.error.message if snap.error else None,
        "progress": progress,
        "timestamp": iso_z(event.occurred_at),
    }


def serialise(event: LifecycleEvent, links: Links | None) -> str:
    return json.dumps(body(event, links), separators=(",", ":"), ensure_ascii=False)
