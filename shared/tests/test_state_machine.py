"""The transition table, tested as a table, and every transition on its own."""

from __future__ import annotations

import pytest
from shared.state_machine import (
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    Event,
    IllegalTransition,
    Status,
    Trigger,
    decide,
)


def test_seven_statuses_as_the_contract_names_them() -> None:
    assert [s.value for s in Status] == [
        "pending_clarification",
        "pending_confirmation",
        "confirmed",
        "processing",
        "completed",
        "failed",
        "cancelled",
    ]


def test_one_start_state_with_no_way_back_into_it() -> None:
    assert INITIAL is Status.PENDING_CLARIFICATION
    entered = {to for (frm, _), (to, _) in TRANSITIONS.items() if frm != to}
    assert INITIAL not in entered


def test_terminal_states_have_no_exits() -> None:
    assert {frm for (frm, _) in TRANSITIONS} & TERMINAL == set()
    assert {Status.COMPLETED, Status.FAILED, Status.CANCELLED} == TERMINAL


def test_every_state_reachable_from_the_start() -> None:
    seen, frontier = {INITIAL}, [INITIAL]
    while frontier:
        here = frontier.pop()
        for (frm, _), (to, _) in TRANSITIONS.items():
            if frm == here and to not in seen:
                seen.add(to)
                frontier.append(to)
    assert seen == set(Status)


def test_every_live_state_can_fail_and_be_cancelled() -> None:
    for status in set(Status) - TERMINAL:
        assert decide(status, Trigger.CANCEL).status is Status.CANCELLED
        assert decide(status, Trigger.FAIL).status is Status.FAILED


def test_every_transition_announces_an_event() -> None:
    for (frm, trigger), (_, events) in TRANSITIONS.items():
        assert events, (frm, trigger)
        assert all(isinstance(e, Event) for e in events)


EXPECTED = [
    (
        Status.PENDING_CLARIFICATION,
        Trigger.QUESTIONS_ASKED,
        Status.PENDING_CLARIFICATION,
        Event.CLARIFICATION_REQUESTED,
    ),
    (
        Status.PENDING_CLARIFICATION,
        Trigger.SPEC_READY,
        Status.PENDING_CONFIRMATION,
        Event.AWAITING_CONFIRMATION,
    ),
    (Status.PENDING_CLARIFICATION, Trigger.AUTO_CONFIRMED, Status.CONFIRMED, Event.CONFIRMED),
    (Status.PENDING_CONFIRMATION, Trigger.CONFIRM, Status.CONFIRMED, Event.CONFIRMED),
    (Status.CONFIRMED, Trigger.RENDER_STARTED, Status.PROCESSING, Event.PROCESSING),
    (Status.CONFIRMED, Trigger.RENDER_FAILED, Status.FAILED, Event.FAILED),
    (Status.PROCESSING, Trigger.PROGRESS, Status.PROCESSING, Event.PROGRESS),
    (Status.PROCESSING, Trigger.RENDER_SUCCEEDED, Status.COMPLETED, Event.COMPLETED),
    (Status.PROCESSING, Trigger.RENDER_FAILED, Status.FAILED, Event.FAILED),
    *[(s, Trigger.FAIL, Status.FAILED, Event.FAILED) for s in set(Status) - TERMINAL],
    *[(s, Trigger.CANCEL, Status.CANCELLED, Event.CANCELLED) for s in set(Status) - TERMINAL],
]


@pytest.mark.parametrize(("start", "trigger", "end", "event"), EXPECTED)
def test_each_transition(start: Status, trigger: Trigger, end: Status, event: Event) -> None:
    decision = decide(start, trigger)
    assert decision.status is end
    assert decision.events == (event,)


def test_the_expected_list_covers_the_whole_table() -> None:
    assert {(s, t) for s, t, _, _ in EXPECTED} == set(TRANSITIONS)


ILLEGAL = [(s, t) for s in Status for t in Trigger if (s, t) not in TRANSITIONS]


@pytest.mark.parametrize(("status", "trigger"), ILLEGAL)
def test_everything_else_is_refused(status: Status, trigger: Trigger) -> None:
    with pytest.raises(IllegalTransition):
        decide(status, trigger)
