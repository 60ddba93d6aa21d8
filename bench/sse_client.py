"""SSE subscribers in a process of their own: raw asyncio connections (no HTTP client library,
so the load generator stays cheap next to the server it measures).

    python -m bench.sse_client --url http://127.0.0.1:8000/v1/generations/ID/events \
        --header "Authorization: Bearer KEY" --n 5000 --open-seconds 60

Opens up to `n` streams (a stream is held once its first `event:` frame arrived), prints
`HELD <held> <failed> <seconds>`, then waits for `GO` on stdin and records when the frame named
by `--event` reaches each stream; prints one JSON line with those (monotonic) arrival times.
CLOCK_MONOTONIC is one clock for every process of the machine, so the driver compares them with
the moment it fired the event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a uvicorn extra, present here
    uvloop = None  # type: ignore[assignment]


class Arrivals:
    """Counts streams that got the event; `all` is set once every held stream has."""

    def __init__(self) -> None:
        self.count = 0
        self.expected: int | None = None
        self.all = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        self.check()

    def check(self) -> None:
        if self.expected is not None and self.count >= self.expected:
            self.all.set()


class Stream(asyncio.Protocol):
    def __init__(self, request: bytes, target: bytes, arrivals: Arrivals) -> None:
        self.request = request
        self.arrivals = arrivals
        self.target = target
        self.held: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.arrived: float | None = None
        self.tail = b""
        self.transport: asyncio.BaseTransport | None = None
        self.status_checked = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.status_checked:
            self.status_checked = True
            if not data.startswith(b"HTTP/1.1 200"):
                self._settle(False)
                return
        buf = self.tail + data
        if not self.held.done() and b"event:" in buf:
            self._settle(True)
        if self.arrived is None and self.target in buf:
            self.arrived = now
            if self.held.done() and self.held.result():
                self.arrivals.add()  # only streams counted as held count towards "all arrived"
        self.tail = buf[-64:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._settle(False)

    def _settle(self, ok: bool) -> None:
        if not self.held.done():
            self.held.set_result(ok)


async def run(args: argparse.Namespace) -> None:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = [f"GET {url.path}{'?' + url.query if url.query else ''} HTTP/1.1", f"Host: {host}"]
    head += ["Accept: text/event-stream", *args.header]
    request = ("\r\n".join(head) + "\r\n\r\n").encode()
    target = f"event: {args.event}".encode()
    loop = asyncio.get_running_loop()
    streams: list[Stream] = []
    arrivals = Arrivals()
    gate = asyncio.Semaphore(args.concurrency)
    deadline = time.monotonic() + args.open_seconds
    failed = 0

    async def open_one() -> None:
        nonlocal failed
        async with gate:
            if time.monotonic() > deadline:
                return
            stream: Stream | None = None
            try:
                _, stream = await loop.create_connection(
                    lambda: Stream(request, target, arrivals), host, port
                )
                left = max(0.1, deadline - time.monotonic())
                if await asyncio.wait_for(asyncio.shield(stream.held), left):
                    streams.append(stream)
                    return
            except (OSError, TimeoutError):
                pass
            failed += 1
            if stream is not None and stream.transport is not None:
                stream.transport.close()  # not open in time: not left half-open on the server

    started = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(args.n)))
    print(f"HELD {len(streams)} {failed} {time.monotonic() - started:.3f}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if line.strip() != b"GO":
        return
    arrivals.expected = sum(1 for s in streams if not s.lost)
    arrivals.count = sum(1 for s in streams if s.arrived is not None)
    arrivals.check()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(arrivals.all.wait(), args.wait)
    times = [s.arrived for s in streams]
    closed = sum(1 for s in streams if s.arrived is None and s.lost)
    for stream in streams:
        if stream.transport is not None:
            with contextlib.suppress(Exception):
                stream.transport.close()
    print(json.dumps({"arrivals": times, "closed_without_event": closed}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=100, help="streams opening at once")
    parser.add_argument("--open-seconds", type=float, default=60.0)
    parser.add_argument("--event", default="generation.cancelled")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait after GO")
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
