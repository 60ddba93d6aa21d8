"""`reelflow dlq list|show|replay`: look into dead-letter queues and send messages back.

Replay republishes a dead message to its work queue (through the default exchange, so it reaches
exactly that queue), persistent and confirmed, with its original message id — consumers' inboxes
keep a replay of something already applied harmless — and only then removes it from the DLQ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, DeliveryMode
from shared.topology import WORK_QUEUES, work_queue


@dataclass(frozen=True)
class DeadMessage:
    message_id: str | None
    type: str | None
    correlation_id: str | None
    reason: str
    died_in: str
    count: int
    body: bytes

    def summary(self) -> dict[str, Any]:
        excerpt = self.body[:300].decode("utf-8", "replace")
        return {
            "message_id": self.message_id,
            "type": self.type,
            "generation_id": self.correlation_id,
            "reason": self.reason,
            "queue": self.died_in,
            "deaths": self.count,
            "body": excerpt,
        }


def _death(message: AbstractIncomingMessage) -> tuple[str, str, int]:
    """Why and where it died, from the broker's x-death header (or ours, if a consumer said)."""
    headers = message.headers or {}
    deaths: Any = headers.get("x-death") or []
    first: dict[str, Any] = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    reason = str(headers.get("x-reelflow-reason") or first.get("reason") or "unknown")
    queue = headers.get("x-reelflow-queue") or first.get("queue", "?")
    return reason, str(queue), int(first.get("count", 1) or 1)


def _read(message: AbstractIncomingMessage) -> DeadMessage:
    reason, queue, count = _death(message)
    return DeadMessage(
        message.message_id, message.type, message.correlation_id, reason, queue, count, message.body
    )


def _check(queue: str) -> str:
    name = queue.removesuffix(".dlq")
    work_queue(name)  # KeyError for a queue that is not ours
    return name


async def _dlq_depths(channel: AbstractChannel) -> dict[str, int]:
    depths = {}
    for q in WORK_QUEUES:
        declared = await channel.declare_queue(q.dlq, passive=True)
        depths[q.dlq] = int(declared.declaration_result.message_count or 0)
    return depths


async def list_dlqs(amqp_url: str) -> dict[str, int]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        return await _dlq_depths(await connection.channel())


async def show(amqp_url: str, queue: str, limit: int = 20) -> list[DeadMessage]:
    """Read up to `limit` dead messages and put them all back, in order."""
    name = _check(queue)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(f"{name}.dlq", passive=True)
        held: list[AbstractIncomingMessage] = []
        for _ in range(limit):
            message = await dlq.get(fail=False, no_ack=False)
            if message is None:
                break
            held.append(message)
        found = [_read(m) for m in held]
        # Closing the channel returns every unacked message to the queue.
        await channel.close()
        return found


async def replay(
    amqp_url: str, queue: str, *, limit: int = 1000, message_id: str | None = None
) -> int:
    """Send dead messages back to their work queue; the number replayed."""
    name = _check(queue)
    connection = await aio_pika.connect(amqp_url)
    replayed = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        dlq = await channel.declare_queue(f"{name}.dlq", passive=True)
        skipped: list[AbstractIncomingMessage] = []
        while replayed < limit:
            message = await dlq.get(fail=False, no_ack=False)
            if message is None:
                break
            if message_id is not None and message.message_id != message_id:
                skipped.append(message)
                continue
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if not k.startswith(("x-death", "x-first-death", "x-last-death", "x-reelflow-"))
            }
            headers["x-reelflow-replayed"] = True
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    content_type=message.content_type,
                    delivery_mode=DeliveryMode.PERSISTENT,
                    message_id=message.message_id,
                    type=message.type,
                    correlation_id=message.correlation_id,
                ),
                routing_key=name,
                mandatory=True,
            )
            await message.ack()  # only after the broker confirmed the copy
            replayed += 1
        for message in skipped:
            await message.nack(requeue=True)
    return replayed


def print_list(depths: dict[str, int]) -> None:
    width = max(len(n) for n in depths)
    for name, depth in depths.items():
        print(f"{name:<{width}}  {depth}")


def print_show(messages: list[DeadMessage]) -> None:
    for m in messages:
        print(json.dumps(m.summary(), default=str))
    if not messages:
        print("(empty)")
