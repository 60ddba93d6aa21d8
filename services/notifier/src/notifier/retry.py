"""When to try a webhook again: pure rules over one attempt's outcome.

`WEBHOOK_RETRY_SCHEDULE` lists the waits after the first attempt; each is jittered ±20% so
receivers that failed together do not get retried together, and a larger `Retry-After` wins.
Waits are served by the delay-queue ladder in `shared.topology`: `rung()` picks the longest
rung that does not overshoot, and a message that wakes early is parked again for the rest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from shared.topology import DELAY_QUEUES, DelayQueue

JITTER = 0.2
MAX_RETRY_AFTER_SECONDS = 86_400.0
# A message this close to its due time is attempted instead of parked again.
DUE_TOLERANCE_SECONDS = 0.5


@dataclass(frozen=True)
class Outcome:
    """One HTTP attempt as the receiver answered it (or did not)."""

    status_code: int | None
    latency_ms: int
    excerpt: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Next(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"  # the schedule is used up
    GONE = "gone"  # 410: the receiver asked us to stop for good


@dataclass(frozen=True)
class Verdict:
    next: Next
    wait_seconds: float | None = None


def judge(
    outcome: Outcome, attempt: int, schedule: list[int], rng: random.Random | None = None
) -> Verdict:
    """What follows attempt number `attempt` (1 is the first) that ended in `outcome`."""
    if outcome.ok:
        return Verdict(Next.SUCCEEDED)
    if outcome.status_code == 410:
        return Verdict(Next.GONE)
    if attempt > len(schedule):
        return Verdict(Next.FAILED)
    wait = jittered(schedule[attempt - 1], rng)
    if outcome.retry_after is not None:
        # Plus the tolerance, so a slightly early wake-up still never calls before it.
        asked = min(outcome.retry_after, MAX_RETRY_AFTER_SECONDS) + DUE_TOLERANCE_SECONDS
        wait = max(wait, asked)
    return Verdict(Next.RETRY, wait)


def jittered(seconds: float, rng: random.Random | None = None) -> float:
    return seconds * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def rung(
    remaining_seconds: float, ladder: tuple[DelayQueue, ...] = DELAY_QUEUES
) -> DelayQueue | None:
    """The delay queue to wait in next, or None when the message is due now."""
    if remaining_seconds <= DUE_TOLERANCE_SECONDS:
        return None
    by_length = sorted(ladder, key=lambda q: q.seconds)
    fitting = [q for q in by_length if q.seconds <= remaining_seconds]
    return fitting[-1] if fitting else by_length[0]
