"""Idempotent message handling: parse, apply once (inbox), commit, then ack.

A handler gets an open transaction and the parsed message. Its effects, the inbox entry and any
outgoing messages (outbox) commit together; FastStream acks only after this returns. A message
that cannot be parsed, or a `PermanentError`, is rejected to the queue's DLQ at once; any other
error is nacked and redelivered until the queue's delivery limit dead-letters it.

(No `from __future__ import annotations` here: FastStream resolves the handler's
annotations at runtime to inject the raw message.)
"""

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.inbox import claim
from shared.logging import get_logger, log_context
from shared.messages import Message, UnknownMessage, parse_message
from shared.outbox import OutboxRelay

log = get_logger("CONSUMER")

M = TypeVar("M", bound=Message)


class PermanentError(Exception):
    """Retrying cannot help: dead-letter the message now."""


class IdempotentConsumer(Generic[M]):
    def __init__(
        self,
        name: str,
        message_type: type[M],
        handler: Callable[[AsyncSession, M], Awaitable[None]],
        sessions: async_sessionmaker[AsyncSession],
        relay: OutboxRelay,
    ) -> None:
        self.name = name
        self.message_type = message_type
        self.handler = handler
        self.sessions = sessions
        self.relay = relay
        self.handled = 0
        self.duplicates = 0

    async def __call__(self, message: RabbitMessage) -> None:
        raw = message.raw_message
        with log_context(
            consumer=self.name, message_id=raw.message_id, generation_id=raw.correlation_id
        ):
            parsed = await self._parse(message)
            if parsed is None:
                return
            try:
                async with self.sessions() as session, session.begin():
                    if not await claim(session, self.name, str(raw.message_id)):
                        self.duplicates += 1
                        log.info("Duplicate ignored", type=raw.type)
                        return
                    await self.handler(session, parsed)
            except PermanentError as exc:
                log.error("Message dead-lettered", type=raw.type, reason=str(exc))
                await message.reject()
                return
            self.handled += 1
            self.relay.wake()

    async def _parse(self, message: RabbitMessage) -> M | None:
        return await read_or_reject(message, self.message_type, self.name)


async def read_or_reject(message: RabbitMessage, message_type: type[M], consumer: str) -> M | None:
    """The parsed message, or None after rejecting it to the DLQ (no id, unknown type/version,
    invalid body). For consumers that run their own flow instead of `IdempotentConsumer`."""
    raw = message.raw_message
    try:
        if not raw.message_id:
            raise UnknownMessage("message has no message_id")
        parsed = parse_message(raw.type, raw.body)
        if not isinstance(parsed, message_type):
            raise UnknownMessage(f"{consumer} does not handle {raw.type!r}")
    except (UnknownMessage, ValidationError, ValueError) as exc:
        log.error("Unreadable message dead-lettered", type=raw.type, reason=str(exc)[:500])
        await message.reject()
        return None
    return parsed
