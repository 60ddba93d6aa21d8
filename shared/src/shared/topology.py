"""The RabbitMQ topology, declared by every service at start and exported for the management UI.

Work queues are durable quorum queues named `<service>.<purpose>`; each dead-letters to
`<queue>.dlq` after `x-delivery-limit` redeliveries, at-least-once (which needs
`x-overflow=reject-publish`). RabbitMQ 3.10 has no delayed-retry arguments: delays, when
needed, are TTL queues that dead-letter back to a work queue.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

from shared.state_machine import Event

EVENTS = "reelflow.events"  # topic: facts (generation.*, render.* reports)
COMMANDS = "reelflow.commands"  # direct: requests for work (render.requested)
DEAD_LETTERS = "reelflow.dlx"  # direct: routing key = the queue that gave up
LIVE = "reelflow.live"  # topic: live updates for open views (conversation.*); may go unheard

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
    (LIVE, ExchangeType.TOPIC),
)


@dataclass(frozen=True)
class LiveQueue:
    """One API instance's own queue of live updates (`api.live.<instance id>`): exclusive and
    auto-delete, so it lives exactly as long as the instance's connection, and capped, so a
    stalled instance cannot pile messages up in the broker (its views resync from the
    database). Lifecycle events come from `reelflow.events`, message notices from `LIVE`."""

    instance_id: str
    max_length: int = 10_000

    @property
    def name(self) -> str:
        return f"api.live.{self.instance_id}"

    def arguments(self) -> dict[str, Any]:
        return {"x-max-length": self.max_length, "x-overflow": "drop-head"}

    @property
    def bindings(self) -> tuple[tuple[str, str], ...]:
        return (*((EVENTS, key) for key in LIFECYCLE_KEYS), (LIVE, "conversation.#"))


async def declare_live_queue(channel: AbstractChannel, live: LiveQueue) -> AbstractQueue:
    queue = await channel.declare_queue(
        live.name, durable=False, exclusive=True, auto_delete=True, arguments=live.arguments()
    )
    for exchange, key in live.bindings:
        await queue.bind(exchange, routing_key=key)
    return queue


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


def definitions(vhost: str = "/", passwords: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The same topology in the management plugin's definitions.json format, with one user per
    service (`users`); `passwords` (service → password) hashes theirs in."""
    exchanges: list[dict[str, Any]] = [
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
        **users(vhost, passwords),
        "vhosts": [{"name": vhost}],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


# One RabbitMQ user per service. Each may consume only its own queues and publish only to the
# exchanges it uses, and on the topic exchange only its own routing keys (topic permissions), so a
# compromised worker cannot forge `generation.completed`. Every process still redeclares the whole
# topology at start (the outbox relay's `declare`), which needs `configure` on every topology name,
# `write` on every queue (queue.bind) and `read` on every exchange (the binding's source); that
# grants no consuming and no publishing. The API's own per-instance queues live under `api.`.
CONVERSATION_NOTICE_KEY = "conversation.message_created"
PUBLISHES: dict[str, dict[str, tuple[str, ...]]] = {
    "api": {
        EVENTS: ("generation.requested", *LIFECYCLE_KEYS),
        LIVE: (CONVERSATION_NOTICE_KEY,),
    },
    "orchestrator": {EVENTS: LIFECYCLE_KEYS, COMMANDS: ("render.requested",)},
    "worker": {EVENTS: ORCHESTRATOR_REPORTS.bindings},
    "notifier": {
        COMMANDS: (WEBHOOK_DELIVERY_KEY, *(d.name for d in DELAY_QUEUES)),
        LIVE: (CONVERSATION_NOTICE_KEY,),
    },
}
# What each service binds besides the work queues (the API's per-instance live queues).
PRIVATE_BINDINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "api": LiveQueue("instance").bindings,
}
SERVICES = tuple(PUBLISHES)
PRIVATE_PREFIX = {"api": "api."}  # exclusive, auto-delete queues a service names itself
PASSWORD_ENV_PREFIX = "RABBITMQ_PASSWORD_"


def user_name(service: str) -> str:
    return f"reelflow-{service}"


