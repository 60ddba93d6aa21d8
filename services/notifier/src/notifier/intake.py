"""Lifecycle events → assistant messages and webhook deliveries, a batch per transaction.

The `notifier.events` consumer takes what has arrived (up to `EVENTS_BATCH` events) and first
reads the users' active endpoints (a plain query, no transaction). An event with no assistant
message to add (`messages.compose`: none for processing and progress) and no target
(`targets.targets_for`: progress goes only to endpoints that ask for it by name) needs nothing:
it is acked with no transaction and no inbox row (counted as `needed_nothing`) — most progress
events, which would otherwise each cost a claim and a commit. A batch of such events opens no
transaction at all. The others, in one transaction: each message id is recorded in the inbox (a
message handled before is a duplicate and changes nothing), at most one assistant message per
event is added (`messages.source_event_id` is unique) with its live notice (outbox), and one
delivery row per target (unique on webhook-id and target), leased to this process. After the
commit each new delivery goes to its endpoint's lane (delivery.py) and the messages are acked:
the consumer never waits on HTTP. A batch that fails is tried event by event, so one bad event
is requeued (and dead-lettered after the queue's delivery limit) without holding up the rest.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from shared.inbox import claim_many_plain
from shared.logging import get_logger, log_context
from shared.media import Storage
from shared.messages import ConversationMessageCreated, LifecycleEvent
from shared.outbox import OutboxRelay, Outgoing
from shared.settings import Settings
from shared.telemetry import tracer
from shared.topology import NOTIFIER_EVENTS

from notifier import sql
from notifier.consume import Batcher, QueueConsumer, Received, read
from notifier.delivery import (
    DATABASE_PATIENCE_SECONDS,
    LEASE_SECONDS,
    Deliverer,
    retrying,
    signing_keys,
)
from notifier.ids import event_key, traceparent_for, webhook_id
from notifier.lanes import Job
from notifier.messages import Reply, compose
from notifier.payload import Links, serialise
from notifier.targets import NEXTJS, Target, targets_for

log = get_logger("NOTIFIER")
consumer_log = get_logger("CONSUMER")

CONSUMER = "notifier.events"
EVENTS_PREFETCH = 512
EVENTS_BATCH = 128
# Parsing and handing off a batch is CPU work: it yields to the event loop every so many events,
# so attempts under way (8 per endpoint at most) are never held up for a whole batch.
YIELD_EVERY = 32


@dataclass
class _Event:
    item: Received
    event: LifecycleEvent
    key: uuid.UUID
    webhook_id: str
    payload: str
    reply: Reply | None
    # The trace the deliveries' attempts join (the event's consumer span), and the event's
    # `traceparent` for when tracing is off (one minted from the event key if it had none).
    context: Context
    traceparent: str

    @property
    def message_id(self) -> str:
        return str(self.item.message.message_id)


@dataclass
class _Applied:
    new: list[_Event]
    replies: dict[int, uuid.UUID]  # id(event) → the assistant message added for it
    created: list[tuple[_Event, Target, uuid.UUID]]
    notices: Outgoing  # the live notices written, for the relay once committed
    nothing: set[int]  # id(event) of the events that needed nothing: acked with no transaction


class Intake:
    def __init__(
        self,
        settings: Settings,
        deliverer: Deliverer,
        relay: OutboxRelay,
        consumer_metrics: Any = None,
    ) -> None:
        self.settings = settings
        self.deliverer = deliverer
        self.relay = relay
        self.storage: Storage | None = None  # built at start: its signing key is in the database
        self.consumer = QueueConsumer(
            NOTIFIER_EVENTS,
            EVENTS_PREFETCH,
            # Two batches may be in flight: one is parsed while the other waits on the database.
            Batcher("lifecycle-events", self.handle, max_batch=EVENTS_BATCH, workers=2),
            consumer_metrics,
        )
        self.handled = 0  # events applied (inbox claim, replies, deliveries)
        self.duplicates = 0  # events whose message id the inbox had already seen
        self.needed_nothing = 0  # events with no reply and no target: acked, no transaction

    async def handle(self, batch: list[Received]) -> None:
        events: list[_Event] = []
        for i, item in enumerate(batch):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let the lanes' HTTP go on meanwhile
            event = read(item, LifecycleEvent, CONSUMER)
            if isinstance(event, str):
                await self.consumer.dead_letter(item, event)
                continue
            try:
                events.append(await self.prepare(item, event))
            except Exception as exc:  # e.g. the media links could not be made: try again later
                consumer_log.error("Lifecycle event requeued", error=str(exc)[:300])
                await self.consumer.requeue(item)
        if events:
            await self.apply(events)

    async def prepare(self, item: Received, event: LifecycleEvent) -> _Event:
        key = event_key(event)
        links = await self.links(event)
        reply = compose(event, links) if event.conversation_id is not None else None
        header = (item.message.headers or {}).get("traceparent")
        if isinstance(header, bytes):
            header = header.decode()
        return _Event(
            item,
            event,
            key,
            webhook_id(key),
            serialise(event, links),
            reply,
            trace.set_span_in_context(item.span),
            str(header) if header else traceparent_for(key),
        )

    async def links(self, event: LifecycleEvent) -> Links | None:
        result = event.snapshot.result
        if result is None:
            return None
        assert self.storage is not None, "the notifier's storage is built at start"
        return Links(
            video_url=await self.storage.url_for(result.video_key),
            thumbnail_url=await self.storage.url_for(result.thumbnail_key),
        )

    async def apply(self, events: list[_Event]) -> None:
        try:
            applied = await retrying(
                "Recording lifecycle events",
                lambda: self._apply(events),
                within=DATABASE_PATIENCE_SECONDS,
            )
        except Exception as exc:
            if len(events) > 1 and not isinstance(exc, sql.TRANSIENT):
                for one in events:  # only the event that fails goes back to the queue
                    await self.apply([one])
                return
            for e in events:  # one bad event, or the database away for too long
                with trace.use_span(e.item.span, end_on_exit=False):
                    consumer_log.error(
                        "Lifecycle event requeued",
                        consumer=CONSUMER,
                        message_id=e.message_id,
                        generation_id=str(e.event.generation_id),
                        error=str(exc)[:300],
                    )
                await self.consumer.requeue(e.item)
            return
        await self._after(events, applied)
        await self.consumer.ack([e.item for e in events])

    async def _apply(self, events: list[_Event]) -> _Applied:
        pool = self.deliverer.db()
        outgoing = Outgoing(self.relay)
        async with pool.acquire() as conn:
            # The endpoints are read before the transaction and the rows reused in it. Read
            # inside it they would be no more consistent: at READ COMMITTED, with no lock taken,
            # the SELECT in the transaction saw the endpoints as of that statement, and one
            # registered, disabled, deleted (a status: the row stays) or rotated before the
            # commit was missed all the same. An endpoint registered a moment after this read
            # misses the event as it would have missed it a moment after that SELECT; and a
            # redelivered event that needed nothing is judged afresh (it left no inbox row).
            endpoints = await self._endpoints(conn, events)
            targets: dict[int, list[Target]] = {}
            needy: list[_Event] = []
            nothing: set[int] = set()
            for e in events:
                its = targets_for(e.event, self.settings.nextjs_url, endpoints[e.event.user_id])
                if e.reply is None and not its:
                    nothing.add(id(e))
                    continue
                targets[id(e)] = its
                needy.append(e)
            if not needy:  # no claim, no transaction: nothing to record, nothing to dedupe
                return _Applied([], {}, [], outgoing, nothing)
            async with conn.transaction():
                fresh = await claim_many_plain(conn, CONSUMER, [e.message_id for e in needy])
                new: list[_Event] = []
                for e in needy:
                    if e.message_id in fresh:
                        fresh.discard(e.message_id)  # a second copy in this batch: a duplicate
                        new.append(e)
                replies, notices = await self._replies(conn, new)
                created = await self._deliveries(conn, new, targets)
                await outgoing.write(conn, notices)
        return _Applied(new, replies, created, outgoing, nothing)

    async def _endpoints(self, conn: Any, events: list[_Event]) -> dict[uuid.UUID, list[Any]]:
        """The active endpoints of the events' users (rows of `sql.ENDPOINTS_OF_USERS`)."""
        endpoints: dict[uuid.UUID, list[Any]] = defaultdict(list)
        users = sorted({e.event.user_id for e in events})
        for row in await conn.fetch(sql.ENDPOINTS_OF_USERS, users):
            endpoints[row["user_id"]].append(row)
        return endpoints

    async def _replies(
        self, conn: Any, new: list[_Event]
    ) -> tuple[dict[int, uuid.UUID], list[dict[str, Any]]]:
        """At most one assistant message per event, however often the event arrives."""
        wanted = sorted(
            ((e, uuid.uuid4()) for e in new if e.reply is not None), key=lambda p: str(p[0].key)
        )
        if not wanted:
            return {}, []
        rows = await conn.fetch(
            sql.REPLIES_INSERT,
            [i for _, i in wanted],
            [e.event.conversation_id for e, _ in wanted],
            [e.reply.content for e, _ in wanted if e.reply is not None],
            [e.event.generation_id for e, _ in wanted],
            [json.dumps(e.reply.attachments) for e, _ in wanted if e.reply is not None],
            [str(e.key) for e, _ in wanted],
            # Event time, not handling time: events handled concurrently still read in order.
            [e.event.occurred_at for e, _ in wanted],
        )
        added = {r[0] for r in rows}
        replies: dict[int, uuid.UUID] = {}
        notices: list[dict[str, Any]] = []
        for e, message_id in wanted:
            if message_id not in added:
                continue
            replies[id(e)] = message_id
            assert e.event.conversation_id is not None
            # Open views of the conversation (the API's SSE streams) learn of it this way.
            notice = ConversationMessageCreated(
                generation_id=e.event.generation_id,
                conversation_id=e.event.conversation_id,
                message_id=message_id,
                user_id=e.event.user_id,
            )
            notices.append(Outgoing.stage(notice, context=e.context))
        return replies, notices

    async def _deliveries(
        self, conn: Any, new: list[_Event], targets: dict[int, list[Target]]
    ) -> list[tuple[_Event, Target, uuid.UUID]]:
        """One delivery per target (unique on webhook-id and target), leased to this process.
        `targets`: id(event) → its targets, from the endpoints read before the transaction."""
        planned = [(e, t, uuid.uuid4()) for e in new for t in targets[id(e)]]
        if not planned:
            return []
        planned.sort(key=lambda p: (p[0].webhook_id, p[1].name))  # one lock order everywhere
        rows = await conn.fetch(
            sql.DELIVERIES_INSERT,
            [i for _, _, i in planned],
            [e.webhook_id for e, _, _ in planned],
            [t.name for _, t, _ in planned],
            [t.endpoint_id for _, t, _ in planned],
            [t.url for _, t, _ in planned],
            [e.event.event.value for e, _, _ in planned],
            [e.event.generation_id for e, _, _ in planned],
            [e.payload for e, _, _ in planned],
            [e.event.occurred_at for e, _, _ in planned],
            LEASE_SECONDS,
        )
        made = {r[0] for r in rows}
        return [p for p in planned if p[2] in made]

    async def _after(self, events: list[_Event], applied: _Applied) -> None:
        """After the commit: the log lines, the assistant-message spans, and the attempts."""
        fresh = {id(e) for e in applied.new}
        queued: dict[int, int] = defaultdict(int)
        for e, _, _ in applied.created:
            queued[id(e)] += 1
        if applied.nothing:
            self.needed_nothing += len(applied.nothing)
            # The hot path (most progress events): one DEBUG line a batch, nothing per event.
            consumer_log.debug(
                "Lifecycle events needed nothing", consumer=CONSUMER, count=len(applied.nothing)
            )
        for i, e in enumerate(events):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            with (
                trace.use_span(e.item.span, end_on_exit=False),
                log_context(  # also labels the event's span with its generation and user
                    consumer=CONSUMER,
                    message_id=e.message_id,
                    generation_id=str(e.event.generation_id),
                    user_id=str(e.event.user_id),
                ),
            ):
                if id(e) in applied.nothing:
                    continue
                if id(e) not in fresh:
                    self.duplicates += 1
                    consumer_log.info("Duplicate ignored", type=e.item.message.type)
                    continue
                self.handled += 1
                if e.reply is not None:
                    self._reply_span(e, applied.replies.get(id(e)))
                if queued[id(e)]:
                    log.info(
                        "Webhooks queued",
                        lifecycle_event=e.event.event.value,
                        webhook_id=e.webhook_id,
                        count=queued[id(e)],
                    )
        now = datetime.now(UTC)
        for e, target, delivery_id in applied.created:
            self.deliverer.offer(self._job(e, target, delivery_id, now))
        applied.notices.committed()

    def _reply_span(self, e: _Event, added: uuid.UUID | None) -> None:
        span = tracer().start_span(
            "assistant message",
            context=e.context,
            attributes={
                "reelflow.conversation_id": str(e.event.conversation_id),
                "reelflow.lifecycle_event": e.event.event.value,
                "reelflow.message.created": added is not None,
            },
        )
        span.end()
        if added is not None:
            log.info(
                "Assistant message added", lifecycle_event=e.event.event.value, message=str(added)
            )

    def _job(self, e: _Event, target: Target, delivery_id: uuid.UUID, now: datetime) -> Job:
        event = e.event
        if target.name == NEXTJS:
            return self.deliverer.nextjs_job(
                delivery_id,
                1,
                target.url,
                e.webhook_id,
                e.payload,
                event.generation_id,
                event.occurred_at,
                str(event.user_id),
                context=e.context,
                traceparent=e.traceparent,
            )
        assert target.secret is not None
        return Job(
            delivery_id,
            1,
            target.name,
            target.url,
            e.webhook_id,
            e.payload,
            signing_keys(
                target.secret, target.previous_secret, target.previous_secret_expires_at, now
            ),
            None,
            False,
            event.generation_id,
            target.endpoint_id,
            str(event.user_id),
            event.occurred_at,
            context=e.context,
            traceparent=e.traceparent,
        )
