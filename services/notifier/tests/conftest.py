"""Fixtures for the notifier's tests: rows to hang events on, a way to publish lifecycle events
to the real broker, real HTTP receivers on loopback, and the notifier itself, in-process."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, DeliveryMode, HeadersType
from aiohttp import web
from notifier.main import NotifierService, build
from shared.db.models import Conversation, Generation, User, WebhookEndpoint
from shared.messages import GenerationSnapshot, LifecycleEvent, WebhookDeliveryRequested
from shared.schemas import GenerationParams
from shared.settings import Settings, load_settings
from shared.state_machine import Event, Status
from shared.topology import (
    COMMANDS,
    DELAY_QUEUES,
    EVENTS,
    NOTIFIER_DELIVERIES,
    NOTIFIER_EVENTS,
    WEBHOOK_DELIVERY_KEY,
    declare,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.support import free_port

WORKER_API_KEY = "test-worker-key-\u00e9"  # non-ASCII on purpose: the key is its UTF-8 bytes


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    """Poll until `check()` returns something truthy; fail with its last value otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while loop.time() < deadline:
        try:
            last = await check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"not met within {within}s; last: {last!r}")


# --- rows -------------------------------------------------------------------------------------


@dataclass
class World:
    """A user, a conversation and a generation in it, as the API would have written them."""

    sessions: async_sessionmaker[AsyncSession]
    user_id: uuid.UUID
    conversation_id: uuid.UUID
    generation: Generation = field(init=False)  # set by the world fixture, once the rows exist

    async def endpoint(
        self, url: str, events: list[str] | None = None, user_id: uuid.UUID | None = None
    ) -> WebhookEndpoint:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        row = WebhookEndpoint(
            user_id=user_id or self.user_id, url=url, events=events, secret=secret
        )
        async with self.sessions() as session, session.begin():
            session.add(row)
        return row

    async def endpoint_row(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        async with self.sessions() as session:
            row = await session.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        return row

    async def set_endpoint(self, endpoint_id: uuid.UUID, **values: object) -> None:
        async with self.sessions() as session, session.begin():
            row = await session.get(WebhookEndpoint, endpoint_id)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)

    async def another_generation(self, conversation: bool = True) -> Generation:
        gen = Generation(
            user_id=self.user_id,
            conversation_id=self.conversation_id if conversation else None,
            status=Status.PENDING_CLARIFICATION.value,
            prompt="A red fox running through fresh snow at dawn, cinematic",
        )
        async with self.sessions() as session, session.begin():
            session.add(gen)
        return gen


@pytest.fixture
async def world(clean_db: None, sessions: async_sessionmaker[AsyncSession]) -> World:
    user = User(name="ada", api_key_prefix="rf_test", api_key_sha256=secrets.token_hex(32))
    async with sessions() as session, session.begin():
        session.add(user)
        await session.flush()
        conversation = Conversation(user_id=user.id, title="foxes")
        session.add(conversation)
        await session.flush()
    w = World(sessions, user.id, conversation.id)
    w.generation = await w.another_generation()
    return w


def lifecycle(gen: Generation, event: Event, status: Status, **snapshot: Any) -> LifecycleEvent:
    """The event the orchestrator would publish for `gen` moving to `status`."""
    now = datetime.now(UTC)
    snap = GenerationSnapshot(
        status=status,
        prompt=gen.prompt,
        params=snapshot.pop("params", GenerationParams()),
        job_id=str(gen.id),
        created_at=gen.created_at,
        updated_at=now,
        **snapshot,
    )
    return LifecycleEvent(
        generation_id=gen.id,
        event=event,
        user_id=gen.user_id,
        conversation_id=gen.conversation_id,
        snapshot=snap,
        occurred_at=now,
    )


def cancelled(gen: Generation) -> LifecycleEvent:
    """The event the orchestrator would publish for `gen` being cancelled."""
    return lifecycle(gen, Event.CANCELLED, Status.CANCELLED)


