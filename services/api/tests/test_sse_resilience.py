"""A live stream survives the broker going away: the instance's exclusive queue dies with its
connection, so whatever was published meanwhile never reaches it; on reconnect the feed tells
every open stream to catch up from the database, and the stream delivers what it missed."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
from api.app import create_app
from shared.settings import Settings, load_settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.harness import eventually, serve_asgi
from tests.infra import PrivateRabbit
from tests.support import ADMIN_KEY, free_port

from .conftest import ServeApi
from .test_sse import Recorder


async def a_user_with_a_generation(
    http: httpx.AsyncClient, name: str
) -> tuple[dict[str, str], str]:
    """A new user (made with the admin key) and a generation of theirs: their auth headers
    and the generation's id."""
    made = await http.post(
        "/v1/admin/users",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    auth = {"Authorization": f"Bearer {made.json()['api_key']}"}
    gen_id = (await http.post("/v1/generations", json={"prompt": "a fox"}, headers=auth)).json()[
        "id"
    ]
    return auth, gen_id


async def test_a_stream_catches_up_on_what_the_broker_lost(
    env: dict[str, str],
    prepared: Settings,
    clean_db: None,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    rabbit = PrivateRabbit()
    await asyncio.to_thread(rabbit.start)
    try:
        port = free_port()
        settings = load_settings(
            **{**env, "AMQP_URL": rabbit.url, "API_PORT": str(port), "SSE_HEARTBEAT_SECONDS": "0.5"}
        )
        async with (
            serve_asgi(create_app(settings), port),
            httpx.AsyncClient(base_url=settings.public_url) as http,
        ):
            auth, gen_id = await a_user_with_a_generation(http, "live")
            stream = Recorder()
            url = f"{settings.public_url}/v1/generations/{gen_id}/events"
            task = asyncio.create_task(stream.run(url, auth))

            async def opened() -> bool:
                return len(stream.seen) == 1

            await eventually(opened, within=10)
            assert (stream.seen[0].id, stream.seen[0].name) == ("1", "generation.requested")

            # A change whose event the broker will never carry: committed without an outbox
            # row (outbox rows are written at commit and handed to a relay, so one cannot be
            # marked as sent beforehand). The stream catches up from the row itself.
            async with sessions() as session, session.begin():
                await session.execute(
                    text(
                        "UPDATE generations SET status = 'cancelled', version = version + 1,"
                        " updated_at = now(), status_changed_at = now() WHERE id = :g"
                    ),
                    {"g": uuid.UUID(gen_id)},
                )
            await asyncio.sleep(1.5)
            assert len(stream.seen) == 1  # the stream has not heard: it is fed by the broker

            # The broker restarts: on reconnect the feed has every stream catch up.
            await asyncio.to_thread(rabbit.restart)
            await asyncio.wait_for(task, 60)
            assert [(e.id, e.name) for e in stream.seen] == [
                ("1", "generation.requested"),
                ("2", "generation.cancelled"),
            ]
            assert stream.ended
    finally:
        await asyncio.to_thread(rabbit.close)


async def test_sigterm_ends_open_streams_so_the_api_stops_at_once(serve_api: ServeApi) -> None:
    """`reelflow api` with an open stream stops on SIGTERM in well under its 20 s graceful
    timeout: the stream ends (its client would resume elsewhere) instead of holding it up."""
    proc, base = await serve_api()
    async with httpx.AsyncClient(base_url=base) as http:
        auth, gen_id = await a_user_with_a_generation(http, "bye")
    stream = Recorder()
    task = asyncio.create_task(stream.run(f"{base}/v1/generations/{gen_id}/events", auth))
    await eventually(lambda: _seen(stream), within=10)

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        assert await proc.wait() == 0
        await task  # the stream ended, not cut: the client saw a clean end of body
    assert time.monotonic() - started < 10
    assert stream.ended and [e.name for e in stream.seen] == ["generation.requested"]


async def _seen(stream: Recorder) -> bool:
    return bool(stream.seen)
