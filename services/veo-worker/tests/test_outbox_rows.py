"""The job steps write their reports' outbox rows themselves (plain asyncpg, `jobs.py`): the
markers they store must be the ones `shared.outbox`'s relay reads and strips."""

from __future__ import annotations

from veo_worker import jobs

from shared import outbox


def test_the_job_steps_mark_rows_as_the_relay_expects() -> None:
    assert jobs._HANDED_HEADER == outbox._HANDED
    assert jobs._USER_HEADER == outbox._USER
