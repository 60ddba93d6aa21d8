"""End to end: `auto_confirm` generations through all four services, from `POST /v1/generations`
to the `generation.completed` webhook arriving at a receiver on loopback.

The provider is the fake Veo answering `done` at the first poll (made at once), with its small
720p/4 s MP4; storage is the local folder. The load generator and the receiver share this
(driver) process, which is neither of the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import asyncpg

from bench.common import CpuMeter
from bench.load import LoadResult, closed_loop, open_loop
from bench.receiver import FastReceiver

BODY = {
    "prompt": "A red fox running through fresh snow at dawn, cinematic, golden light",
    "auto_confirm": True,
    "params": {"aspect_ratio": "16:9", "resolution": "720p", "duration_seconds": 4},
}
WORK_QUEUES = (
    "orchestrator.requests",
    "orchestrator.confirmations",
    "orchestrator.reports",
    "worker.render",
    "notifier.events",
    "notifier.deliveries",
)
# A generation that takes longer counts as failed. At 1,000 in flight a generation waits about
# in-flight ÷ rate (~60-100 s on two cores) by Little's law: the limit is well above that.
TIMEOUT = 300.0


class GenerationFailed(Exception):
    pass


@dataclass
class Pipeline:
    """Starts generations and learns of their end from the webhook receiver."""

    receiver: FastReceiver
    api_keys: list[str] = field(default_factory=list)
    api_urls: list[str] = field(default_factory=list)
    webhooks: Counter[str] = field(default_factory=Counter)
    _waiting: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    _early: dict[str, tuple[str, float]] = field(default_factory=dict)
    _http: aiohttp.ClientSession | None = None
    _next_api: Any = None
    last_id: str | None = None  # the latest generation that completed
    # The latest completed generation of each key: what that user may read.
    completed_by_key: dict[str, str] = field(default_factory=dict)
    _next_key: Any = None
    # Wall-clock times (epoch seconds) of each POST and completed webhook, for `timeline`.
    posted_at: dict[str, float] = field(default_factory=dict)
    arrived_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.receiver.on_request = self.on_webhook

    async def open(self, api_keys: list[str], api_urls: list[str]) -> None:
        """Generations are spread over `api_keys` in turn: many users, as in life (one user's
        generations would also meet in one row lock, the user's quota check)."""
        self.api_keys = api_keys
        self._next_key = itertools.cycle(api_keys)
        self.set_apis(api_urls)
        self._http = aiohttp.ClientSession(
            # Idle connections are dropped before uvicorn drops them (its keep-alive is 5 s):
            # at 1,000 in flight a client waits a minute between POSTs, and a POST sent on a
            # connection the server had just closed failed as "Server disconnected".
            connector=aiohttp.TCPConnector(limit=2000, keepalive_timeout=3),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )

    def set_apis(self, api_urls: list[str]) -> None:
        self.api_urls = api_urls
        self._next_api = itertools.cycle(api_urls)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def on_webhook(self, path: bytes, body: bytes, at: float) -> None:
        try:
            data = json.loads(body)
        except ValueError:
            return
        event = str(data.get("event"))
        self.webhooks[event] += 1
        if event not in ("generation.completed", "generation.failed"):
            return
        generation = str(data.get("generationId"))
        if event == "generation.completed":
            self.arrived_at[generation] = time.time()
        future = self._waiting.pop(generation, None)
        if future is None:
            self._early[generation] = (event, at)
        elif not future.done():
            if event == "generation.completed":
                future.set_result(at)
            else:
                future.set_exception(GenerationFailed(json.dumps(data.get("error"))[:200]))

    async def create(self, key: str) -> tuple[str, float]:
        """POST one generation as `key`'s user: (its id, when the request started)."""
        assert self._http is not None
        started, wall = time.monotonic(), time.time()
        url = f"{next(self._next_api)}/v1/generations"
        headers = {"Authorization": f"Bearer {key}"}
        async with self._http.post(url, json=BODY, headers=headers) as r:
            if r.status != 201:
                raise RuntimeError(f"POST /v1/generations: {r.status} {(await r.text())[:200]}")
            body = await r.json()
        self.posted_at[str(body["id"])] = wall
        return str(body["id"]), started

    async def one(self) -> float:
        """One generation from POST to its `generation.completed` webhook, in seconds."""
        key = next(self._next_key)
        generation, started = await self.create(key)
        early = self._early.pop(generation, None)
        if early is not None:
            if early[0] != "generation.completed":
                raise GenerationFailed(generation)
            self.last_id = self.completed_by_key[key] = generation
            return early[1] - started
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[generation] = future
        try:
            arrived = await asyncio.wait_for(future, TIMEOUT)
        finally:
            self._waiting.pop(generation, None)
        self.last_id = self.completed_by_key[key] = generation
        return arrived - started


class QueueWatch:
    """Samples the depth of every work queue (passive declares) while a load runs: where
    messages pile up is where the pipeline is waiting."""

    def __init__(self, amqp_url: str, every: float = 0.5) -> None:
        self.amqp_url = amqp_url
        self.every = every
        self.samples: dict[str, list[int]] = {q: [] for q in WORK_QUEUES}
        self.active = False  # sampled only while the measuring window is open
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> QueueWatch:
        self._connection = await aio_pika.connect(self.amqp_url)
        self._channel = await self._connection.channel()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._connection.close()

    async def _run(self) -> None:
        while True:
            if not self.active:
                await asyncio.sleep(0.05)
                continue
            for name in WORK_QUEUES:
                queue = await self._channel.declare_queue(name, passive=True)
                self.samples[name].append(int(queue.declaration_result.message_count or 0))
            await asyncio.sleep(self.every)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {"mean": round(sum(v) / len(v), 1), "max": max(v)}
            for name, v in self.samples.items()
            if v
        }


