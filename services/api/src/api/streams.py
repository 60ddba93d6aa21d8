"""Server-Sent Events: a generation's lifecycle, and a conversation's messages and generations.

Both streams are fed by the instance's live feed (`api.live`), never by polling. The database is
read only to catch up: when the stream opens, when a client resumes (`Last-Event-ID`), when an
event arrives out of order or after a gap, and when the feed says updates may have been lost.

Generation stream: `id:` is the generation's version (one per transition, so monotonic and
gap-free), `event:` the lifecycle event name (`generation.requested` for a generation nobody has
looked at yet), `data:` the generation as `GET /v1/generations/{id}` returns it (as of that
event). A client that resumes gets every event it missed, replayed from the outbox, in order.
The stream ends after a terminal event (or when the instance shuts down: the client resumes).

Conversation stream: `event: message` (`data:` the message as listed, `id:` its creation time
in microseconds, a resumption cursor) and the lifecycle events of the conversation's
generations (no `id:`: the generation's own stream is the exact record). It does not end.
A client that resumes gets the messages since its cursor, with a margin (assistant messages are
stamped with the time of the event they answer, which may be a moment earlier than they were
written): clients keep messages by `id` and ignore one they already have.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.api_keys import Queries
from shared.db.models import ChatMessage, Generation
from shared.domain.generation_rows import GenerationRow
from shared.media import Storage
from shared.messages import ConversationMessageCreated, LifecycleEvent
from shared.state_machine import Status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from api.chat_views import messages_out
from api.conversations import live_generations, messages_of
from api.live import Subscriber, Update
from api.timeline import REQUESTED, as_generation, event_at, recorded, status_event
from api.views import generation_out

RETRY_MS = 2000
HEARTBEAT = b": heartbeat\n\n"
HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
RESUME_MARGIN = timedelta(seconds=30)
MEDIA_TYPE = "text/event-stream"
OPENING_SECONDS = 5.0


def frame(event: str, data: str, event_id: str | None = None) -> bytes:
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


def retry() -> bytes:
    return f"retry: {RETRY_MS}\n\n".encode()


def last_event_id(header: str | None, query: str | None) -> int | None:
    """The client's resumption point: the `Last-Event-ID` header (EventSource sends it when it
    reconnects) or `?last_event_id=`; anything but a whole number is no point at all."""
    raw = (header or query or "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


class SharedFrames:
    """A live event rendered once for all the streams it reaches. Thousands of streams may
    watch one generation, and every stream would otherwise build the same view and serialise
    the same JSON: the broker delivers one event object to every subscriber, so its frame is
    kept by that object's identity (the object is held with it, so the identity is not reused)
    for as long as the last few events."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._frames: dict[tuple[int, bool, bool], tuple[LifecycleEvent, bytes]] = {}
        self._openings: dict[tuple[uuid.UUID, int, datetime], tuple[float, bytes]] = {}
        self.rendered = 0

    async def opening(self, gen: GenerationRow, pg: Queries, storage: Storage) -> bytes:
        """A generation stream's first frame: the current state, named by the event that led
        to it. Streams opened on the same state (same version, same `updated_at`) within
        `OPENING_SECONDS` share it (the signed links inside stay valid far longer)."""
        key = (gen.id, gen.version, gen.updated_at)
        now = time.monotonic()
        hit = self._openings.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        name = await event_at(pg, gen)
        body = await generation_out(gen, storage)
        data = frame(name, body.model_dump_json(), str(gen.version))
        self.rendered += 1
        if len(self._openings) >= self.size:
            del self._openings[next(iter(self._openings))]  # the oldest
        self._openings[key] = (now + OPENING_SECONDS, data)
        return data

    async def lifecycle(
        self, event: LifecycleEvent, auto_confirm: bool, storage: Storage, *, with_id: bool
    ) -> bytes:
        hit = self.cached(event, auto_confirm, with_id=with_id)
        if hit is not None:
            return hit
        gen = as_generation(event, auto_confirm)
        body = await generation_out(gen, storage)
        data = frame(
            event.event.value, body.model_dump_json(), str(gen.version) if with_id else None
        )
        self.rendered += 1
        if len(self._frames) >= self.size:
            del self._frames[next(iter(self._frames))]  # the oldest
        self._frames[(id(event), auto_confirm, with_id)] = (event, data)
        return data

    def cached(self, event: LifecycleEvent, auto_confirm: bool, *, with_id: bool) -> bytes | None:
        """The event's frame if it was rendered already."""
        hit = self._frames.get((id(event), auto_confirm, with_id))
        return hit[1] if hit is not None and hit[0] is event else None


