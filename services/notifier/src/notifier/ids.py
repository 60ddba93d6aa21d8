"""Stable identities for what the notifier writes, derived from the event itself.

The outbox gives every publication its own AMQP message id, and the inbox catches a second
delivery of that id. A copy of the same fact published again under a new id (a replay, a
re-publish) would slip past the inbox, so assistant messages and webhook deliveries are keyed on
the fact instead: this generation, this event, this snapshot. Every transition stamps a new
`updated_at`, so two real events never share a key, and two copies of one event always do.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from shared.messages import LifecycleEvent

_NAMESPACE = uuid.UUID("5b1f7c52-4a0e-4f7e-9a55-2f3b8d0c6e11")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def event_key(event: LifecycleEvent) -> uuid.UUID:
    snap = event.snapshot
    progress = snap.progress.model_dump_json() if snap.progress else ""
    name = "|".join(
        (
            str(event.generation_id),
            event.event.value,
            snap.status.value,
            _utc(snap.updated_at).isoformat(),
            progress,
        )
    )
    return uuid.uuid5(_NAMESPACE, name)


def webhook_id(key: uuid.UUID) -> str:
    """Standard Webhooks `webhook-id`: one per event, the same for every target and retry."""
    return f"msg_{key.hex}"


def traceparent_for(key: uuid.UUID) -> str:
    """A W3C `traceparent` for an event that arrived without one (no tracing upstream): the
    event key as trace id, so every delivery and retry of one event reads as one trace. Flags
    00: nothing was sampled or recorded for it."""
    return f"00-{key.hex}-{key.hex[:16]}-00"
