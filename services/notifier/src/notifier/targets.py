"""Who receives a lifecycle event: the `NEXTJS_URL` route and the user's registered endpoints."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.messages import LifecycleEvent
from shared.state_machine import Event

NEXTJS = "nextjs"
NEXTJS_ROUTE = "/api/webhooks/worker"  # the seed's receiver


@dataclass(frozen=True)
class Target:
    name: str  # the endpoint's id, or "nextjs"
    url: str
    endpoint_id: uuid.UUID | None = None
    # A registered endpoint's signing secrets (the previous one while its grace period lasts).
    secret: str | None = None
    previous_secret: str | None = None
    previous_secret_expires_at: datetime | None = None


def wants(events: list[str] | None, event: Event) -> bool:
    """An endpoint with no filter gets every event but progress, which is asked for by name."""
    if events is None:
        return event != Event.PROGRESS
    return event.value in events


def targets_for(
    event: LifecycleEvent, nextjs_url: str | None, endpoints: Iterable[Any]
) -> list[Target]:
    """`endpoints`: the user's active endpoints (rows of `sql.ENDPOINTS_OF_USERS`)."""
    targets = []
    if nextjs_url and wants(None, event.event):
        targets.append(Target(NEXTJS, nextjs_url + NEXTJS_ROUTE))
    targets += [
        Target(
            str(e["id"]),
            e["url"],
            e["id"],
            e["secret"],
            e["previous_secret"],
            e["previous_secret_expires_at"],
        )
        for e in endpoints
        if wants(e["events"], event.event)
    ]
    return targets
