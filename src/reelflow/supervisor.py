"""`reelflow run`: one child process per service, restarted if it dies, stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from shared.logging import get_logger
from shared.settings import Settings
from shared.waiting import wait_set

log = get_logger("SUPERVISOR")

RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0)


async def _child(name: str, stopping: asyncio.Event) -> None:
    failures = 0
    while not stopping.is_set():
        # A session of its own: Ctrl-C reaches only the supervisor, which stops the children
        # in order with SIGTERM instead of every process reacting to the same SIGINT at once.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reelflow.cli",
            name,
            env=os.environ.copy(),
            start_new_session=True,
        )
        log.info("Service started", service=name, pid=proc.pid)
        waiter = asyncio.create_task(proc.wait())
        stopper = asyncio.create_task(stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            stopper.cancel()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(waiter, 30)
                except TimeoutError:
                    proc.kill()
                    await waiter
            log.info("Service stopped", service=name)
            return
        stopper.cancel()
        delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
        failures += 1
        log.error(
            "Service exited, restarting", service=name, code=proc.returncode, restart_in_s=delay
        )
        await wait_set(stopping, delay)


async def supervise(settings: Settings, services: tuple[str, ...]) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    print(f"Reelflow is starting: open {settings.public_url}", flush=True)
    await asyncio.gather(*(_child(name, stopping) for name in services))
    return 0
