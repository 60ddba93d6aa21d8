"""Baseline for the end-to-end figure: a bare FastStream chain of six hops over the same RabbitMQ.

Six subscribers pass a message along (queue 1 → … → queue 6); the sixth resolves the chain.
Everything in one process, on uvloop like the services (and as `faststream run` runs an
app). Measured the same way as the pipeline: a closed loop at `--concurrency` gives chains/s,
then an open loop at half that rate gives the latency of one chain (first publish to the sixth
subscriber).

`--durable` runs the chain as Reelflow's queues are: quorum queues, persistent messages and
publisher confirms (FastStream's default otherwise: classic queues, transient messages).

    python -m bench.baseline_chain --amqp amqp://... --window 5 [--durable]

Prints one JSON object on the last line of stdout.
"""

# No `from __future__ import annotations`: FastStream reads the handlers' annotations at runtime.

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from typing import Any

import uvloop
from faststream.rabbit import QueueType, RabbitBroker, RabbitQueue

from bench.load import closed_loop, open_loop

HOPS = 6


async def run(amqp: str, window: float, concurrency: int, durable: bool) -> dict[str, Any]:
    broker = RabbitBroker(amqp, logger=None)
    run_id = uuid.uuid4().hex[:8]
    names = [f"bench.chain.{run_id}.{i}" for i in range(1, HOPS + 1)]
    if durable:
        queues = [
            RabbitQueue(n, durable=True, queue_type=QueueType.QUORUM, auto_delete=False)
            for n in names
        ]
    else:
        queues = [RabbitQueue(n, auto_delete=True) for n in names]
    waiting: dict[int, asyncio.Future[None]] = {}

    def hop(next_queue: RabbitQueue) -> Any:
        async def handler(body: dict) -> None:
            await broker.publish(body, queue=next_queue, persist=durable)

        return handler

    async def last(body: dict) -> None:
        future = waiting.pop(body["n"], None)
        if future is not None and not future.done():
            future.set_result(None)

    for queue, following in itertools.pairwise(queues):
        broker.subscriber(queue)(hop(following))
    broker.subscriber(queues[-1])(last)
    await broker.start()
    counter = itertools.count()

    async def one() -> float:
        n = next(counter)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting[n] = future
        started = time.monotonic()
        await broker.publish({"n": n}, queue=queues[0], persist=durable)
        await asyncio.wait_for(future, 30)
        return time.monotonic() - started

    try:
        for _ in range(20):  # connections, channels and queues warm
            await one()
        closed = await closed_loop(one, concurrency, window=window, min_warmup=1.0)
        half = max(1.0, closed.rate / 2)
        opened = await open_loop(one, half, duration=window)
    finally:
        await broker.stop()
        if durable:
            await _delete(amqp, names)
    return {
        "variant": "quorum+persistent+confirms" if durable else "faststream defaults",
        "hops": HOPS,
        "closed_loop": closed.as_dict(),
        "open_loop_half_rate": opened.as_dict(),
    }


async def _delete(amqp: str, names: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(amqp)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.amqp, args.window, args.concurrency, args.durable))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
