"""The chaos scenario, small: a generation a second (12 at least) through every fault in turn,
Veo answered by the fake after 5 s, 18 poison messages injected (`make chaos` runs 200 or more,
with a one-minute receiver outage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.chaos import run


@pytest.mark.timeout(900)
async def test_chaos_short(tmp_path: Path) -> None:
    report = await run(12, tmp_path / "chaos", receiver_down_seconds=5, pause=1, settle_seconds=240)
    failed = {k: v for k, v in report.checks.items() if k.startswith("ok_") and v is not True}
    assert not failed, (failed, report.checks, report.faults, f"logs in {tmp_path}")
    assert len(report.faults) == 6
    assert report.checks["poison_injected"] == 18 and report.checks["veo_submissions"] >= 12
