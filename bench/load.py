"""Load shapes shared by the benchmarks.

- Closed loop: `concurrency` clients, each starting its next operation when the last one ended,
  so exactly that many operations are in flight. Throughput is counted over a window after a
  warm-up, which lasts until the system has turned its in-flight work over once.
- Open loop: operations started at a fixed rate whatever the system does, so latency includes
  any queueing the system causes (a closed loop would slow down instead and hide it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

# One operation: returns its latency in seconds, or raises on failure.
Operation = Callable[[], Coroutine[Any, Any, float]]


@dataclass
class LoadResult:
    concurrency: int | None
    rate: float  # operations completed per second in the measured window
    latencies: list[float] = field(default_factory=list)  # of the operations ended in window
    completed: int = 0
    failed: int = 0
    window: float = 0.0
    warmup: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from bench.common import summary_ms

        return {
            "concurrency": self.concurrency,
            "rate_per_s": round(self.rate, 2),
            "completed_in_window": self.completed,
            "failed": self.failed,
            "window_s": round(self.window, 2),
            "warmup_s": round(self.warmup, 2),
            "latency": summary_ms(self.latencies),
            "errors": self.errors[:5],
        }


async def closed_loop(
    one: Operation,
    concurrency: int,
    *,
    window: float,
    min_warmup: float = 2.0,
    max_warmup: float = 20.0,
    drain: float = 30.0,
    on_window: Callable[[bool], None] | None = None,
) -> LoadResult:
    """Run until `concurrency` operations have ended (or `max_warmup`), measure for `window`
    seconds, then stop starting new ones and let those in flight end (at most `drain` s).
    `on_window(True/False)` is called when the window opens and closes (for CPU meters)."""
    result = LoadResult(concurrency=concurrency, rate=0.0)
    ended: list[tuple[float, float]] = []  # (end time, latency)
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                latency = await one()
                ended.append((time.monotonic(), latency))
            except Exception as exc:
                result.failed += 1
                if len(result.errors) < 20:
                    result.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    started = time.monotonic()
    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    while time.monotonic() - started < max_warmup:
        await asyncio.sleep(0.05)
        if time.monotonic() - started >= min_warmup and len(ended) >= concurrency:
            break
    opened = time.monotonic()
    result.warmup = opened - started
    if on_window:
        on_window(True)
    await asyncio.sleep(window)
    closed = time.monotonic()
    if on_window:
        on_window(False)
    stop.set()
    in_window = [lat for end, lat in ended if opened <= end < closed]
    result.window = closed - opened
    result.completed = len(in_window)
    result.rate = len(in_window) / result.window
    result.latencies = in_window
    _, pending = await asyncio.wait(tasks, timeout=drain)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return result


async def open_loop(
    one: Operation, rate: float, *, duration: float, drain: float = 30.0
) -> LoadResult:
    """Start one operation every 1/rate seconds for `duration`, then wait for them all."""
    result = LoadResult(concurrency=None, rate=0.0)
    tasks: list[asyncio.Task[float]] = []
    interval = 1.0 / rate
    started = time.monotonic()
    count = int(duration * rate)
    for i in range(count):
        delay = started + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    done, pending = await asyncio.wait(tasks, timeout=drain)
    for task in pending:
        task.cancel()
    result.window = time.monotonic() - started
    for task in done:
        if task.cancelled() or task.exception() is not None:
            result.failed += 1
            exc = None if task.cancelled() else task.exception()
            if exc is not None and len(result.errors) < 20:
                result.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        else:
            result.latencies.append(task.result())
    result.failed += len(pending)
    result.completed = len(result.latencies)
    result.rate = rate
    return result