@dataclass
class Point:
    """One closed-loop run: throughput, latency, CPU per process and queue depths."""

    load: LoadResult
    cpu_s: dict[str, float]
    cores: dict[str, float]  # per process, and "other processes" (the machine's other tenants)
    queues: dict[str, dict[str, float]]
    # Waiting for the system to finish what was in flight when the driver stopped counting.
    drained: Settled | None = None

    def as_dict(self) -> dict[str, Any]:
        per_gen = {
            name: round(1000 * spent / self.load.completed, 2) if self.load.completed else None
            for name, spent in self.cpu_s.items()
        }
        load = self.load
        return {
            **load.as_dict(),
            # What the p50 must tend to in a steady closed loop (in flight ÷ rate). After one
            # turnover at 1,000 in flight the window's generations were posted while the
            # first burst (turned over at about half the steady rate) was still ahead of
            # them, so the measured p50 sits above this there.
            "littles_law_p50_ms": (
                round(1000 * load.concurrency / load.rate, 1)
                if load.concurrency and load.rate
                else None
            ),
            "cpu_cores": self.cores,
            "core_ms_per_generation": per_gen,
            "core_ms_per_generation_total": round(
                sum(v for k, v in per_gen.items() if v is not None and k != "driver"), 2
            ),
            "queue_depth": self.queues,
            "drained": self.drained.as_dict() if self.drained else None,
        }


async def measure_point(
    pipeline: Pipeline,
    amqp_url: str,
    pids: Callable[[], dict[str, int]],
    concurrency: int,
    window: float,
    max_warmup: float = 45.0,
    database: str | None = None,
) -> Point:
    """One closed-loop point; then, with `database`, wait (up to two warm-ups) until the
    system has finished everything the load left in it, so the next point starts idle."""
    meter = CpuMeter(pids())

    spent: dict[str, float] = {}
    async with QueueWatch(amqp_url) as watch:

        def on_window(opening: bool) -> None:
            watch.active = opening
            if opening:
                meter.start()
            else:
                spent.update(meter.stop())

        load = await closed_loop(
            pipeline.one,
            concurrency,
            window=window,
            max_warmup=max_warmup,
            drain=max_warmup,
            on_window=on_window,
        )
    point = Point(load, spent, meter.cores(spent), watch.summary())
    if database is not None:
        point.drained = await settle(amqp_url, within=2 * max_warmup + 30, database=database)
    return point


async def half_rate(pipeline: Pipeline, rate: float, duration: float) -> LoadResult:
    return await open_loop(pipeline.one, rate, duration=duration, drain=TIMEOUT)


# Work the system still holds that RabbitMQ's queues do not show: generations on their way
# (auto-confirmed ones pass `pending_clarification`; the streams phase's generation waits in
# `pending_confirmation` on purpose and is not counted), jobs the worker has claimed or will
# claim (its queue is the `render_jobs` table), and outbox rows not yet published.
IN_FLIGHT_SQL = """
SELECT (SELECT count(*) FROM generations
        WHERE status IN ('pending_clarification', 'confirmed', 'processing')) AS generations,
       (SELECT count(*) FROM render_jobs
        WHERE status IN ('queued', 'submitting', 'running')) AS render_jobs,
       (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS outbox
"""


@dataclass
class Settled:
    """What `settle` waited for: the backlog when it was called, and how long it took."""

    idle: bool
    waited_s: float
    at_start: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"idle": self.idle, "waited_s": round(self.waited_s, 1), "at_start": self.at_start}


async def settle(amqp_url: str, within: float = 30.0, database: str | None = None) -> Settled:
    """Wait until every work and delay queue is empty twice in a row (the pipeline is idle);
    with `database`, until no generation is on its way, no render job is held or queued and
    no outbox row is unpublished as well: after a load of hundreds in flight, the worker's
    backlog is in `render_jobs`, not in a queue, and a phase started meanwhile would share the
    CPU with it."""
    from shared.topology import DELAY_QUEUES

    names = [*WORK_QUEUES, *(d.name for d in DELAY_QUEUES)]
    started = time.monotonic()
    deadline = started + within
    connection = await aio_pika.connect(amqp_url)
    db = await asyncpg.connect(database) if database else None
    quiet = 0
    at_start: dict[str, int] | None = None
    try:
        async with connection:
            channel = await connection.channel()
            while time.monotonic() < deadline:
                backlog: dict[str, int] = {}
                for name in names:
                    queue = await channel.declare_queue(name, passive=True)
                    backlog[name] = int(queue.declaration_result.message_count or 0)
                if db is not None:
                    row = await db.fetchrow(IN_FLIGHT_SQL)
                    backlog.update({k: int(v) for k, v in dict(row).items()})
                if at_start is None:
                    at_start = {k: v for k, v in backlog.items() if v}
                quiet = quiet + 1 if not any(backlog.values()) else 0
                if quiet >= 2:
                    return Settled(True, time.monotonic() - started, at_start)
                await asyncio.sleep(0.3)
    finally:
        if db is not None:
            await db.close()
    return Settled(False, time.monotonic() - started, at_start or {})
