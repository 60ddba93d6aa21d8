"""The orchestrator's handlers: one per queue, each run by `PlainIdempotentConsumer` inside one
transaction (plain asyncpg) with its inbox entry and outbox rows (acked after commit)."""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError
from shared.consumer import Transaction
from shared.domain import clarifier, pricing, quotas
from shared.domain.generation_rows import GenerationRow
from shared.logging import get_logger
from shared.messages import GenerationRequested, LifecycleEvent, RenderReported, RenderRequested
from shared.schemas import ErrorInfo, GenerationParams, RenderSpec
from shared.settings import Settings
from shared.state_machine import Event, Status, Trigger

from orchestrator import sql
from orchestrator.generations import transition, with_generation
from orchestrator.reports import apply_report

log = get_logger("ORCHESTRATOR")

# Inbox "consumer" under which a render dispatch is recorded, keyed by generation id: at most
# one RenderRequested per generation, whatever confirmed events arrive (the per-message inbox
# only stops redeliveries of the *same* event). The worker's render_jobs row guards once more.
DISPATCH_GUARD = "orchestrator.dispatch"
# On the generation.confirmed event of an auto-confirmed generation: the transaction that
# confirmed it also requested its render, so orchestrator.confirmations has nothing to do with
# it (it would only find the render requested, at the cost of a claim and a commit).
RENDER_REQUESTED_WITH_IT = "reelflow.render_requested"


def render_requested_with_it(raw: AbstractIncomingMessage) -> bool:
    return bool((raw.headers or {}).get(RENDER_REQUESTED_WITH_IT))


@dataclass(frozen=True)
class Handlers:
    settings: Settings

    async def requested(self, tx: Transaction, message: GenerationRequested) -> None:
        """Analyse a new (or newly answered) request: ask questions, or price the spec."""

        async def step(gen: GenerationRow) -> None:
            if gen.status != Status.PENDING_CLARIFICATION:
                log.info("Request no longer awaits analysis", status=gen.status)
                return
            try:
                params = GenerationParams(**gen.params)
                pricing.check_supported(
                    params,
                    provider=self.settings.provider,
                    prices=self.settings.price_per_second_usd,
                    default_model=self.settings.default_model,
                )
            except (ValidationError, pricing.UnsupportedParams) as exc:
                error = ErrorInfo(code="invalid_request", message=str(exc)[:500])
                await transition(tx, gen, Trigger.FAIL, error=error.model_dump())
                log.warning("Request refused", reason=error.message)
                return
            analysis = clarifier.analyse(
                gen.prompt, params, gen.answers, default_model=self.settings.default_model
            )
            if analysis.questions:
                questions = [q.model_dump(mode="json") for q in analysis.questions]
                if questions == gen.questions:
                    log.info("Questions already asked")  # a re-sent request: ask once
                    return
                await transition(tx, gen, Trigger.QUESTIONS_ASKED, questions=questions)
                log.info("Clarification requested", questions=[q.id for q in analysis.questions])
                return
            assert analysis.spec is not None
            await self._spec_ready(tx, gen, analysis.spec)

        await with_generation(tx, message.generation_id, step)

    async def _spec_ready(self, tx: Transaction, gen: GenerationRow, spec: RenderSpec) -> None:
        cost = pricing.estimate_cost(spec, self.settings.price_per_second_usd)
        trigger = Trigger.AUTO_CONFIRMED if gen.auto_confirm else Trigger.SPEC_READY
        if gen.auto_confirm:
            try:  # the user's quotas, as the API checks them when a user confirms
                await quotas.check_on(
                    tx.conn,
                    gen.user_id,
                    quotas.Limits.from_settings(self.settings),
                    extra_generations=1,
                    extra_seconds=spec.duration_seconds,
                )
            except quotas.QuotaExceeded as exc:
                error = ErrorInfo(code="quota_exceeded", message=exc.detail)
                await transition(tx, gen, Trigger.FAIL, error=error.model_dump())
                log.warning("Auto-confirmation refused", limit=exc.limit)
                return
        await transition(
            tx,
            gen,
            trigger,
            event_headers={RENDER_REQUESTED_WITH_IT: 1} if gen.auto_confirm else None,
            spec=spec.model_dump(mode="json"),
            estimated_cost_usd=cost,
        )
        log.info("Spec ready", auto_confirm=gen.auto_confirm, estimated_cost_usd=str(cost))
        if gen.auto_confirm:
            # Confirmed by this very transaction: the render goes out with it, a hop sooner than
            # through orchestrator.confirmations (which finds it requested, by the guard).
            await self._dispatch(tx, gen)

    async def confirmed(self, tx: Transaction, message: LifecycleEvent) -> None:
        """Dispatch exactly one render for a confirmed generation."""
        if message.event != Event.CONFIRMED:
            if await tx.claim():
                log.info("Lifecycle event ignored", lifecycle_event=message.event.value)
            return

        async def step(gen: GenerationRow) -> None:
            if gen.status != Status.CONFIRMED or gen.spec is None:
                log.info("Not dispatched: no longer confirmed", status=gen.status)
                return
            await self._dispatch(tx, gen)

        await with_generation(tx, message.generation_id, step)

    async def _dispatch(self, tx: Transaction, gen: GenerationRow) -> None:
        """Request the generation's render, unless it was requested already (the guard's claim
        and the command are one statement, the command written only if the claim is new)."""
        assert gen.spec is not None
        spec = RenderSpec.model_validate(gen.spec)
        command = RenderRequested(generation_id=gen.id, user_id=gen.user_id, spec=spec)
        rows = [tx.outgoing.stage(command)]
        found = await tx.conn.fetchrow(
            sql.DISPATCH, DISPATCH_GUARD, str(gen.id), *tx.outgoing.arrays(rows)
        )
        if not found["fresh"]:
            log.info("Render already requested")
            return
        tx.outgoing.written(rows, zip(found["ids"], found["message_ids"], strict=True))
        log.info("Render requested", model=spec.model, duration_seconds=spec.duration_seconds)

    async def reported(self, tx: Transaction, message: RenderReported) -> None:
        """Apply a worker's report (started, progress, succeeded, failed)."""

        async def step(gen: GenerationRow) -> None:
            await apply_report(tx, gen, message)

        # Locked: a generation's reports (started, progress, succeeded) arrive together and
        # are handled concurrently; unlocked, about one in five lost the compare-and-set and
        # was re-read and re-run. Locked, the later one waits for the earlier one's commit.
        await with_generation(tx, message.generation_id, step, lock=True)
