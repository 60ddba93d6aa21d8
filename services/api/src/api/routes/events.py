"""Live streams (Server-Sent Events) and the stream tokens that let a browser open them.

See `api.streams` for what the streams carry and `api.streamauth` for how they are authorised.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Header, Query, Request
from shared.logging import get_logger
from shared.state_machine import Status
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api import eager
from api.chat_schemas import StreamToken
from api.conversations import owned_conversation
from api.deps import AppStorage, CurrentUser
from api.live import Subscriber, Update
from api.problems import responses
from api.queries import owned_generation_row
from api.realtime import Realtime
from api.streamauth import StreamUser
from api.streams import (
    HEADERS,
    MEDIA_TYPE,
    ConversationStream,
    GenerationStream,
    StreamDeps,
    last_event_id,
)

router = APIRouter(tags=["live"])
log = get_logger("LIVE")
T = TypeVar("T")

_SSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "A stream of Server-Sent Events", "content": {MEDIA_TYPE: {}}},
    **responses(401, 404),
}
LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", description="Resume after this event (EventSource sends it)"),
]
LastEventQuery = Annotated[
    str | None,
    Query(max_length=20, description="Resume after this event, for a first connection"),
]


def _realtime(request: Request) -> Realtime:
    return request.app.state.realtime


def _deps(request: Request, storage: Any) -> StreamDeps:
    realtime = _realtime(request)
    state = request.app.state
    return StreamDeps(
        state.runtime.sessions, storage, realtime.heartbeat_seconds, state.pg, realtime.frames
    )


class Immediate(Protocol):
    """A stream whose frames may be sent from the live feed's fan-out (`GenerationStream`)."""

    async def prepare(self, update: Update) -> None: ...

    def frame_now(self, update: Update) -> bytes | None: ...


class EventStream(StreamingResponse):
    """An SSE response that ends its subscription however the response ends (finished, the
    client gone, or cancelled before the first byte).

    Its own ASGI loop rather than StreamingResponse's (which runs each stream in an anyio task
    group of two tasks): the stream's task writes the frames, and the client's leaving is
    noticed by a bare task on `receive` that ends the subscriber, which wakes the stream.

    With an `immediate` stream, it is also its subscriber's `Direct`: while the task waits for
    updates, the fan-out sends the next event's frame itself (`deliver`), so one event reaches
    thousands of streams in one pass; the tasks wake afterwards only to end the streams it
    finished (the access line, the span, the metrics come after every stream got its frame)."""

    def __init__(
        self,
        subscriber: Subscriber,
        events: AsyncIterator[bytes],
        finished: Callable[[], bool] = lambda: False,
        immediate: Immediate | None = None,
    ) -> None:
        super().__init__(events, media_type=MEDIA_TYPE, headers=HEADERS)
        self.subscriber = subscriber
        self.events = events
        self.finished = finished  # true once the stream's last frame is out of `events`
        self.immediate = immediate
        self._send: Send | None = None
        self._sending: asyncio.Future[None] | None = None  # a direct send still under way
        self._failed: BaseException | None = None  # what a direct send raised
        self._complete = False  # the body's last chunk is sent (or being sent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber = self.subscriber
        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(lambda task: _gone(task, subscriber))
        events = self.events
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            self._send = send
            if self.immediate is not None:
                subscriber.direct = self
            last = b""
            async for chunk in events:
                if self.finished():  # the final frame: it ends the body (one write, not two)
                    last = chunk
                    break
                await self._body(chunk, more=True)
            if not self._complete:
                await self._body(last, more=False)
                # Ending the response costs more than sending the frame (the access line, the
                # span, the metrics): when one event ends thousands of streams at once, let
                # every stream send it first, then wind down.
                await asyncio.sleep(0)
            await self._body_sent()
        finally:
            subscriber.close()
            watcher.cancel()
            if self._sending is not None:
                self._sending.cancel()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _body(self, chunk: bytes, *, more: bool) -> None:
        await self._body_sent()  # a direct send first: the frames keep their order
        assert self._send is not None
        self._complete = not more
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def _body_sent(self) -> None:
        if self._sending is not None:
            await self._sending
        if self._failed is not None:
            raise self._failed  # in the stream's task, handled as its own send's failure

    async def prepare(self, update: Update) -> None:
        assert self.immediate is not None
        await self.immediate.prepare(update)

    def deliver(self, update: Update) -> bool:
        if self._sending is not None or self._failed is not None or self.immediate is None:
            return False
        chunk = self.immediate.frame_now(update)
        if chunk is None:
            return False
        more = not self.finished()
        self._complete = not more
        assert self._send is not None
        try:
            self._sending = eager.start(
                self._send({"type": "http.response.body", "body": chunk, "more_body": more})
            )
        except Exception as exc:  # e.g. the client is gone: the task ends the stream
            self._failed = exc
            more = False
        if self._sending is not None:  # the client reads slowly: the write waits in a task
            self._sending.add_done_callback(self._sent)
        if not more:
            self.subscriber.end()  # the task ends the response: the last frame is out
        return True

    def _sent(self, sending: asyncio.Future[None]) -> None:
        self._sending = None
        if not sending.cancelled() and sending.exception() is not None:
            self._failed = sending.exception()
            self.subscriber.end()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _gone(task: asyncio.Future[None], subscriber: Subscriber) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failing receive also means the client is gone
        subscriber.end()


