"""Small helpers shared by the fixtures and tests of every member."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

ADMIN_KEY = "test-admin-key"

# The services a whole stack runs as processes (`reelflow <name>`), and the variable naming the
# port each one listens on (the API's HTTP port; the others' health and metrics port).
SERVICES = ("api", "orchestrator", "worker", "notifier")
PORT_VARIABLE = {
    "api": "API_PORT",
    "orchestrator": "ORCHESTRATOR_METRICS_PORT",
    "worker": "WORKER_METRICS_PORT",
    "notifier": "NOTIFIER_METRICS_PORT",
}

# The abuse limits off (0), for suites and harnesses that drive many requests and generations
# from one key; the tests of the limits themselves turn them on (services/api/tests).
NO_LIMITS = {
    "RATE_LIMIT_PER_SECOND": "0",
    "QUOTA_MAX_CONCURRENT_GENERATIONS": "0",
    "QUOTA_VIDEO_SECONDS_PER_DAY": "0",
}


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this run: the kernel may offer a port it
    just released again, and two services given one port make the second one fail to bind."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


async def eventually(check: Callable[[], Any], *, within: float = 60, every: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns something truthy (an AssertionError inside
    counts as "not yet"); fail with its last value or error after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except AssertionError as exc:
            last = exc
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {within}s; last: {last!r}")


async def record_bound(
    channel: AbstractChannel, exchange: str, *keys: str
) -> list[AbstractIncomingMessage]:
    """Every message routed from `exchange` under `keys`, in arrival order, through an
    exclusive queue of the test's own (a tap on the real broker)."""
    seen: list[AbstractIncomingMessage] = []
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for key in keys:
        await queue.bind(exchange, routing_key=key)

    async def record(message: AbstractIncomingMessage) -> None:
        seen.append(message)

    await queue.consume(record, no_ack=True)
    return seen


async def reelflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`reelflow ARGS` as an operator runs it, with `env` on top of ours; never raises on exit."""
    return await asyncio.to_thread(
        subprocess.run,
        ["reelflow", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