@dataclass
class StreamDeps:
    sessions: async_sessionmaker[AsyncSession]
    storage: Storage
    heartbeat_seconds: float
    pg: Queries
    frames: SharedFrames


async def _read(db: AsyncSession, generation_id: uuid.UUID) -> Generation | None:
    return await db.scalar(
        select(Generation)
        .where(col(Generation.id) == generation_id)
        .execution_options(populate_existing=True)
    )


@dataclass
class GenerationStream:
    deps: StreamDeps
    subscriber: Subscriber
    generation: GenerationRow  # as read when the stream opened (after subscribing)
    resume_after: int | None
    sent: int = 0
    done: bool = False

    async def events(self) -> AsyncIterator[bytes]:
        yield retry()
        if self.resume_after is None:
            yield await self._opening()
        else:
            self.sent = self.resume_after
            async for chunk in self._catch_up():
                yield chunk
        while not self.done:
            batch = await self.subscriber.wait(self.deps.heartbeat_seconds)
            if self.subscriber.ended:
                return
            if batch is None:
                yield HEARTBEAT
                continue
            if self.subscriber.take_lagged():
                async for chunk in self._catch_up():
                    yield chunk
            for update in batch:
                if self.done or not isinstance(update, LifecycleEvent):
                    continue
                version = update.snapshot.version
                if version is not None and version <= self.sent:
                    continue  # a duplicate, or already replayed
                if version == self.sent + 1:
                    yield await self._event(update)
                else:  # a gap (or an event without a version): replay from the record
                    async for chunk in self._catch_up():
                        yield chunk

    async def prepare(self, update: Update) -> None:
        """Render `update`'s frame before the fan-out (`frame_now` only takes it ready)."""
        if isinstance(update, LifecycleEvent):
            await self.deps.frames.lifecycle(
                update, self.generation.auto_confirm, self.deps.storage, with_id=True
            )

    def frame_now(self, update: Update) -> bytes | None:
        """From the fan-out, while the stream's task waits for updates: `update`'s frame if it
        is the next event and rendered already, the stream moved past it. None leaves the
        update to the task (a duplicate, a gap to catch up on, a frame to render)."""
        if (
            self.done
            or not isinstance(update, LifecycleEvent)
            or update.snapshot.version != self.sent + 1
        ):
            return None
        data = self.deps.frames.cached(update, self.generation.auto_confirm, with_id=True)
        if data is not None:
            self.sent += 1
            self.done = update.snapshot.status.is_terminal
        return data

    async def _opening(self) -> bytes:
        """The current state, named by the event that led to it."""
        gen = self.generation
        data = await self.deps.frames.opening(gen, self.deps.pg, self.deps.storage)
        self.sent = gen.version
        self.done = Status(gen.status).is_terminal
        return data

    async def _catch_up(self) -> AsyncIterator[bytes]:
        """Everything after `sent`, from the outbox record; the current state if the record
        has nothing newer (or is not at hand)."""
        async with self.deps.sessions() as db:
            gen = await _read(db, self.generation.id)
            records = await recorded(db, self.generation.id)
        if gen is None:
            return
        for record in records:
            if self.done or record.version is None or record.version <= self.sent:
                continue
            if record.lifecycle is not None:
                yield await self._event(record.lifecycle)
            elif record.event == REQUESTED and gen.version == record.version:
                yield await self._state(REQUESTED, gen)
        if not self.done and gen.version > self.sent:
            yield await self._state(status_event(gen), gen)

    async def _event(self, event: LifecycleEvent) -> bytes:
        data = await self.deps.frames.lifecycle(
            event, self.generation.auto_confirm, self.deps.storage, with_id=True
        )
        self.sent = event.snapshot.version or 0
        self.done = event.snapshot.status.is_terminal
        return data

    async def _state(self, name: str, gen: Generation | GenerationRow) -> bytes:
        self.sent = gen.version
        self.done = Status(gen.status).is_terminal
        body = await generation_out(gen, self.deps.storage)
        return frame(name, body.model_dump_json(), str(gen.version))


