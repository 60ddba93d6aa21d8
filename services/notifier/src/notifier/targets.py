"""Who receives a lifecycle event: the `NEXTJS_URL` route and the user's registered endpoints."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.db.models import WebhookEndpoint
from shared.messages import LifecycleEvent
from shared.state_machine import Event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

NEXTJS = "nextjs"
NEXTJS_ROUTE = "/api/webhooks/worker"  # the seed's receiver


@dataclass(frozen=True)
class Target:
    name: str  # the endpoint's id, or "nextjs"
    url: str
    endpoint_id: uuid.UUID | None = None


def wants(events: list[str] | None, event: Event) -> bool:
    """An endpoint with no filter gets every event but progress, which is asked for by name."""
    if events is None:
        return event != Event.PROGRESS
    return event.value in events


async def targets_for(
    session: AsyncSession, event: LifecycleEvent, nextjs_url: str | None
) -> list[Target]:
    targets = []
    if nextjs_url and wants(None, event.event):
        targets.append(Target(NEXTJS, nextjs_url + NEXTJS_ROUTE))
    endpoints = await session.scalars(
        select(WebhookEndpoint).where(
            col(WebhookEndpoint.user_id) == event.user_id,
            col(WebhookEndpoint.status) == "active",
        )
    )
    targets += [Target(str(e.id), e.url, e.id) for e in endpoints if wants(e.events, event.event)]
    return targets
