"""The worker's consumer: a render command only records its job (`queued`) and is acked.

Run by `IdempotentConsumer` (parse or dead-letter, inbox, one transaction, ack after commit):
the job row, keyed by generation, is created once whatever copies of the command arrive, with
the `started` report (stage `queued`, its place in the queue) in the same commit. A spec the
provider cannot honour fails here at once (`invalid_request`); nothing waits on the broker.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import Counter as PromCounter
from shared.logging import get_logger
from shared.messages import RenderRequested
from sqlalchemy.ext.asyncio import AsyncSession

from veo_worker.jobs import JobStore
from veo_worker.providers.base import ProviderError, VideoProvider

log = get_logger("WORKER")


class RenderCommands:
    def __init__(
        self, store: JobStore, provider: VideoProvider, metric: PromCounter | None = None
    ) -> None:
        self.store = store
        self.provider = provider
        self.outcomes: Counter[str] = Counter()
        self._metric = metric

    async def __call__(self, session: AsyncSession, command: RenderRequested) -> None:
        refusal = None
        try:
            self.provider.check(command.spec)
        except ProviderError as exc:
            refusal = exc.info
        outcome = await self.store.record(session, command, refusal)
        self.outcomes[outcome] += 1
        if self._metric is not None:
            self._metric.labels(outcome=outcome).inc()
        log.info(
            "Render recorded",
            outcome=outcome,
            model=command.spec.model,
            duration_seconds=command.spec.duration_seconds,
        )
