"""The generation state machine: a transition table over an Enum and a pure `decide()`.

No I/O here. Whoever applies a transition (the API for the user's moves, the orchestrator for
the system's) loads the row, calls `decide`, writes the new status with a version check and the
returned lifecycle events to the outbox in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PENDING_CLARIFICATION = "pending_clarification"
    PENDING_CONFIRMATION = "pending_confirmation"
    CONFIRMED = "confirmed"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


class Trigger(StrEnum):
    """What happened. Each trigger is either the user's move or the system's."""

    QUESTIONS_ASKED = "questions_asked"  # system: the clarifier needs answers
    SPEC_READY = "spec_ready"  # system or user: nothing left to ask
    AUTO_CONFIRMED = "auto_confirmed"  # system: spec ready and auto_confirm was on
    CONFIRM = "confirm"  # user
    RENDER_STARTED = "render_started"  # worker, applied by the orchestrator
    PROGRESS = "progress"  # worker, applied by the orchestrator (no status change)
    RENDER_SUCCEEDED = "render_succeeded"
    RENDER_FAILED = "render_failed"
    FAIL = "fail"  # system: invalid request, deadline passed
    CANCEL = "cancel"  # user


class Event(StrEnum):
    """Lifecycle events, as published on RabbitMQ and sent as webhooks."""

    CLARIFICATION_REQUESTED = "generation.clarification_requested"
    AWAITING_CONFIRMATION = "generation.awaiting_confirmation"
    CONFIRMED = "generation.confirmed"
    PROCESSING = "generation.processing"
    PROGRESS = "generation.progress"
    COMPLETED = "generation.completed"
    FAILED = "generation.failed"
    CANCELLED = "generation.cancelled"


INITIAL = Status.PENDING_CLARIFICATION
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
_ANY_LIVE = (
    Status.PENDING_CLARIFICATION,
    Status.PENDING_CONFIRMATION,
    Status.CONFIRMED,
    Status.PROCESSING,
)

# (from, trigger) -> (to, events). A status may stay the same (asking again, progress).
TRANSITIONS: dict[tuple[Status, Trigger], tuple[Status, tuple[Event, ...]]] = {
    (Status.PENDING_CLARIFICATION, Trigger.QUESTIONS_ASKED): (
        Status.PENDING_CLARIFICATION,
        (Event.CLARIFICATION_REQUESTED,),
    ),
    (Status.PENDING_CLARIFICATION, Trigger.SPEC_READY): (
        Status.PENDING_CONFIRMATION,
        (Event.AWAITING_CONFIRMATION,),
    ),
    (Status.PENDING_CLARIFICATION, Trigger.AUTO_CONFIRMED): (
        Status.CONFIRMED,
        (Event.CONFIRMED,),
    ),
    (Status.PENDING_CONFIRMATION, Trigger.CONFIRM): (Status.CONFIRMED, (Event.CONFIRMED,)),
    (Status.CONFIRMED, Trigger.RENDER_STARTED): (Status.PROCESSING, (Event.PROCESSING,)),
    (Status.PROCESSING, Trigger.PROGRESS): (Status.PROCESSING, (Event.PROGRESS,)),
    (Status.PROCESSING, Trigger.RENDER_SUCCEEDED): (Status.COMPLETED, (Event.COMPLETED,)),
    (Status.PROCESSING, Trigger.RENDER_FAILED): (Status.FAILED, (Event.FAILED,)),
    # A worker may fail before it reports start (e.g. a request the provider refuses).
    (Status.CONFIRMED, Trigger.RENDER_FAILED): (Status.FAILED, (Event.FAILED,)),
    **{(s, Trigger.FAIL): (Status.FAILED, (Event.FAILED,)) for s in _ANY_LIVE},
    **{(s, Trigger.CANCEL): (Status.CANCELLED, (Event.CANCELLED,)) for s in _ANY_LIVE},
}


class IllegalTransition(Exception):
    def __init__(self, status: Status, trigger: Trigger) -> None:
        super().__init__(f"cannot {trigger.value} a generation that is {status.value}")
        self.status = status
        self.trigger = trigger


@dataclass(frozen=True)
class Decision:
    status: Status
    events: tuple[Event, ...]

    def changed(self, before: Status) -> bool:
        return self.status != before


def decide(status: Status, trigger: Trigger) -> Decision:
    """The new status and the events to announce, or `IllegalTransition`."""
    try:
        to, events = TRANSITIONS[(status, trigger)]
    except KeyError:
        raise IllegalTransition(status, trigger) from None
    return Decision(to, events)


def allowed(status: Status, trigger: Trigger) -> bool:
    return (status, trigger) in TRANSITIONS
