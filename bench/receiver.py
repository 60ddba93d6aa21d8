"""Webhook receivers on loopback, as cheap as a Python server gets: a raw asyncio protocol with
httptools' parser (the C parser uvicorn uses), so the receiver is never the bottleneck.

`FastReceiver` answers 200 at once and hands each body to a callback with its arrival time;
`HangingReceiver` reads the request and never answers, like an endpoint that hangs until the
sender's timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httptools

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

# (path, body, monotonic arrival time)
OnRequest = Callable[[bytes, bytes, float], None]


class _Protocol(asyncio.Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.open.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        self.server.handle(self, self.url, body)


class _Server:
    def __init__(self) -> None:
        self.port = 0
        self.open: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, protocol: _Protocol, url: bytes, body: bytes) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self), "127.0.0.1", self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.open):
                transport.close()
            await self._server.wait_closed()
            self._server = None


class FastReceiver(_Server):
    def __init__(self, on_request: OnRequest | None = None) -> None:
        super().__init__()
        self.on_request = on_request
        self.by_path: Counter[bytes] = Counter()

    def handle(self, protocol: _Protocol, url: bytes, body: bytes) -> None:
        now = time.monotonic()
        self.by_path[url] += 1
        if protocol.transport is not None:
            protocol.transport.write(OK)
        if self.on_request is not None:
            self.on_request(url, body, now)


class HangingReceiver(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle(self, protocol: _Protocol, url: bytes, body: bytes) -> None:
        self.requests += 1  # and never answer: the sender waits for its timeout
