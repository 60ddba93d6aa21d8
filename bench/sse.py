"""Live streams: many SSE subscribers held by one server process, and one event fanned out to
all of them. The subscribers live in `bench.sse_client` processes; this drives them."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

from bench.common import REPO, CpuMeter, rss_mb, summary_ms


async def fan_out(
    url: str,
    headers: dict[str, str],
    n: int,
    *,
    server_pid: int,
    fire: Callable[[], Awaitable[None]],
    processes: int = 2,
    open_seconds: float = 60.0,
    event: str = "generation.cancelled",
) -> dict[str, Any]:
    """Open `n` streams (within `open_seconds`), fire one event, time its arrival at each."""
    rss_before = rss_mb(server_pid)
    meter = CpuMeter({"server": server_pid})
    meter.start()
    share = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    clients = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.sse_client",
            "--url",
            url,
            *[arg for k, v in headers.items() for arg in ("--header", f"{k}: {v}")],
            "--n",
            str(count),
            "--open-seconds",
            str(open_seconds),
            "--event",
            event,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 2**20,  # the arrival times come back as one JSON line
        )
        for count in share
    ]
    held = failed = 0
    open_time = 0.0
    try:
        for client in clients:
            assert client.stdout is not None
            line = await asyncio.wait_for(client.stdout.readline(), open_seconds + 60)
            word, h, f, seconds = line.decode().split()
            if word != "HELD":
                raise RuntimeError(f"unexpected line from sse_client: {line!r}")
            held, failed, open_time = held + int(h), failed + int(f), max(open_time, float(seconds))
        opening_cpu = meter.stop()["server"]
        await asyncio.sleep(1.0)  # let the server settle before reading its memory
        rss_held = rss_mb(server_pid)
        # The fan-out's CPU: the server's (its kernel time apart: on loopback a socket write
        # carries the receiving side's TCP work too) and the subscribers' own, on the same cores.
        subscribers = CpuMeter({f"c{c.pid}": c.pid for c in clients})
        server_before = psutil.Process(server_pid).cpu_times()
        subscribers.start()
        fired_at = time.monotonic()
        await fire()
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(b"GO\n")
            await client.stdin.drain()
        arrivals: list[float | None] = []
        closed = 0
        for client in clients:
            assert client.stdout is not None
            line = await asyncio.wait_for(client.stdout.readline(), 60)
            answer = json.loads(line)
            arrivals += answer["arrivals"]
            closed += answer.get("closed_without_event", 0)
        subscribers_cpu = sum(subscribers.stop().values())
        server_after = psutil.Process(server_pid).cpu_times()
        fan_out_cpu = (server_after.user + server_after.system) - (
            server_before.user + server_before.system
        )
    finally:
        for client in clients:
            if client.returncode is None:
                client.kill()
            await client.wait()
    latencies = [a - fired_at for a in arrivals if a is not None]
    return {
        "requested": n,
        "held": held,
        "failed_to_open": failed,
        "open_seconds": round(open_time, 2),
        "opened_per_s": round(held / open_time, 1) if open_time else None,
        "rss_before_mb": rss_before,
        "rss_held_mb": rss_held,
        "kb_per_stream": round((rss_held - rss_before) * 1024 / held, 1) if held else None,
        "server_core_ms_per_open": round(1000 * opening_cpu / held, 2) if held else None,
        "server_cpu_s_fanning_out": round(fan_out_cpu, 3),
        "server_kernel_share_fanning_out": round(
            (server_after.system - server_before.system) / fan_out_cpu, 2
        )
        if fan_out_cpu
        else None,
        "subscribers_cpu_s_fanning_out": round(subscribers_cpu, 3),
        "fan_out_wall_s": round(subscribers.wall, 3),
        "first_arrival_ms": round(1000 * min(latencies), 1) if latencies else None,
        "received": len(latencies),
        "missed": len(arrivals) - len(latencies),
        "missed_closed_by_server": closed,
        "fan_out": summary_ms(latencies),
    }
