"""The operator commands, run as a person runs them: `reelflow dlq …`, `generations show`,
`outbox status`, against the real broker and database."""

from __future__ import annotations

import json
import uuid

import aio_pika
import pytest
from aio_pika.abc import DeliveryMode
from shared.db.models import Generation, User
from shared.settings import Settings

from tests.e2e.harness import eventually
from tests.support import reelflow

pytestmark = pytest.mark.usefixtures("clean_db")


async def _depth(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def test_dlq_list_show_replay(env: dict[str, str], prepared: Settings) -> None:
    from orchestrator.main import build

    service = build(prepared)
    await service.start()
    try:
        connection = await aio_pika.connect(prepared.amqp_url)
        async with connection:
            channel = await connection.channel()
            await (await channel.get_exchange("reelflow.events")).publish(
                aio_pika.Message(
                    b"{not json",
                    message_id="poison-1",
                    type="generation.requested",
                    delivery_mode=DeliveryMode.PERSISTENT,
                ),
                routing_key="generation.requested",
            )
        await eventually(lambda: _dead(prepared), within=30)
    finally:
        await service.stop()

    listed = await reelflow(env, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(
        line.split() == ["orchestrator.requests.dlq", "1"] for line in listed.stdout.splitlines()
    ), listed.stdout

    shown = await reelflow(env, "dlq", "show", "orchestrator.requests")
    assert shown.returncode == 0, shown.stderr
    dead = json.loads(shown.stdout.splitlines()[0])
    assert dead["message_id"] == "poison-1"
    assert dead["reason"].startswith("unreadable: ") and "json_invalid" in dead["reason"]
    assert dead["queue"] == "orchestrator.requests" and dead["body"] == "{not json"
    assert await _depth(prepared, "orchestrator.requests.dlq") == 1  # show takes nothing away

    replayed = await reelflow(env, "dlq", "replay", "orchestrator.requests.dlq")
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
    assert await _depth(prepared, "orchestrator.requests.dlq") == 0
    assert await _depth(prepared, "orchestrator.requests") == 1

    unknown = await reelflow(env, "dlq", "show", "no.such.queue")
    assert unknown.returncode == 2 and "not one of Reelflow's queues" in unknown.stderr


async def _dead(settings: Settings) -> bool:
    return await _depth(settings, "orchestrator.requests.dlq") == 1


async def test_generations_show_and_outbox_status(env: dict[str, str], sessions) -> None:
    user = User(name="ops", api_key_prefix="rf_x", api_key_sha256=uuid.uuid4().hex)
    gen = Generation(
        user_id=user.id,
        status="processing",
        prompt="a fox",
        params={},
        progress={"stage": "generating", "percent": 40},
    )
    async with sessions() as session, session.begin():
        session.add(user)
        await session.flush()
        session.add(gen)

    shown = await reelflow(env, "generations", "show", str(gen.id))
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["generation"]["status"] == "processing"
    assert report["generation"]["progress"] == {"stage": "generating", "percent": 40}
    assert report["timeline"] == [] and report["render_job"] is None

    missing = await reelflow(env, "generations", "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no generation" in missing.stderr
    garbage = await reelflow(env, "generations", "show", "not-an-id")
    assert garbage.returncode == 1

    status = await reelflow(env, "outbox", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["unpublished"] == 0


async def test_bad_configuration_fails_with_one_line(env: dict[str, str]) -> None:
    result = await reelflow({**env, "API_PORT": "not-a-port"}, "migrate")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "API_PORT" in result.stderr
