"""The user's moves (answers, confirm, cancel) through the state machine.

Each move locks the row (`SELECT … FOR UPDATE`), decides on the status it finds, and writes
with `apply_transition`'s compare-and-set, so the orchestrator's concurrent moves either wait
for ours or lose theirs and re-decide. The lock makes a lost compare-and-set here unexpected;
should one happen anyway, the move re-reads and decides again.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from shared.db.models import Generation
from shared.domain import clarifier, pricing, quotas
from shared.domain.transitions import ConcurrentUpdate, apply_transition
from shared.schemas import GenerationParams, Question
from shared.settings import Settings
from shared.state_machine import IllegalTransition, Status, Trigger, decide
from sqlalchemy.ext.asyncio import AsyncSession

from api.problems import Problem, invalid
from api.queries import owned_generation

MAX_TRIES = 3

# What a move writes besides the status: decided on the locked row, may raise a Problem.
Plan = Callable[[Generation], tuple[Trigger, dict[str, Any]]]


async def move(
    db: AsyncSession,
    user_id: uuid.UUID,
    generation_id: uuid.UUID,
    plan: Plan,
    *,
    limits: quotas.Limits,
    also: Callable[[Generation], Awaitable[None]] | None = None,
) -> tuple[Generation, Status]:
    """Apply the planned move; the generation after it and the status it left. `also` stages
    more rows (e.g. the chat message that made the move) in the move's transaction. A move
    that confirms is checked against the user's quotas (`limits`): over one, a 429 and no
    change."""
    for _ in range(MAX_TRIES):
        gen = await owned_generation(db, user_id, generation_id, lock=True)
        before = Status(gen.status)
        trigger, changes = plan(gen)
        try:
            await apply_transition(db, gen, trigger, **changes)
        except IllegalTransition as exc:
            raise _conflict(exc) from None
        except ConcurrentUpdate:
            await db.rollback()
            continue
        if gen.status == Status.CONFIRMED and before != Status.CONFIRMED:
            await check_quotas(db, user_id, limits)
        if also is not None:
            await also(gen)
        await db.commit()
        return gen, before
    raise Problem(409, "the generation changed while this request ran; try again")


async def check_quotas(
    db: AsyncSession,
    user_id: uuid.UUID,
    limits: quotas.Limits,
    *,
    extra_generations: int = 0,
    extra_seconds: float = 0,
) -> None:
    """429 with Retry-After when confirming would pass one of the user's quotas. Raised
    inside the transaction, which is then never committed."""
    try:
        await quotas.check(
            db,
            user_id,
            limits,
            extra_generations=extra_generations,
            extra_seconds=extra_seconds,
        )
    except quotas.QuotaExceeded as exc:
        raise Problem(
            429,
            exc.detail,
            slug="quota-exceeded",
            headers={"Retry-After": str(exc.retry_after)},
            limit=exc.limit,
        ) from None


def _conflict(exc: IllegalTransition) -> Problem:
    return Problem(
        409,
        f"{exc} (current status: {exc.status.value})",
        slug="invalid-status",
        current_status=exc.status.value,
    )


def _require(gen: Generation, trigger: Trigger) -> None:
    """Refuse the move before looking at its input, so a wrong status is always a 409."""
    try:
        decide(Status(gen.status), trigger)
    except IllegalTransition as exc:
        raise _conflict(exc) from None


def confirm_plan(gen: Generation) -> tuple[Trigger, dict[str, Any]]:
    _require(gen, Trigger.CONFIRM)
    return Trigger.CONFIRM, {}


def cancel_plan(gen: Generation) -> tuple[Trigger, dict[str, Any]]:
    _require(gen, Trigger.CANCEL)
    return Trigger.CANCEL, {}


def answers_plan(answers: dict[str, str], settings: Settings) -> Plan:
    """Validate the answers against the open questions, then finish the spec and its cost.

    The asked questions stay on the row (the client shows them beside their answers); the
    move to `pending_confirmation` (or `confirmed` with auto_confirm) is what closes them.
    """

    def plan(gen: Generation) -> tuple[Trigger, dict[str, Any]]:
        trigger = Trigger.AUTO_CONFIRMED if gen.auto_confirm else Trigger.SPEC_READY
        _require(gen, trigger)
        if not gen.questions:
            raise Problem(
                409,
                "the generation has no questions yet; answer after "
                "generation.clarification_requested",
                slug="invalid-status",
                current_status=gen.status,
            )
        questions = [Question.model_validate(q) for q in gen.questions]
        try:
            clean = clarifier.check_answers(questions, answers)
        except clarifier.InvalidAnswer as exc:
            raise invalid(
                [
                    {"field": f"answers.{qid}", "location": "body", "message": message}
                    for qid, message in exc.errors.items()
                ],
                "some answers are missing or invalid",
            ) from None
        merged = {**gen.answers, **clean}
        analysis = clarifier.analyse(
            gen.prompt,
            GenerationParams.model_validate(gen.params),
            merged,
            default_model=settings.default_model,
        )
        if analysis.spec is None:  # the questions on the row did not cover what is needed
            raise invalid(
                [
                    {"field": f"answers.{q.id}", "location": "body", "message": "not answered"}
                    for q in analysis.questions
                ],
                "some answers are missing",
            )
        return trigger, {
            "answers": merged,
            "spec": analysis.spec.model_dump(mode="json"),
            "estimated_cost_usd": pricing.estimate_cost(
                analysis.spec, settings.price_per_second_usd
            ),
        }

    return plan


def some_answers_plan(answers: dict[str, str], settings: Settings) -> Plan:
    """Answers to some of the open questions (the chat's free text may answer one at a time).

    All of them answered: the same move as `answers_plan`. Only some: they are kept in `answers`
    and the questions still open are asked again (`questions_asked`, which announces them, so
    the assistant asks what is left). Answers to questions that are not open are ignored."""

    def plan(gen: Generation) -> tuple[Trigger, dict[str, Any]]:
        _require(gen, Trigger.QUESTIONS_ASKED)
        open_questions = [Question.model_validate(q) for q in gen.questions]
        given = {q.id: answers[q.id] for q in open_questions if q.id in answers}
        if not given:
            raise invalid(
                [{"field": "answers", "location": "body", "message": "answers no open question"}],
                "the answers do not match the open questions",
            )
        if len(given) == len(open_questions):
            return answers_plan(given, settings)(gen)
        try:
            clean = clarifier.check_answers([q for q in open_questions if q.id in given], given)
        except clarifier.InvalidAnswer as exc:
            raise invalid(
                [
                    {"field": f"answers.{qid}", "location": "body", "message": message}
                    for qid, message in exc.errors.items()
                ],
                "some answers are invalid",
            ) from None
        return Trigger.QUESTIONS_ASKED, {
            "answers": {**gen.answers, **clean},
            "questions": [q.model_dump(mode="json") for q in open_questions if q.id not in clean],
        }

    return plan
