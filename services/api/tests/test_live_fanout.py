"""Fan-out inside one API process, without a broker or a database: one live event reaches every
open stream of its generation, is rendered once for all of them, ends them (a terminal event),
and leaves no subscription behind; a client that leaves ends its stream too. Streams waiting for
updates get them from the fan-out itself (no task woken), in order, and a client that reads
slowly holds up neither the others nor its own frames' order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from api.live import LiveFeed
from api.routes.events import EventStream
from api.streams import GenerationStream, SharedFrames, StreamDeps
from shared.domain.generation_rows import GenerationRow
from shared.messages import GenerationSnapshot, LifecycleEvent
from shared.schemas import GenerationParams
from shared.state_machine import Event, Status
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.types import Message

PARAMS = {"aspect_ratio": "16:9", "resolution": "720p", "duration_seconds": 4}


class NoRecord:
    """The raw pool (`Queries`), for a generation whose outbox record is not at hand: only
    `fetch` is used."""

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return []

    async def fetchrow(self, query: str, *args: Any) -> Any:
        raise AssertionError("fetchrow is not used here")

    async def fetchval(self, query: str, *args: Any) -> Any:
        raise AssertionError("fetchval is not used here")

    async def execute(self, query: str, *args: Any) -> str:
        raise AssertionError("execute is not used here")


class Links:
    """The media store (`Storage`): only links are asked for."""

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        raise AssertionError("put_file is not used here")

    async def url_for(self, key: str) -> str:
        return f"http://media/{key}"


def _deps(frames: SharedFrames) -> StreamDeps:
    """No database: sessions bound to no engine, so a query would fail."""
    return StreamDeps(async_sessionmaker(), Links(), 30.0, NoRecord(), frames)


def _row(gid: uuid.UUID, uid: uuid.UUID, now: datetime) -> GenerationRow:
    return GenerationRow(
        gid, uid, None, "pending_confirmation", 3, "a fox", False, PARAMS, None, [], {}, None,
        None, None, None, now, now,
    )  # fmt: skip


@pytest.mark.parametrize("immediate", [True, False], ids=["from the fan-out", "by each task"])
async def test_one_event_is_rendered_once_for_every_stream_and_ends_them(immediate: bool) -> None:
    feed, frames = LiveFeed("amqp://unused"), SharedFrames()
    deps = _deps(frames)
    gid, uid, now = uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    bodies: list[list[bytes]] = [[] for _ in range(50)]
    left = asyncio.Event()

    async def serve(i: int) -> None:
        subscriber = feed.generation(gid)
        stream = GenerationStream(deps, subscriber, _row(gid, uid, now), None)

        async def send(message: Message) -> None:
            bodies[i].append(message.get("body", b""))

        async def receive() -> Message:
            await left.wait()
            return {"type": "http.disconnect"}

        response = EventStream(
            subscriber, stream.events(), lambda: stream.done, stream if immediate else None
        )
        await response({"type": "http"}, receive, send)

    tasks = [asyncio.create_task(serve(i)) for i in range(50)]
    while sum(len(b) for b in bodies) < 3 * 50:  # start, retry, the opening frame
        await asyncio.sleep(0.01)
    assert frames.rendered == 1  # one opening frame for the fifty
    snapshot = GenerationSnapshot(
        status=Status.CANCELLED,
        prompt="a fox",
        params=GenerationParams.model_validate(PARAMS),
        version=4,
        created_at=now,
        updated_at=now,
    )
    await feed.fan_out(
        LifecycleEvent(event=Event.CANCELLED, generation_id=gid, user_id=uid, snapshot=snapshot)
    )
    if immediate:  # written by the fan-out's own pass, before any stream's task ran again
        assert all(b[-1].startswith(b"id: 4\nevent: generation.cancelled\n") for b in bodies)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert frames.rendered == 2  # and one frame of the event for all
    assert {b[-1] for b in bodies} == {bodies[0][-1]}
    assert bodies[0][-1].startswith(b"id: 4\nevent: generation.cancelled\n")
    assert feed.subscribers == 0

    # A stream whose client leaves ends, and unsubscribes.
    other = asyncio.create_task(serve(0))
    while feed.subscribers == 0:
        await asyncio.sleep(0.01)
    left.set()
    await asyncio.wait_for(other, 5)
    assert feed.subscribers == 0


def _event(gid: uuid.UUID, uid: uuid.UUID, now: datetime, version: int) -> LifecycleEvent:
    status, event = (
        (Status.CONFIRMED, Event.CONFIRMED) if version == 4 else (Status.CANCELLED, Event.CANCELLED)
    )
    snapshot = GenerationSnapshot(
        status=status,
        prompt="a fox",
        params=GenerationParams.model_validate(PARAMS),
        version=version,
        created_at=now,
        updated_at=now,
    )
    return LifecycleEvent(event=event, generation_id=gid, user_id=uid, snapshot=snapshot)


async def test_a_slow_client_keeps_its_order_and_holds_up_no_other_stream() -> None:
    feed, frames = LiveFeed("amqp://unused"), SharedFrames()
    deps = _deps(frames)
    gid, uid, now = uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    bodies: list[list[bytes]] = [[] for _ in range(5)]
    ends: list[list[bool]] = [[] for _ in range(5)]
    drained = asyncio.Event()  # the slow client's socket takes more bytes

    async def serve(i: int) -> None:
        subscriber = feed.generation(gid)
        stream = GenerationStream(deps, subscriber, _row(gid, uid, now), None)

        async def send(message: Message) -> None:
            if i == 0 and message.get("body", b"").startswith(b"id: 4\n"):
                await drained.wait()  # the server's buffer is full: this write waits
            bodies[i].append(message.get("body", b""))
            if message["type"] == "http.response.body":
                ends[i].append(not message["more_body"])

        async def receive() -> Message:
            await asyncio.Event().wait()  # the client stays
            return {"type": "http.disconnect"}

        response = EventStream(subscriber, stream.events(), lambda: stream.done, stream)
        await response({"type": "http"}, receive, send)

    tasks = [asyncio.create_task(serve(i)) for i in range(5)]
    while sum(len(b) for b in bodies) < 3 * 5:  # start, retry, the opening frame
        await asyncio.sleep(0.01)
    await feed.fan_out(_event(gid, uid, now, 4))  # not terminal
    await feed.fan_out(_event(gid, uid, now, 5))  # terminal
    await asyncio.wait_for(asyncio.gather(*tasks[1:]), 5)  # the others are done
    for body in bodies[1:]:
        assert [b[:6] for b in body[-2:]] == [b"id: 4\n", b"id: 5\n"]
    assert not tasks[0].done()  # still writing its frame 4, frame 5 queued behind it
    drained.set()
    await asyncio.wait_for(tasks[0], 5)
    assert bodies[0] == bodies[1]  # the same frames, in the same order
    assert ends[0] == [False, False, False, True]  # retry, opening, 4; 5 ends the body
    assert frames.rendered == 3  # the opening, frame 4 and frame 5, once each for all
    assert feed.subscribers == 0