# --- the broker -------------------------------------------------------------------------------


@pytest.fixture
async def channel(prepared: Settings) -> AsyncIterator[AbstractChannel]:
    """A channel on the test vhost; the notifier's queues start empty in every test."""
    connection = await aio_pika.connect(prepared.amqp_url)
    async with connection:
        ch = await connection.channel()
        await declare(ch)
        for name in (
            NOTIFIER_EVENTS.name,
            NOTIFIER_DELIVERIES.name,
            *(d.name for d in DELAY_QUEUES),
        ):
            await (await ch.get_queue(name)).purge()
        yield ch


Publish = Callable[..., Awaitable[str]]


@pytest.fixture
def publish(channel: AbstractChannel) -> Publish:
    async def send(
        event: LifecycleEvent, message_id: str | None = None, headers: HeadersType | None = None
    ) -> str:
        message_id = message_id or str(uuid.uuid4())
        exchange = await channel.get_exchange(EVENTS)
        await exchange.publish(
            aio_pika.Message(
                event.model_dump_json().encode(),
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=message_id,
                type=LifecycleEvent.TYPE,
                correlation_id=str(event.generation_id),
                headers=headers or {},
            ),
            routing_key=event.routing_key,
            mandatory=True,
        )
        return message_id

    return send


SendCommand = Callable[[WebhookDeliveryRequested], Awaitable[None]]


@pytest.fixture
def send_command(channel: AbstractChannel) -> SendCommand:
    """Put a webhook delivery command on the commands exchange, as the notifier (a retry) or
    the API (a manual redelivery) would."""

    async def send(command: WebhookDeliveryRequested) -> None:
        exchange = await channel.get_exchange(COMMANDS)
        await exchange.publish(
            aio_pika.Message(
                command.model_dump_json().encode(),
                message_id=str(uuid.uuid4()),
                type=command.TYPE,
                delivery_mode=DeliveryMode.PERSISTENT,
            ),
            routing_key=WEBHOOK_DELIVERY_KEY,
            mandatory=True,
        )

    return send


# --- HTTP receivers ---------------------------------------------------------------------------


@dataclass
class Hit:
    body: bytes
    headers: dict[str, str]
    at: float  # loop time on arrival
    path: str

    @property
    def event(self) -> str:
        import json

        return str(json.loads(self.body)["event"])


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1. `script` answers the first requests in turn (a status,
    or (status, headers)); then `status`. `hang` seconds of silence before answering."""

    status: int = 200
    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    hang: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    cut: list[float] = field(default_factory=list)  # loop times at which a client gave up
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        self.hits.append(
            Hit(await request.read(), dict(request.headers), loop.time(), request.path)
        )
        answer = self.script.pop(0) if self.script else self.status
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        if self.hang:
            try:
                await asyncio.sleep(self.hang)
            except asyncio.CancelledError:
                self.cut.append(loop.time())
                raise
        return web.Response(status=status, headers=headers, text=f"answer {status}")


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []

    async def start(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", receiver.handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        receiver.port = free_port()
        await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


# --- the notifier -----------------------------------------------------------------------------


@pytest.fixture
async def notifier(
    env: dict[str, str], prepared: Settings, channel: AbstractChannel
) -> AsyncIterator[Callable[..., Awaitable[NotifierService]]]:
    """`await notifier(NEXTJS_URL=…, WEBHOOK_RETRY_SCHEDULE="1,1")` starts one in-process."""
    started: list[NotifierService] = []

    async def start(**overrides: str) -> NotifierService:
        settings = load_settings(
            **{
                **env,
                "WORKER_API_KEY": WORKER_API_KEY,
                "WEBHOOK_RETRY_SCHEDULE": "1,1",
                "WEBHOOK_TIMEOUT_SECONDS": "2",
                "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
                "NOTIFIER_METRICS_PORT": str(free_port()),
                **overrides,
            }
        )
        service = build(settings)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()
