"""The worker's consumer: a render command only records its job (`queued`) and is acked.

Run by `PlainIdempotentConsumer` (parse or dead-letter, one transaction on the plain asyncpg
pool, ack after commit): the job row, keyed by generation, is created once whatever copies of
the command arrive, with the message's inbox claim and the `started` report (stage `queued`,
its place in the queue) in the same statement (`JobStore.record`). A spec the provider cannot
honour fails here at once (`invalid_request`); nothing waits on the broker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from prometheus_client import Counter as PromCounter
from shared.consumer import Transaction
from shared.logging import get_logger
from shared.messages import RenderRequested

from veo_worker.jobs import QUEUED, JobStore
from veo_worker.providers.base import ProviderError, VideoProvider

log = get_logger("WORKER")


class RenderCommands:
    def __init__(
        self,
        store: JobStore,
        provider: VideoProvider,
        metric: PromCounter | None = None,
        *,
        queued: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.outcomes: Counter[str] = Counter()
        self._metric = metric
        # Told once a queued job's record committed (the scheduler's wake: a recorded job is
        # claimed at once, not at its next tick).
        self._queued = queued

    async def __call__(self, tx: Transaction, command: RenderRequested) -> None:
        refusal = None
        try:
            self.provider.check(command.spec)
        except ProviderError as exc:
            refusal = exc.info
        outcome = await self.store.record(tx, command, refusal)
        if outcome is None:  # this message was applied before
            return
        tx.on_commit(lambda: self._count(outcome))
        if outcome == QUEUED and self._queued is not None:
            tx.on_commit(self._queued)
        log.info(
            "Render recorded",
            outcome=outcome,
            model=command.spec.model,
            duration_seconds=command.spec.duration_seconds,
        )

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if self._metric is not None:
            self._metric.labels(outcome=outcome).inc()