def password_env(service: str) -> str:
    """`RABBITMQ_PASSWORD_REELFLOW_API` and so on: read by `python -m shared.topology`."""
    return PASSWORD_ENV_PREFIX + user_name(service).upper().replace("-", "_")


def consumes(service: str) -> tuple[WorkQueue, ...]:
    """A service consumes the work queues named after it (`<service>.<purpose>`)."""
    return tuple(q for q in WORK_QUEUES if q.name.split(".")[0] == service)


def _exact(names: list[str] | tuple[str, ...]) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$" if names else "^$"


def _topic_regex(patterns: tuple[str, ...]) -> str:
    """Topic binding patterns as one regex over routing keys (`*` one word, `#` any words)."""
    parts = [
        re.escape(p).replace(r"\*", "[^.]+").replace(r"\#", ".*") for p in sorted(set(patterns))
    ]
    return "^(" + "|".join(parts) + ")$" if parts else "^$"


def _queue_names() -> list[str]:
    names: list[str] = []
    for q in WORK_QUEUES:
        names += [q.name, q.dlq]
    return names + [d.name for d in DELAY_QUEUES]


def permissions(service: str) -> dict[str, str]:
    """configure/write/read regexes for `service`'s user (see the note on `PUBLISHES`)."""
    exchanges = [name for name, _ in EXCHANGES]
    queues = _queue_names()
    own = [q.name for q in consumes(service)]
    private = PRIVATE_PREFIX.get(service)

    def with_private(regex: str) -> str:
        return f"{regex}|^{re.escape(private)}.*" if private else regex

    # A consumer dead-letters a poison message itself, with its reason (`shared.deadletter`):
    # it publishes to the DLX, which only feeds DLQs (read by operators, never by a service).
    dead_letters = [DEAD_LETTERS] if own else []
    return {
        "configure": with_private(_exact(exchanges + queues)),
        "write": with_private(_exact(list(PUBLISHES[service]) + dead_letters + queues)),
        "read": with_private(_exact(exchanges + own)),
    }


TOPIC_EXCHANGES = tuple(name for name, kind in EXCHANGES if kind == ExchangeType.TOPIC)


def topic_permissions(service: str, exchange: str = EVENTS) -> dict[str, str]:
    """On a topic exchange: publish only the service's own keys; bind only the keys the
    topology binds (every process declares every work queue's bindings) and its own private
    queues' keys, never a wildcard of its own."""
    bound = {key for q in WORK_QUEUES if q.exchange == exchange for key in q.bindings}
    bound |= {key for x, key in PRIVATE_BINDINGS.get(service, ()) if x == exchange}
    return {
        "write": _topic_regex(PUBLISHES[service].get(exchange, ())),
        "read": _exact(sorted(bound)),
    }


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def users(vhost: str = "/", passwords: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The services' users, permissions and topic permissions in definitions.json format.

    Without a password a user gets an empty hash: it exists but cannot log in until an operator
    sets one (`rabbitmqctl change_password`, or definitions generated with the passwords)."""
    passwords = passwords or {}
    return {
        "users": [
            {
                "name": user_name(s),
                "password_hash": password_hash(passwords[s]) if passwords.get(s) else "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
                "limits": {},
            }
            for s in SERVICES
        ],
        "permissions": [{"user": user_name(s), "vhost": vhost, **permissions(s)} for s in SERVICES],
        "topic_permissions": [
            {"user": user_name(s), "vhost": vhost, "exchange": x, **topic_permissions(s, x)}
            for s in SERVICES
            for x in TOPIC_EXCHANGES
        ],
    }


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m shared.topology", description="print definitions.json"
    )
    parser.add_argument("--vhost", default="/")
    parser.add_argument(
        "--passwords-from-env",
        action="store_true",
        help=f"hash each user's password from {password_env('api')} etc. (never commit the output)",
    )
    args = parser.parse_args(argv)
    passwords = (
        {s: os.environ.get(password_env(s), "") for s in SERVICES}
        if args.passwords_from_env
        else None
    )
    print(json.dumps(definitions(args.vhost, passwords), indent=2))


if __name__ == "__main__":  # `make definitions`
    main()
