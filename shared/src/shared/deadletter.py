"""Dead-lettering a message with the reason it could not be handled.

`reject()` lets the broker dead-letter a message, but its `x-death` header says only
"rejected". An operator reading `reelflow dlq show` needs to know why (unparseable, an unknown
type, a schema version from the future, a permanent failure), so the consumer publishes the copy
into the DLQ itself, with `x-reelflow-reason` and `x-reelflow-queue`, waits for the broker's
confirm, and only then acks the original: at least once, as the broker's own dead-lettering
(`x-dead-letter-strategy: at-least-once`). If that publish fails, it falls back to `reject()`.
"""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage
from aiormq import spec
from faststream.rabbit.annotations import RabbitMessage

from shared.logging import get_logger
from shared.topology import DEAD_LETTERS

log = get_logger("CONSUMER")

REASON_HEADER = "x-reelflow-reason"
QUEUE_HEADER = "x-reelflow-queue"


async def dead_letter(message: RabbitMessage, queue: str, reason: str) -> None:
    if not await copy_to_dlq(message.raw_message, queue, reason):
        await message.reject()
        return
    # Should this ack be lost, the message comes back and is copied again: a duplicate in the
    # DLQ, never a loss.
    await message.ack()


async def copy_to_dlq(raw: AbstractIncomingMessage, queue: str, reason: str) -> bool:
    """Publish the copy, on the channel it came on, to the DLX under the work queue's name
    (each DLQ is bound by it); True once the broker confirmed it. A copy nothing routes comes
    back (mandatory): False. The caller then acks the original, or rejects it on False."""
    headers = {**(raw.headers or {}), REASON_HEADER: reason[:1000], QUEUE_HEADER: queue}
    properties = spec.Basic.Properties(
        content_type=raw.content_type,
        delivery_mode=2,  # persistent, as the original
        headers=headers,
        message_id=raw.message_id,
        correlation_id=raw.correlation_id,
        message_type=raw.type,
        timestamp=raw.timestamp,
    )
    try:
        confirmation = await raw.channel.basic_publish(
            raw.body,
            exchange=DEAD_LETTERS,
            routing_key=queue,
            properties=properties,
            mandatory=True,
        )
    except Exception as error:  # the channel went away: the broker still dead-letters
        log.warning("Dead-letter copy failed; rejecting", queue=queue, error=repr(error))
        return False
    if not isinstance(confirmation, spec.Basic.Ack):
        log.warning("Dead-letter copy not confirmed; rejecting", queue=queue)
        return False
    return True
