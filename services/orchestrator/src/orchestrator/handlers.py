"""The orchestrator's handlers: one per queue, each run by `IdempotentConsumer` inside one
transaction with its inbox entry and outbox rows (acked after commit)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from shared.domain import clarifier, pricing, quotas
from shared.domain.generation_rows import GenerationRow
from shared.domain.transitions import apply_transition
from shared.inbox import claim
from shared.logging import get_logger
from shared.messages import GenerationRequested, LifecycleEvent, RenderReported, RenderRequested
from shared.outbox import enqueue
from shared.schemas import ErrorInfo, GenerationParams, RenderSpec
from shared.settings import Settings
from shared.state_machine import Event, Status, Trigger
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.generations import with_generation
from orchestrator.reports import apply_report

log = get_logger("ORCHESTRATOR")

# Inbox "consumer" under which a render dispatch is recorded, keyed by generation id: at most
# one RenderRequested per generation, whatever confirmed events arrive (the per-message inbox
# only stops redeliveries of the *same* event). The worker's render_jobs row guards once more.
DISPATCH_GUARD = "orchestrator.dispatch"


@dataclass(frozen=True)
class Handlers:
    settings: Settings

    async def requested(self, session: AsyncSession, message: GenerationRequested) -> None:
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
                await apply_transition(session, gen, Trigger.FAIL, error=error.model_dump())
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
                await apply_transition(session, gen, Trigger.QUESTIONS_ASKED, questions=questions)
                log.info("Clarification requested", questions=[q.id for q in analysis.questions])
                return
            assert analysis.spec is not None
            await self._spec_ready(session, gen, analysis.spec)

        await with_generation(session, message.generation_id, step)

    async def _spec_ready(
        self, session: AsyncSession, gen: GenerationRow, spec: RenderSpec
    ) -> None:
        cost = pricing.estimate_cost(spec, self.settings.price_per_second_usd)
        trigger = Trigger.AUTO_CONFIRMED if gen.auto_confirm else Trigger.SPEC_READY
        if gen.auto_confirm:
            try:  # the user's quotas, as the API checks them when a user confirms
                await quotas.check(
                    session,
                    gen.user_id,
                    quotas.Limits.from_settings(self.settings),
                    extra_generations=1,
                    extra_seconds=spec.duration_seconds,
                )
            except quotas.QuotaExceeded as exc:
                error = ErrorInfo(code="quota_exceeded", message=exc.detail)
                await apply_transition(session, gen, Trigger.FAIL, error=error.model_dump())
                log.warning("Auto-confirmation refused", limit=exc.limit)
                return
        await apply_transition(
            session, gen, trigger, spec=spec.model_dump(mode="json"), estimated_cost_usd=cost
        )
        log.info("Spec ready", auto_confirm=gen.auto_confirm, estimated_cost_usd=str(cost))

    async def confirmed(self, session: AsyncSession, message: LifecycleEvent) -> None:
        """Dispatch exactly one render for a confirmed generation."""
        if message.event != Event.CONFIRMED:
            log.info("Lifecycle event ignored", lifecycle_event=message.event.value)
            return

        async def step(gen: GenerationRow) -> None:
            if gen.status != Status.CONFIRMED or gen.spec is None:
                log.info("Not dispatched: no longer confirmed", status=gen.status)
                return
            if not await claim(session, DISPATCH_GUARD, str(gen.id)):
                log.info("Render already requested")
                return
            spec = RenderSpec.model_validate(gen.spec)
            enqueue(session, RenderRequested(generation_id=gen.id, user_id=gen.user_id, spec=spec))
            log.info("Render requested", model=spec.model, duration_seconds=spec.duration_seconds)

        await with_generation(session, message.generation_id, step)

    async def reported(self, session: AsyncSession, message: RenderReported) -> None:
        """Apply a worker's report (started, progress, succeeded, failed)."""

        async def step(gen: GenerationRow) -> None:
            await apply_report(session, gen, message)

        # Locked: a generation's reports (started, progress, succeeded) arrive together and
        # are handled concurrently; unlocked, about one in five lost the compare-and-set and
        # was re-read and re-run. Locked, the later one waits for the earlier one's commit.
        await with_generation(session, message.generation_id, step, lock=True)
