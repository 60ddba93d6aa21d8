"""`/v1/webhook-endpoints` and `/v1/webhook-deliveries`: register endpoints, rotate their secrets,
read the delivery log, redeliver. Another user's ids are 404s, like unknown ones."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Response
from shared.db.models import WebhookEndpoint
from shared.logging import get_logger
from shared.webhook_urls import BadWebhookUrl, internal_reason, normalised_host

from api.deps import AppSettings, CurrentUser, Runtime, Session
from api.pagination import Cursor, Limit, after, next_cursor
from api.problems import invalid, responses
from api.webhook_schemas import (
    CreateEndpoint,
    DeliveryOut,
    DeliveryPage,
    EndpointOut,
    EndpointPage,
    EndpointWithSecret,
    ResendFailed,
    Resent,
)
from api.webhook_store import (
    deliveries_out,
    enable,
    endpoint_out,
    new_secret,
    owned_endpoint,
    page_of_deliveries,
    page_of_endpoints,
    redeliver,
    resend_failed,
    rotate,
    with_secret,
)

router = APIRouter(prefix="/v1", tags=["webhooks"])
log = get_logger("WEBHOOK_ENDPOINT")


def check_url(url: str, allow_private: bool) -> None:
    """422 for a URL that is not http(s), or (unless WEBHOOK_ALLOW_PRIVATE_NETWORKS) obviously
    internal. Names are not resolved here: the notifier checks the address it connects to."""
    try:
        host = normalised_host(url)
        reason = None if allow_private else internal_reason(host)
    except BadWebhookUrl as exc:
        reason = str(exc)
    if reason is not None:
        raise invalid(
            [{"field": "url", "location": "body", "message": reason}],
            detail=f"the webhook URL cannot be used: {reason}",
        )


@router.post(
    "/webhook-endpoints",
    status_code=201,
    response_model=EndpointWithSecret,
    responses=responses(401, 413, 422),
    summary="Register a webhook endpoint; its signing secret is shown once",
)
async def create_endpoint(
    body: CreateEndpoint, user: CurrentUser, db: Session, cfg: AppSettings, response: Response
) -> EndpointWithSecret:
    check_url(body.url, cfg.webhook_allow_private_networks)
    row = WebhookEndpoint(
        user_id=user.id,
        url=body.url,
        events=body.events,
        description=body.description,
        secret=new_secret(),
    )
    db.add(row)
    await db.commit()
    log.info("Endpoint registered", endpoint_id=str(row.id), user_id=str(user.id))
    response.headers["Location"] = f"/v1/webhook-endpoints/{row.id}"
    return with_secret(row)


@router.get(
    "/webhook-endpoints",
    response_model=EndpointPage,
    responses=responses(401, 422),
    summary="List your webhook endpoints, newest first",
)
async def list_endpoints(
    user: CurrentUser, db: Session, limit: Limit = 20, cursor: Cursor = None
) -> EndpointPage:
    rows, more = await page_of_endpoints(db, user.id, limit, after(cursor))
    return EndpointPage(items=[endpoint_out(r) for r in rows], next_cursor=next_cursor(rows, more))


@router.get(
    "/webhook-endpoints/{endpoint_id}",
    response_model=EndpointOut,
    responses=responses(401, 404),
    summary="Read a webhook endpoint (never its secret)",
)
async def read_endpoint(endpoint_id: uuid.UUID, user: CurrentUser, db: Session) -> EndpointOut:
    return endpoint_out(await owned_endpoint(db, user.id, endpoint_id))


@router.delete(
    "/webhook-endpoints/{endpoint_id}",
    status_code=204,
    responses=responses(401, 404),
    summary="Delete a webhook endpoint; its pending deliveries stop",
)
async def delete_endpoint(endpoint_id: uuid.UUID, user: CurrentUser, db: Session) -> Response:
    row = await owned_endpoint(db, user.id, endpoint_id, lock=True)
    # Kept as "deleted" for the delivery log; the notifier fails its pending deliveries
    # when their next attempt comes up, and sends it nothing new.
    row.status = "deleted"
    await db.commit()
    log.info("Endpoint deleted", endpoint_id=str(endpoint_id))
    return Response(status_code=204)


@router.post(
    "/webhook-endpoints/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    responses=responses(401, 404),
    summary="A new signing secret, shown once; the old one also signs during the grace period",
)
async def rotate_secret(
    endpoint_id: uuid.UUID, user: CurrentUser, db: Session, cfg: AppSettings
) -> EndpointWithSecret:
    row = await owned_endpoint(db, user.id, endpoint_id, lock=True)
    await rotate(db, row, cfg.webhook_secret_rotation_grace_seconds)
    await db.commit()
    log.info("Endpoint secret rotated", endpoint_id=str(endpoint_id))
    return with_secret(row)


@router.post(
    "/webhook-endpoints/{endpoint_id}/enable",
    response_model=EndpointOut,
    responses=responses(401, 404),
    summary="Turn a disabled webhook endpoint back on",
    description=(
        "Sets the endpoint back to `active` and clears `disabled_reason` (and its failure streak, "
        "so one more failed attempt does not disable it again). On an endpoint that is already "
        "active it changes nothing. Events from now on are delivered to it again.\n\n"
        "Nothing is resent by itself: events that happened while it was disabled were never "
        "queued for it, and deliveries that failed because it was disabled stay `failed`. "
        "Resend those you want with `POST /v1/webhook-deliveries/{id}/redeliver` or "
        "`POST /v1/webhook-endpoints/{id}/resend-failed`. A delivery still `pending` keeps its "
        "retry schedule."
    ),
)
async def enable_endpoint(endpoint_id: uuid.UUID, user: CurrentUser, db: Session) -> EndpointOut:
    row = await owned_endpoint(db, user.id, endpoint_id, lock=True)
    if enable(row):
        await db.commit()
        log.info("Endpoint enabled", endpoint_id=str(endpoint_id))
    return endpoint_out(row)


@router.get(
    "/webhook-endpoints/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses=responses(401, 404, 422),
    summary="The endpoint's deliveries with every attempt, newest first",
)
async def list_deliveries(
    endpoint_id: uuid.UUID,
    user: CurrentUser,
    db: Session,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> DeliveryPage:
    endpoint = await owned_endpoint(db, user.id, endpoint_id)
    rows, more = await page_of_deliveries(
        db, endpoint.id, status=status, limit=limit, after=after(cursor)
    )
    return DeliveryPage(items=await deliveries_out(db, rows), next_cursor=next_cursor(rows, more))


@router.post(
    "/webhook-endpoints/{endpoint_id}/resend-failed",
    status_code=202,
    response_model=Resent,
    responses=responses(401, 404, 409, 413, 422),
    summary="Queue a new attempt of every failed delivery created since a time",
)
async def resend_failed_since(
    endpoint_id: uuid.UUID, body: ResendFailed, user: CurrentUser, db: Session, runtime: Runtime
) -> Resent:
    queued, more = await resend_failed(db, user.id, endpoint_id, body.since)
    runtime.relay.wake()
    log.info("Failed deliveries resent", endpoint_id=str(endpoint_id), queued=queued)
    return Resent(queued=queued, more=more)


@router.post(
    "/webhook-deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    responses=responses(401, 404, 409),
    summary="Send a delivery again: one new attempt of the same message (same webhook-id)",
)
async def redeliver_delivery(
    delivery_id: uuid.UUID, user: CurrentUser, db: Session, runtime: Runtime
) -> DeliveryOut:
    out = await redeliver(db, user.id, delivery_id)
    runtime.relay.wake()
    log.info("Delivery redelivered", delivery_id=str(delivery_id), webhook_id=out.webhook_id)
    return out
