"""What the live routes need, built in the app's lifespan: the feed and the stream tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Gauge
from shared.media import load_signing_secret
from shared.runtime import ServiceRuntime

from api.live import LiveFeed
from api.streamauth import StreamTokens
from api.streams import SharedFrames


@dataclass
class Realtime:
    feed: LiveFeed
    tokens: StreamTokens
    heartbeat_seconds: float
    frames: SharedFrames = field(default_factory=SharedFrames)  # live events rendered once

    @classmethod
    async def start(cls, runtime: ServiceRuntime) -> Realtime:
        settings = runtime.settings
        async with runtime.sessions() as session:
            secret = await load_signing_secret(session, settings)
        feed = LiveFeed(settings.amqp_url)
        await feed.start()
        streams = Gauge(
            "reelflow_live_streams", "Open SSE streams on this instance", registry=runtime.registry
        )
        streams.set_function(lambda: feed.subscribers)
        received = Gauge(
            "reelflow_live_updates_received",
            "Live updates this instance's feed received from the broker",
            registry=runtime.registry,
        )
        received.set_function(lambda: feed.received)
        return cls(feed, StreamTokens(secret), settings.sse_heartbeat_seconds)

    async def close(self) -> None:
        await self.feed.close()
