"""Waiting between attempts: exponential backoff with jitter, never shorter than the
provider's own hint (`Retry-After`, RetryInfo)."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float) -> float:
    """base·2^(attempt-1), capped, with "equal jitter": half fixed, half random, so clients
    that failed together do not retry together."""
    delay = min(cap, base * 2 ** max(attempt - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)


def retry_delay(attempt: int, base: float, cap: float, hint: float | None) -> float:
    delay = backoff(attempt, base, cap)
    return max(delay, hint) if hint else delay


def poll_delay(polls: int, base: float, cap: float) -> float:
    """The wait before the next poll: base·1.5^polls, capped, ±20 % so that operations
    submitted together spread out."""
    delay = min(cap, base * 1.5**polls)
    return delay * random.uniform(0.8, 1.2)
