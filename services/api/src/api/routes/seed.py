"""The seed's status route, in the shape its `useGenerationStatus` hook polls."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from shared.logging import get_logger, log_context

from api.deps import AppStorage, CurrentUser, Pg
from api.problems import responses
from api.queries import owned_generation_row
from api.schemas import SeedStatus
from api.views import seed_generation

router = APIRouter(tags=["seed compatibility"])
log = get_logger("GENERATION_STATUS")


@router.get(
    "/api/generations/{generation_id}/status",
    response_model=SeedStatus,
    responses=responses(401, 404),
    summary="The seed's status route (camelCase record under `generation`)",
)
async def seed_status(
    generation_id: uuid.UUID, user: CurrentUser, pg: Pg, storage: AppStorage
) -> SeedStatus:
    gen = await owned_generation_row(pg, user.id, generation_id)  # the raw pool: polled often
    with log_context(generation_id=str(gen.id)):
        log.debug("Status polled", status=gen.status)
    return SeedStatus(generation=await seed_generation(gen, storage))