@dataclass
class ConversationStream:
    deps: StreamDeps
    subscriber: Subscriber
    conversation_id: uuid.UUID
    resume_after: int | None
    cursor: int = 0
    versions: dict[uuid.UUID, int] = field(default_factory=dict)  # last version sent, per gen
    auto_confirm: dict[uuid.UUID, bool] = field(default_factory=dict)
    recent: deque[uuid.UUID] = field(default_factory=lambda: deque(maxlen=500))

    async def events(self) -> AsyncIterator[bytes]:
        yield retry()
        self.cursor = self.resume_after or micros(datetime.now(UTC))
        async for chunk in self._catch_up(messages=self.resume_after is not None):
            yield chunk
        while not self.subscriber.ended:
            batch = await self.subscriber.wait(self.deps.heartbeat_seconds)
            if self.subscriber.ended:
                return
            if batch is None:
                yield HEARTBEAT
                continue
            if self.subscriber.take_lagged():
                async for chunk in self._catch_up(messages=True):
                    yield chunk
            for update in batch:
                if isinstance(update, ConversationMessageCreated):
                    async for chunk in self._message(update.message_id):
                        yield chunk
                elif isinstance(update, LifecycleEvent):
                    async for chunk in self._generation(update):
                        yield chunk

    async def _catch_up(self, *, messages: bool) -> AsyncIterator[bytes]:
        """Messages since the cursor (less the margin), then the unfinished generations."""
        async with self.deps.sessions() as db:
            rows: list[ChatMessage] = []
            if messages:
                since = from_micros(self.cursor) - RESUME_MARGIN
                rows = await messages_of(db, self.conversation_id, since=since)
            views = await messages_out(db, self.deps.storage, rows)
            live = await live_generations(db, self.conversation_id)
        for view in views:
            if view.id not in self.recent:
                yield self._message_frame(view.id, view.created_at, view.model_dump_json())
        for gen in live:
            self.auto_confirm[gen.id] = gen.auto_confirm
            if gen.version > self.versions.get(gen.id, 0):
                self.versions[gen.id] = gen.version
                body = await generation_out(gen, self.deps.storage)
                yield frame(status_event(gen), body.model_dump_json())

    async def _message(self, message_id: uuid.UUID) -> AsyncIterator[bytes]:
        if message_id in self.recent:
            return
        async with self.deps.sessions() as db:
            row = await db.get(ChatMessage, message_id)
            views = await messages_out(db, self.deps.storage, [row] if row else [])
        for view in views:
            yield self._message_frame(view.id, view.created_at, view.model_dump_json())

    def _message_frame(self, message_id: uuid.UUID, created_at: datetime, data: str) -> bytes:
        self.recent.append(message_id)
        self.cursor = max(self.cursor, micros(created_at))
        return frame("message", data, str(self.cursor))

    async def _generation(self, event: LifecycleEvent) -> AsyncIterator[bytes]:
        version = event.snapshot.version or 0
        if version and version <= self.versions.get(event.generation_id, 0):
            return
        self.versions[event.generation_id] = max(version, self.versions.get(event.generation_id, 0))
        auto_confirm = self.auto_confirm.get(event.generation_id)
        if auto_confirm is None:
            async with self.deps.sessions() as db:
                gen = await db.get(Generation, event.generation_id)
            auto_confirm = self.auto_confirm[event.generation_id] = bool(gen and gen.auto_confirm)
        yield await self.deps.frames.lifecycle(
            event, auto_confirm, self.deps.storage, with_id=False
        )
