"""Baseline for webhook deliveries: bare aiohttp POSTs of a webhook-sized body to the same fast
receiver, at the concurrency the notifier may use toward it, from a process of its own.

    python -m bench.baseline_webhooks --url http://127.0.0.1:PORT/fast --seconds 4

Prints one JSON line: requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.common import summary_ms

BODY = json.dumps(
    {
        "event": "generation.processing",
        "jobId": "x" * 36,
        "generationId": "00000000-0000-0000-0000-000000000000",
        "status": "processing",
        "padding": "x" * 300,
    }
).encode()


async def run(url: str, seconds: float, concurrency: int) -> dict[str, object]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                async with http.post(url, data=BODY, allow_redirects=False) as response:
                    await response.read()
                latencies.append(time.monotonic() - started)

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.monotonic() - began
    return {
        "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / wall, 1),
        "latency": summary_ms(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.seconds, args.concurrency))), flush=True)


if __name__ == "__main__":
    main()
