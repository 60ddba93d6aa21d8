"""Phase 4: waiting on Veo, from bench/veo_wait.py (owned by the Veo engineer)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bench.common import REPO, RESULTS, Row

# -- 4. waiting on Veo -----------------------------------------------------------------------------


async def veo_wait(mode: str, rows: list[Row], unmeasured: list[str]) -> None:
    """bench/veo_wait.py (its own engineer's: one worker, its own database and vhost on the
    shared servers) writes bench/results/veo_wait.json; `auto` includes that file when it is
    there (`make bench-veo` refreshes it) and runs the script when it is not."""
    script = REPO / "bench" / "veo_wait.py"
    out = RESULTS / "veo_wait.json"
    if not script.exists():
        unmeasured.append("waiting on Veo: bench/veo_wait.py is not there yet")
        return
    if mode == "run" or (mode == "auto" and not out.exists()):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            *("--operations", "5000", "--seconds", "30", "--timeout", "240"),
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 300)
            if proc.returncode != 0:
                unmeasured.append(f"waiting on Veo: veo_wait.py failed: {err.decode()[-300:]}")
        except TimeoutError:
            proc.kill()
            await proc.wait()
            unmeasured.append("waiting on Veo: veo_wait.py ran over 300 s")
    # The target is 5,000 at once: an older wait-only run at that size (`--cancel-after`, long
    # operations: the worker submitted too slowly then to hold 5,000 of 30 s) is read only when
    # the run at hand held fewer.
    at_target = RESULTS / "veo_wait_5000_wait_only.json"
    if mode != "run" and at_target.exists() and _held(at_target) > _held(out):
        out = at_target
    if not out.exists():
        return
    data = json.loads(out.read_text())
    age = (time.time() - out.stat().st_mtime) / 60
    source = f"{out.name}, {age:.0f} min old" if age > 15 else None
    held = data.get("max_pending_at_once")
    waiting_rss = data.get("rss_while_waiting_mb")
    rss = waiting_rss or data.get("peak_rss_mb")
    rss_label = (
        "worker RSS while waiting"
        if waiting_rss
        else "worker peak RSS (that run had no moment of waiting only: it includes downloads)"
    )
    idle = data.get("idle_rss_mb")
    waiting_s = (data.get("first_done_after_s") or 0) - (data.get("all_submitted_after_s") or 0)
    cpu = data.get("cpu_waiting_s")
    per_op_min = (cpu / (held * waiting_s / 60)) * 1000 if cpu and held and waiting_s > 0 else None
    if per_op_min is None:
        unmeasured.append(
            "waiting on Veo, CPU per operation-minute: the veo_wait.json at hand has no "
            "window where every operation was submitted and none done yet"
        )
    extrapolated = None
    if rss and idle and held:
        extrapolated = idle + (rss - idle) * 5000 / held
    rows += [
        Row(
            "4 waiting on Veo",
            f"operations in flight in one worker ({data.get('operations')} submitted, "
            f"{data.get('operation_seconds')} s each)",
            held,
            "",
            target="5,000 at once",
            met=None if held is None else held >= 5000,
            note=source,
        ),
        Row(
            "4 waiting on Veo",
            rss_label,
            rss,
            "MB",
            "the idle worker",
            idle,
            "< 400 MB at 5,000",
            None if extrapolated is None else extrapolated < 400,
            note=None
            if extrapolated is None
            else f"~{extrapolated:,.0f} MB at 5,000 by linear extrapolation",
        ),
        Row(
            "4 waiting on Veo",
            "CPU per operation-minute of waiting",
            None if per_op_min is None else round(per_op_min, 1),
            "core-ms",
            target="written down",
            met=None,
            note=None
            if data.get("cpu_ms_per_operation") is None
            else f"{data['cpu_ms_per_operation']} core-ms per operation in all, download and "
            "thumbnail included",
        ),
    ]


def _held(path: Path) -> int:
    """Operations a veo_wait result held pending at once (0 for none, or no file)."""
    if not path.exists():
        return 0
    return int(json.loads(path.read_text()).get("max_pending_at_once") or 0)
