"""The per-service RabbitMQ users of definitions.json, on a real broker of their own.

A private node with the management plugin gets deploy/rabbitmq/definitions.json the way
compose's `rabbitmq-setup` gives it (deploy/rabbitmq/setup.py through the management API, with
passwords from the environment). Then each service's user runs what the service runs at start
(`topology.declare`, the whole topology) and must be able to publish what it publishes and
consume its own queues, and nothing else: no other service's queue, no other routing key on
the topic exchanges, no wildcard binding. `guest` keeps working for local development.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
import shared.topology as topology
from aio_pika.abc import AbstractRobustConnection

from tests.infra import PrivateRabbit
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "deploy" / "rabbitmq" / "setup.py"
PASSWORDS = {s: f"test-{s}-password" for s in topology.SERVICES}

pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmq-server") is None, reason="needs a local RabbitMQ installation"
)


def _load_setup() -> object:
    spec = importlib.util.spec_from_file_location("rabbitmq_setup", SETUP)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rabbit() -> Iterator[tuple[PrivateRabbit, int]]:
    node = PrivateRabbit()
    port = free_port()
    (node.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    with (node.base / "rabbitmq.conf").open("a") as conf:
        conf.write(f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {port}\n")
    shutil.chown(node.base / "enabled_plugins", "rabbitmq", "rabbitmq")
    node.start()
    try:
        yield node, port
    finally:
        node.close()


@pytest.fixture(scope="module")
def loaded(rabbit: tuple[PrivateRabbit, int]) -> PrivateRabbit:
    node, port = rabbit
    setup = _load_setup()
    definitions = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        for service, password in PASSWORDS.items():
            mp.setenv(topology.password_env(service), password)
        given = setup.setup(  # type: ignore[attr-defined]
            f"http://127.0.0.1:{port}", "guest:guest", definitions, 120
        )
    assert sorted(given) == sorted(topology.user_name(s) for s in topology.SERVICES)
    return node


@contextlib.asynccontextmanager
async def connect(node: PrivateRabbit, service: str) -> AsyncIterator[AbstractRobustConnection]:
    url = f"amqp://{topology.user_name(service)}:{PASSWORDS[service]}@127.0.0.1:{node.port}/"
    connection = await aio_pika.connect_robust(url)
    try:
        yield connection
    finally:
        await connection.close()


async def _publish(connection: AbstractRobustConnection, exchange: str, key: str) -> bool:
    """True if the broker accepted the publish (publisher confirms; refusals close the channel)."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(b"{}"), routing_key=key, timeout=10)
        return True
    except (aio_pika.exceptions.ChannelClosed, aio_pika.exceptions.DeliveryError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """Never acks: the message goes back to the queue when the consumer is cancelled."""


async def _consume(connection: AbstractRobustConnection, queue: str) -> bool:
    channel = await connection.channel()
    try:
        q = await channel.declare_queue(queue, passive=True)
        tag = await q.consume(_ignore)
        await q.cancel(tag)
        return True
    except aio_pika.exceptions.ChannelClosed:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _bind(connection: AbstractRobustConnection, queue: str, exchange: str, key: str) -> bool:
    channel = await connection.channel()
    try:
        q = await channel.declare_queue(queue, passive=True)
        await q.bind(exchange, routing_key=key)
        return True
    except aio_pika.exceptions.ChannelClosed:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def test_guest_stays_for_local_development(loaded: PrivateRabbit) -> None:
    connection = await aio_pika.connect(loaded.url)
    await connection.close()


@pytest.mark.parametrize("service", topology.SERVICES)
async def test_each_user_does_its_job_and_nothing_else(loaded: PrivateRabbit, service: str) -> None:
    async with connect(loaded, service) as connection:
        # What every process does at start: declare the whole topology.
        await topology.declare(await connection.channel())

        for exchange, keys in topology.PUBLISHES[service].items():
            key = keys[0].replace("*", "started")
            assert await _publish(connection, exchange, key), (service, exchange, key)
        forged = {
            "api": (topology.EVENTS, "render.succeeded"),
            "orchestrator": (topology.EVENTS, "render.succeeded"),
            "worker": (topology.EVENTS, "generation.completed"),
            "notifier": (topology.EVENTS, "generation.completed"),
        }[service]
        assert not await _publish(connection, *forged), f"{service} may publish {forged}"
        if topology.COMMANDS not in topology.PUBLISHES[service]:
            assert not await _publish(connection, topology.COMMANDS, "render.requested")

        own = {q.name for q in topology.consumes(service)}
        # A consumer copies a poison message into its own DLQ, with the reason.
        for queue in topology.consumes(service):
            assert await _publish(connection, topology.DEAD_LETTERS, queue.name), service
        for queue in topology.WORK_QUEUES:
            allowed = await _consume(connection, queue.name)
            assert allowed is (queue.name in own), (service, queue.name)
            assert not await _consume(connection, queue.dlq), (service, queue.dlq)

        # No eavesdropping: a wildcard binding onto the event stream is refused.
        assert not await _bind(connection, topology.WORKER_RENDER.name, topology.EVENTS, "#")


async def test_api_declares_its_live_queue(loaded: PrivateRabbit) -> None:
    async with connect(loaded, "api") as connection:
        channel = await connection.channel()
        queue = await topology.declare_live_queue(channel, topology.LiveQueue("test"))
        assert queue.name == "api.live.test"
    async with connect(loaded, "worker") as connection:
        with pytest.raises(aio_pika.exceptions.ChannelClosed):
            channel = await connection.channel()
            await topology.declare_live_queue(channel, topology.LiveQueue("worker"))
