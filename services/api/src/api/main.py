"""`reelflow api`: serve the app with uvicorn until SIGINT/SIGTERM, then shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from types import FrameType

import uvicorn
from shared.heap import settle
from shared.settings import Settings
from shared.telemetry import setup_telemetry

from api.app import create_app

GRACEFUL_SHUTDOWN_SECONDS = 20


class _Server(uvicorn.Server):
    """uvicorn re-raises a caught signal after shutting down, which would turn a clean stop
    into an exit by signal; here a signal only asks the server to finish in-flight requests."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Open SSE streams never finish by themselves: end them now, or the graceful shutdown
        # would wait its whole timeout for them. Their clients resume with Last-Event-ID.
        realtime = getattr(getattr(self.config.app, "state", None), "realtime", None)
        if realtime is not None:
            realtime.feed.end_streams()
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle()  # the garbage collector: the app and its pools are built

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread: whoever runs us stops us
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


def build(settings: Settings) -> uvicorn.Server:
    setup_telemetry("api", settings)  # before uvicorn's first log line names the service
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # our handlers, our format
        access_log=False,  # RequestContextMiddleware logs each request
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )
    return _Server(config)


async def serve(settings: Settings) -> None:
    server = build(settings)
    await server.serve()
    if not server.started:
        raise SystemExit("reelflow api: failed to start (see the log above)")
