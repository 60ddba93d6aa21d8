"""Per-endpoint lanes: a bounded number in flight, a bounded queue, refusal beyond it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from notifier.lanes import Job, Lanes


def job(target: str) -> Job:
    return Job(
        uuid.uuid4(), 1, target, "http://x/", "msg_x", "{}", (), None, True, uuid.uuid4(), None,
        None, datetime.now(UTC),
    )  # fmt: skip


async def test_a_full_lane_refuses_and_never_delays_another() -> None:
    release = asyncio.Event()
    running: dict[str, int] = {"slow": 0, "fast": 0}
    peak = {"slow": 0}
    done: list[str] = []
    waits: list[int] = []

    async def run(j: Job) -> None:
        running[j.target] += 1
        peak["slow"] = max(peak["slow"], running["slow"])
        if j.target == "slow":
            await release.wait()
        running[j.target] -= 1
        done.append(j.target)

    lanes = Lanes(2, run, queue_per_lane=3, on_wait=lambda: waits.append(1))
    offered = [lanes.offer(job("slow")) for _ in range(6)]
    assert offered == [True] * 5 + [False]  # two in flight, three waiting, the sixth refused
    assert not lanes.has_room("slow") and lanes.has_room("fast")
    for _ in range(4):  # the fast lane has its own slots: none of these waits
        assert lanes.offer(job("fast"))
        await asyncio.sleep(0)
    for _ in range(50):
        await asyncio.sleep(0)
    assert done == ["fast"] * 4 and lanes.in_flight("slow") == 2
    release.set()
    for _ in range(50):
        await asyncio.sleep(0)
    assert done.count("slow") == 5 and peak["slow"] == 2
    assert len(waits) == 4  # three queued and one refused behind the slow lane's two
    assert lanes.in_flight("slow") == 0 and lanes.has_room("slow")
