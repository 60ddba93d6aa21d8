"""The RabbitMQ topology, declared by every service at start and exported for the management UI.

Work queues are durable quorum queues named `<service>.<purpose>`; each dead-letters to
`<queue>.dlq` after `x-delivery-limit` redeliveries, at-least-once (which needs
`x-overflow=reject-publish`). RabbitMQ 3.10 has no delayed-retry arguments: delays, when
needed, are TTL queues that dead-letter back to a work queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, ExchangeType

from shared.state_machine import Event

EVENTS = "reelflow.events"  # topic: facts (generation.*, render.* reports)
COMMANDS = "reelflow.commands"  # direct: requests for work (render.requested)
DEAD_LETTERS = "reelflow.dlx"  # direct: routing key = the queue that gave up

LIFECYCLE_KEYS = tuple(e.value for e in Event)


@dataclass(frozen=True)
class WorkQueue:
    name: str
    exchange: str
    bindings: tuple[str, ...]
    delivery_limit: int = 5
    extra_arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": DEAD_LETTERS,
            "x-dead-letter-routing-key": self.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": self.delivery_limit,
            **self.extra_arguments,
        }


ORCHESTRATOR_REQUESTS = WorkQueue("orchestrator.requests", EVENTS, ("generation.requested",))
ORCHESTRATOR_CONFIRMATIONS = WorkQueue(
    "orchestrator.confirmations", EVENTS, (Event.CONFIRMED.value,)
)
ORCHESTRATOR_REPORTS = WorkQueue("orchestrator.reports", EVENTS, ("render.*",))
WORKER_RENDER = WorkQueue("worker.render", COMMANDS, ("render.requested",))
NOTIFIER_EVENTS = WorkQueue("notifier.events", EVENTS, LIFECYCLE_KEYS)
WEBHOOK_DELIVERY_KEY = "webhook.delivery_requested"
NOTIFIER_DELIVERIES = WorkQueue("notifier.deliveries", COMMANDS, (WEBHOOK_DELIVERY_KEY,))

WORK_QUEUES: tuple[WorkQueue, ...] = (
    ORCHESTRATOR_REQUESTS,
    ORCHESTRATOR_CONFIRMATIONS,
    ORCHESTRATOR_REPORTS,
    WORKER_RENDER,
    NOTIFIER_EVENTS,
    NOTIFIER_DELIVERIES,
)


@dataclass(frozen=True)
class DelayQueue:
    """A queue nobody consumes: a message waits `seconds`, then dead-letters to a work queue.

    The TTL is the queue's, not the message's: every message in it has the same delay, so the
    one at the head always expires first (per-message TTLs expire only at the head). Published to
    on `exchange` with the queue's own name as routing key."""

    name: str
    seconds: int
    exchange: str
    target_key: str

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": self.seconds * 1000,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": self.target_key,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


# Webhook retries wait on a ladder of fixed delays (×4 per rung): a wait of any length is a few
# hops down the ladder, with the due time kept in the database, so jitter, Retry-After and a
# changed WEBHOOK_RETRY_SCHEDULE need no new queues.
DELIVERY_WAIT_SECONDS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
DELAY_QUEUES: tuple[DelayQueue, ...] = tuple(
    DelayQueue(f"notifier.deliveries.wait.{s}s", s, COMMANDS, WEBHOOK_DELIVERY_KEY)
    for s in DELIVERY_WAIT_SECONDS
)
EXCHANGES: tuple[tuple[str, ExchangeType], ...] = (
    (EVENTS, ExchangeType.TOPIC),
    (COMMANDS, ExchangeType.DIRECT),
    (DEAD_LETTERS, ExchangeType.DIRECT),
)


def work_queue(name: str) -> WorkQueue:
    for q in WORK_QUEUES:
        if q.name == name:
            return q
    raise KeyError(name)


async def declare(
    channel: AbstractChannel,
    queues: tuple[WorkQueue, ...] = WORK_QUEUES,
    delays: tuple[DelayQueue, ...] = DELAY_QUEUES,
) -> None:
    """Idempotently declare exchanges, the given work and delay queues, DLQs and bindings."""
    exchanges = {
        name: await channel.declare_exchange(name, kind, durable=True) for name, kind in EXCHANGES
    }
    for q in queues:
        dlq = await channel.declare_queue(q.dlq, durable=True, arguments={"x-queue-type": "quorum"})
        await dlq.bind(exchanges[DEAD_LETTERS], routing_key=q.name)
        queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments())
        for key in q.bindings:
            await queue.bind(exchanges[q.exchange], routing_key=key)
    for d in delays:
        delay = await channel.declare_queue(d.name, durable=True, arguments=d.arguments())
        await delay.bind(exchanges[d.exchange], routing_key=d.name)


async def declare_all(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await declare(await connection.channel())


def definitions(vhost: str = "/") -> dict[str, Any]:
    """The same topology in the management plugin's definitions.json format."""
    exchanges = [
        {
            "name": name,
            "vhost": vhost,
            "type": kind.value,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name, kind in EXCHANGES
    ]
    queues: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []
    for q in WORK_QUEUES:
        queues.append(
            {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": q.arguments(),
            }
        )
        queues.append(
            {
                "name": q.dlq,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-queue-type": "quorum"},
            }
        )
        bindings.append(
            {
                "source": DEAD_LETTERS,
                "vhost": vhost,
                "destination": q.dlq,
                "destination_type": "queue",
                "routing_key": q.name,
                "arguments": {},
            }
        )
        bindings.extend(
            {
                "source": q.exchange,
                "vhost": vhost,
                "destination": q.name,
                "destination_type": "queue",
                "routing_key": key,
                "arguments": {},
            }
            for key in q.bindings
        )
    for d in DELAY_QUEUES:
        queues.append(
            {
                "name": d.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": d.arguments(),
            }
        )
        bindings.append(
            {
                "source": d.exchange,
                "vhost": vhost,
                "destination": d.name,
                "destination_type": "queue",
                "routing_key": d.name,
                "arguments": {},
            }
        )
    return {
        "rabbit_version": "3.10.8",
        "vhosts": [{"name": vhost}],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


if __name__ == "__main__":  # `make definitions`
    import json

    print(json.dumps(definitions(), indent=2))
