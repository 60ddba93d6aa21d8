"""The pure parts: wording, payload, identities, retry rules, the delay ladder, the SSRF check."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from notifier.ids import event_key, webhook_id
from notifier.messages import ask, compose, failure, usd
from notifier.payload import iso_z, serialise
from notifier.retry import Next, Outcome, judge, parse_retry_after, rung
from notifier.signing import request_headers
from notifier.ssrf import ForbiddenAddress, check_literal, is_forbidden
from shared.db.models import Generation
from shared.messages import LifecycleEvent
from shared.schemas import ErrorCode, ErrorInfo, Question
from shared.state_machine import Event, Status
from standardwebhooks import Webhook

from .conftest import lifecycle

GEN = Generation(
    id=uuid.uuid4(),
    user_id=uuid.uuid4(),
    conversation_id=uuid.uuid4(),
    status="processing",
    prompt="A red fox running through fresh snow at dawn",
    created_at=datetime.now(UTC),
)


def copy(event: LifecycleEvent) -> LifecycleEvent:
    """The same event as another publication would carry it (through JSON)."""
    return LifecycleEvent.model_validate_json(event.model_dump_json())


# --- identities -------------------------------------------------------------------------------


def test_an_event_and_its_republished_copy_share_one_key() -> None:
    event = lifecycle(GEN, Event.CANCELLED, Status.CANCELLED)
    assert event_key(copy(event)) == event_key(event)
    later = lifecycle(GEN, Event.CANCELLED, Status.CANCELLED)
    assert event_key(later) != event_key(event)  # another transition: another key
    assert webhook_id(event_key(event)).startswith("msg_")
    assert len(webhook_id(event_key(event))) <= 64


# --- wording ----------------------------------------------------------------------------------


def test_one_question_is_asked_in_one_sentence() -> None:
    text = ask([Question(id="detail", text="What should we see?")])
    assert text == "Before I make your video, one question: What should we see?"


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("content_policy", "content policy"),
        ("provider_unavailable", "unavailable"),
        ("timeout", "timed out"),
        ("quota_exceeded", "usage limit"),
        ("internal", "went wrong on our side"),
    ],
)
def test_each_failure_is_explained_in_plain_words(code: ErrorCode, words: str) -> None:
    text = failure(ErrorInfo(code=code, message="HTTP 503 from upstream"))
    assert words in text and "HTTP 503" not in text


def test_an_invalid_request_says_what_was_wrong() -> None:
    text = failure(ErrorInfo(code="invalid_request", message="duration must be 4, 6 or 8."))
    assert text == (
        "I couldn't make this video because the request wasn't valid: duration must be 4, 6 or 8."
    )


def test_processing_and_progress_say_nothing_in_the_chat() -> None:
    assert compose(lifecycle(GEN, Event.PROCESSING, Status.PROCESSING)) is None
    assert compose(lifecycle(GEN, Event.PROGRESS, Status.PROCESSING)) is None


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("1.2", "$1.20"), ("0", "$0.00"), ("0.0040", "$0.004"), ("1234.5", "$1,234.50")],
)
def test_costs_read_as_dollars(amount: str, shown: str) -> None:
    assert usd(Decimal(amount)) == shown


def test_a_free_local_render_says_so() -> None:
    event = lifecycle(
        GEN,
        Event.AWAITING_CONFIRMATION,
        Status.PENDING_CONFIRMATION,
        estimated_cost_usd=Decimal("0"),
    )
    reply = compose(event)
    assert reply is not None
    assert "Estimated cost: $0.00 (rendered locally, free)." in reply.content


# --- payload ----------------------------------------------------------------------------------


def test_timestamps_are_written_as_javascript_writes_them() -> None:
    moment = datetime(2026, 1, 1, 12, 0, 5, 123456, tzinfo=UTC)
    assert iso_z(moment) == "2026-01-01T12:00:05.123Z"


def test_the_body_is_compact_json_in_the_seed_s_key_order() -> None:
    body = serialise(lifecycle(GEN, Event.CANCELLED, Status.CANCELLED), None)
    assert body.startswith('{"event":"generation.cancelled","jobId":')
    assert ', "' not in body


# --- signing ----------------------------------------------------------------------------------


def test_several_keys_give_several_signatures_any_of_which_verifies() -> None:
    old, new = "whsec_" + "b2xkLXNlY3JldC1rZXk=", "whsec_" + "bmV3LXNlY3JldC1rZXk="
    body = '{"event":"generation.cancelled"}'
    headers = request_headers("msg_1", body, [old, new], datetime.now(UTC))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers)


# --- retries ----------------------------------------------------------------------------------

SCHEDULE = [5, 300, 1800]


def test_2xx_succeeds_and_410_is_gone() -> None:
    assert judge(Outcome(204, 5), 1, SCHEDULE).next == Next.SUCCEEDED
    assert judge(Outcome(410, 5), 1, SCHEDULE).next == Next.GONE


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_failures_wait_their_step_with_jitter(attempt: int) -> None:
    rng = random.Random(attempt)
    step = SCHEDULE[attempt - 1]
    waits = [judge(Outcome(500, 5), attempt, SCHEDULE, rng).wait_seconds for _ in range(200)]
    assert all(w is not None and step * 0.8 <= w <= step * 1.2 for w in waits)
    assert len({round(w or 0, 3) for w in waits}) > 100  # jitter, not one fixed value


def test_after_the_last_step_the_delivery_fails() -> None:
    assert judge(Outcome(None, 5, error="refused"), 4, SCHEDULE).next == Next.FAILED


def test_a_longer_retry_after_wins_a_shorter_one_does_not() -> None:
    longer = judge(Outcome(503, 5, retry_after=60), 1, SCHEDULE)
    assert longer.wait_seconds is not None and longer.wait_seconds >= 60
    shorter = judge(Outcome(503, 5, retry_after=1), 2, SCHEDULE)
    assert shorter.wait_seconds is not None and shorter.wait_seconds >= 240
    absurd = judge(Outcome(503, 5, retry_after=10**9), 1, SCHEDULE)
    assert absurd.wait_seconds is not None and absurd.wait_seconds <= 86_401


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", now) == 120
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("remaining", "queue"),
    [
        (0.2, None),
        (0.8, "notifier.deliveries.wait.1s"),
        (3.9, "notifier.deliveries.wait.1s"),
        (5.5, "notifier.deliveries.wait.4s"),
        (300, "notifier.deliveries.wait.256s"),
        (36000, "notifier.deliveries.wait.16384s"),
    ],
)
def test_a_wait_takes_the_longest_rung_that_does_not_overshoot(
    remaining: float, queue: str | None
) -> None:
    chosen = rung(remaining)
    assert (chosen.name if chosen else None) == queue


def test_the_longest_schedule_step_is_a_handful_of_hops() -> None:
    remaining, hops = 36000.0 * 1.2, 0
    while (step := rung(remaining)) is not None:
        remaining -= step.seconds
        hops += 1
    assert hops <= 12 and remaining <= 0.5


# --- SSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "::ffff:127.0.0.1",
        "fd00::1",
        "fe80::1",
        "224.0.0.1",
    ],
)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden(address)


def test_literals_are_checked_before_connecting_and_names_are_left_to_the_resolver() -> None:
    with pytest.raises(ForbiddenAddress):
        check_literal("[::ffff:127.0.0.1]")
    check_literal("example.com")
    check_literal("93.184.216.34")


def test_an_event_without_a_trace_gets_one_traceparent_for_all_its_deliveries() -> None:
    import re

    from notifier.ids import traceparent_for

    event = lifecycle(GEN, Event.CANCELLED, Status.CANCELLED)
    value = traceparent_for(event_key(event))
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", value)
    assert traceparent_for(event_key(copy(event))) == value
