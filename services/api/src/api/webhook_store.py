"""Webhook endpoints and their deliveries, as one user sees and changes them.

Endpoints are the API's rows; deliveries are the notifier's, which the API only reads, except
to re-open a finished one for a redelivery: in one transaction with the delivery row locked it
goes back to `pending` and a `manual` delivery command for its next attempt number is staged in
the outbox. The row lock makes two concurrent requests for one delivery queue one attempt (the
second sees `pending` and gets a 409), and the attempt number makes a re-sent copy of the command
harmless in the notifier.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from shared.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from shared.messages import WebhookDeliveryRequested
from shared.outbox import enqueue
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.pagination import Position, keyset_page
from api.problems import Problem, not_found
from api.webhook_schemas import AttemptOut, DeliveryOut, EndpointOut, EndpointWithSecret

# Visible to the user; "deleted" endpoints are kept only for the notifier's log.
VISIBLE = ("active", "disabled")
RESEND_BATCH = 1000
SECRET_BYTES = 32  # Standard Webhooks: 24 to 64 bytes


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def endpoint_out(row: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(
        id=row.id,
        url=row.url,
        events=row.events,
        description=row.description,
        status="disabled" if row.status == "disabled" else "active",
        disabled_reason=row.disabled_reason if row.status == "disabled" else None,
        created_at=row.created_at,
    )


def with_secret(row: WebhookEndpoint) -> EndpointWithSecret:
    return EndpointWithSecret(
        **endpoint_out(row).model_dump(),
        secret=row.secret,
        previous_secret_expires_at=row.previous_secret_expires_at if row.previous_secret else None,
    )


async def owned_endpoint(
    db: AsyncSession, user_id: uuid.UUID, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(
        col(WebhookEndpoint.id) == endpoint_id,
        col(WebhookEndpoint.user_id) == user_id,
        col(WebhookEndpoint.status).in_(VISIBLE),
    )
    if lock:
        query = query.with_for_update()
    row = await db.scalar(query.execution_options(populate_existing=True))
    if row is None:
        raise not_found("webhook endpoint")
    return row


async def page_of_endpoints(
    db: AsyncSession, user_id: uuid.UUID, limit: int, after: Position | None
) -> tuple[list[WebhookEndpoint], bool]:
    query = select(WebhookEndpoint).where(
        col(WebhookEndpoint.user_id) == user_id, col(WebhookEndpoint.status).in_(VISIBLE)
    )
    return await keyset_page(db, query, WebhookEndpoint, limit=limit, after=after)


async def rotate(
    db: AsyncSession, endpoint: WebhookEndpoint, grace_seconds: int
) -> WebhookEndpoint:
    """A new secret; the old one keeps signing beside it for the grace period (a rotation
    within the grace period drops the oldest: two secrets at most)."""
    endpoint.previous_secret = endpoint.secret if grace_seconds > 0 else None
    endpoint.previous_secret_expires_at = (
        utcnow() + timedelta(seconds=grace_seconds) if grace_seconds > 0 else None
    )
    endpoint.secret = new_secret()
    await db.flush()
    return endpoint


def enable(endpoint: WebhookEndpoint) -> bool:
    """Back to `active` with no reason and no failure streak (so the next failed attempt starts
    a new streak instead of disabling it again at once); False if it was active already."""
    if endpoint.status == "active":
        return False
    endpoint.status = "active"
    endpoint.disabled_reason = None
    endpoint.failing_since = None
    return True


async def deliveries_out(db: AsyncSession, rows: list[WebhookDelivery]) -> list[DeliveryOut]:
    """Deliveries with their attempts, oldest attempt first (one query for the whole page)."""
    attempts: dict[uuid.UUID, list[AttemptOut]] = defaultdict(list)
    if rows:
        found = await db.scalars(
            select(WebhookAttempt)
            .where(col(WebhookAttempt.delivery_id).in_([d.id for d in rows]))
            .order_by(col(WebhookAttempt.id))
        )
        for a in found:
            attempts[a.delivery_id].append(
                AttemptOut(
                    at=a.at,
                    status_code=a.status_code,
                    latency_ms=a.latency_ms,
                    error=a.error,
                    response_excerpt=a.response_excerpt,
                    manual=a.manual,
                )
            )
    return [
        DeliveryOut(
            id=d.id,
            webhook_id=d.webhook_id,
            endpoint_id=d.endpoint_id,
            event=d.event,
            generation_id=d.generation_id,
            status=d.status,
            attempts=attempts[d.id],
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            created_at=d.created_at,
        )
        for d in rows
    ]


async def page_of_deliveries(
    db: AsyncSession,
    endpoint_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    after: Position | None,
) -> tuple[list[WebhookDelivery], bool]:
    query = select(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint_id)
    if status is not None:
        query = query.where(col(WebhookDelivery.status) == status)
    return await keyset_page(db, query, WebhookDelivery, limit=limit, after=after)


async def owned_delivery(
    db: AsyncSession, user_id: uuid.UUID, delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, WebhookEndpoint]:
    """The user's delivery, locked, with its endpoint; 404 for anyone else's (and for the
    operator's `NEXTJS_URL` deliveries, which belong to no user)."""
    found = (
        await db.execute(
            select(WebhookDelivery, WebhookEndpoint)
            .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
            .where(
                col(WebhookDelivery.id) == delivery_id,
                col(WebhookEndpoint.user_id) == user_id,
                col(WebhookEndpoint.status).in_(VISIBLE),
            )
            .with_for_update(of=WebhookDelivery)
            .execution_options(populate_existing=True)
        )
    ).first()
    if found is None:
        raise not_found("webhook delivery")
    delivery, endpoint = found
    return delivery, endpoint


def ensure_active(endpoint: WebhookEndpoint) -> None:
    if endpoint.status != "active":
        raise Problem(
            409,
            "the endpoint is disabled; nothing is sent to it"
            + (f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else ""),
            slug="endpoint-disabled",
        )


async def reopen(db: AsyncSession, deliveries: list[WebhookDelivery]) -> None:
    """Back to `pending`, each with a manual command for its next attempt (caller holds the
    rows' locks and commits)."""
    if not deliveries:
        return
    ids = [d.id for d in deliveries]
    counts: dict[uuid.UUID, int] = dict(
        (
            await db.execute(
                select(col(WebhookAttempt.delivery_id), func.count())
                .where(col(WebhookAttempt.delivery_id).in_(ids))
                .group_by(col(WebhookAttempt.delivery_id))
            )
        ).all()
    )
    await db.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id).in_(ids))
        .values(status="pending", next_attempt_at=None)
    )
    for d in deliveries:
        enqueue(
            db,
            WebhookDeliveryRequested(
                generation_id=d.generation_id,
                delivery_id=d.id,
                attempt=int(counts.get(d.id, 0)) + 1,
                manual=True,
            ),
        )