@router.post(
    "/v1/stream-tokens",
    status_code=201,
    response_model=StreamToken,
    responses=responses(401),
    summary="A short-lived token to open live streams from a browser (EventSource)",
)
async def stream_token(user: CurrentUser, request: Request) -> StreamToken:
    token, expires_at = _realtime(request).tokens.issue(user.id)
    return StreamToken(token=token, expires_at=expires_at)


async def _owned(subscriber: Subscriber, check: Awaitable[T]) -> T:
    """`check`'s answer (that the caller may follow what `subscriber` follows), the subscriber
    closed if it fails (a 404, or the client gone meanwhile)."""
    try:
        return await check
    except BaseException:
        subscriber.close()
        raise


async def _own_conversation(
    request: Request, user_id: uuid.UUID, conversation_id: uuid.UUID
) -> None:
    async with request.app.state.runtime.sessions() as db:
        await owned_conversation(db, user_id, conversation_id)


@router.get(
    "/v1/generations/{generation_id}/events",
    response_class=StreamingResponse,
    responses=_SSE,
    summary="A generation's lifecycle as Server-Sent Events, until it finishes",
)
async def generation_events(
    generation_id: uuid.UUID,
    request: Request,
    user: StreamUser,
    storage: AppStorage,
    last_event: LastEventId = None,
    last_event_id_query: Annotated[LastEventQuery, Query(alias="last_event_id")] = None,
) -> Response:
    resume_after = last_event_id(last_event, last_event_id_query)
    # Subscribe before reading, so nothing published in between is missed.
    subscriber = _realtime(request).feed.generation(generation_id)
    pg = request.app.state.pg
    gen = await _owned(subscriber, owned_generation_row(pg, user.id, generation_id))
    if Status(gen.status).is_terminal and resume_after is not None and resume_after >= gen.version:
        # The client has the final event: 204 tells an EventSource not to reconnect.
        subscriber.close()
        return Response(status_code=204)
    stream = GenerationStream(_deps(request, storage), subscriber, gen, resume_after)
    log.info("Generation stream opened", generation_id=str(gen.id), resume_after=resume_after)
    return EventStream(subscriber, stream.events(), lambda: stream.done, stream)


@router.get(
    "/v1/conversations/{conversation_id}/events",
    response_class=StreamingResponse,
    responses=_SSE,
    summary="A conversation's new messages and its generations' lifecycle events",
)
async def conversation_events(
    conversation_id: uuid.UUID,
    request: Request,
    user: StreamUser,
    storage: AppStorage,
    last_event: LastEventId = None,
    last_event_id_query: Annotated[LastEventQuery, Query(alias="last_event_id")] = None,
) -> Response:
    resume_after = last_event_id(last_event, last_event_id_query)
    subscriber = _realtime(request).feed.conversation(conversation_id)
    await _owned(subscriber, _own_conversation(request, user.id, conversation_id))
    stream = ConversationStream(_deps(request, storage), subscriber, conversation_id, resume_after)
    log.info("Conversation stream opened", conversation_id=str(conversation_id))
    return EventStream(subscriber, stream.events())
