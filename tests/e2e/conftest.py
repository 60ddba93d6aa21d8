from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from shared.db.models import Conversation
from shared.settings import Settings, load_settings
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.harness import Api, Receiver, running_pipeline, serve_asgi
from tests.support import ADMIN_KEY, free_port

WORKER_API_KEY = "worker-key-for-tests"


@dataclass
class Pipeline:
    settings: Settings
    receiver: Receiver
    api: Api
    user_id: str
    sessions: async_sessionmaker[AsyncSession]

    async def conversation(self) -> str:
        conversation = Conversation(user_id=uuid.UUID(self.user_id), title="e2e")
        async with self.sessions() as session, session.begin():
            session.add(conversation)
        return str(conversation.id)


async def _new_user(base_url: str, name: str) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=base_url) as admin:
        response = await admin.post(
            "/v1/admin/users", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], body["api_key"]


@pytest.fixture
def pipeline_overrides() -> dict[str, str]:
    """Tests override settings by parametrizing this fixture indirectly."""
    return {}


@pytest.fixture
async def pipeline(
    env: dict[str, str],
    prepared: Settings,
    sessions: async_sessionmaker[AsyncSession],
    clean_db: None,
    pipeline_overrides: dict[str, str],
) -> AsyncIterator[Pipeline]:
    receiver = Receiver()
    receiver_port = free_port()
    settings = load_settings(
        **{
            **env,
            "NEXTJS_URL": f"http://127.0.0.1:{receiver_port}",
            "WORKER_API_KEY": WORKER_API_KEY,
            "WEBHOOK_RETRY_SCHEDULE": "1,1",
            "WEBHOOK_TIMEOUT_SECONDS": "2",
            **pipeline_overrides,
        }
    )
    async with serve_asgi(receiver.app(), receiver_port), running_pipeline(settings):
        user_id, key = await _new_user(settings.public_url, "e2e")
        api = Api(settings.public_url, key)
        try:
            yield Pipeline(settings, receiver, api, user_id, sessions)
        finally:
            await api.aclose()