async def redeliver(db: AsyncSession, user_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryOut:
    delivery, endpoint = await owned_delivery(db, user_id, delivery_id)
    if delivery.status == "pending":
        raise Problem(
            409,
            "this delivery is still being attempted; redeliver it once it has succeeded or failed",
            slug="delivery-pending",
        )
    ensure_active(endpoint)
    await reopen(db, [delivery])
    await db.commit()
    await db.refresh(delivery)
    return (await deliveries_out(db, [delivery]))[0]


async def resend_failed(
    db: AsyncSession, user_id: uuid.UUID, endpoint_id: uuid.UUID, since: datetime
) -> tuple[int, bool]:
    """Re-open up to RESEND_BATCH of the endpoint's failed deliveries created since `since`,
    oldest first. Rows another request holds are skipped (that request re-opens them)."""
    endpoint = await owned_endpoint(db, user_id, endpoint_id)
    ensure_active(endpoint)
    rows = list(
        (
            await db.scalars(
                select(WebhookDelivery)
                .where(
                    col(WebhookDelivery.endpoint_id) == endpoint.id,
                    col(WebhookDelivery.status) == "failed",
                    col(WebhookDelivery.created_at) >= since,
                )
                .order_by(col(WebhookDelivery.created_at), col(WebhookDelivery.id))
                .limit(RESEND_BATCH + 1)
                .with_for_update(skip_locked=True)
            )
        ).all()
    )
    batch = rows[:RESEND_BATCH]
    await reopen(db, batch)
    await db.commit()
    return len(batch), len(rows) > RESEND_BATCH
