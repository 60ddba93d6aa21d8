"""The profile of the end-to-end run: py-spy on every service during a closed loop."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from bench import profile as profiler
from bench.common import RESULTS, CpuMeter, write_json
from bench.context import Run, say
from bench.e2e import settle
from bench.load import closed_loop
from bench.phases.end_to_end import knee
from tests.support import SERVICES


async def profile(run: Run) -> None:
    if profiler.py_spy() is None:
        run.results["profile"] = {"note": "py-spy not installed"}
        run.unmeasured.append("profile: py-spy not installed")
        return
    # At the sweep's knee, not its best point: the best may be 1,000 in flight, whose turnover
    # (about a minute) this phase's warm-up and drain do not cover; a profile taken there would
    # leave hundreds of generations running into the phases that follow.
    best = knee(run)
    seconds = 8 if run.args.quick else 12
    folder = RESULTS / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    pids = run.stack.pids()
    recorders: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
    meter = CpuMeter({s: pids[s] for s in SERVICES})
    modes = {"gil": True, "active": False}

    def on_window(opening: bool) -> None:
        if opening:
            meter.start()
            for service in SERVICES:
                for mode, gil in modes.items():
                    path = folder / f"{service}.{mode}.txt"
                    recorders[service, mode] = profiler.record(
                        pids[service], seconds, path, gil=gil
                    )

    load = await closed_loop(
        run.pipeline.one,
        best["concurrency"],
        window=seconds + 1.5,
        max_warmup=25,
        drain=40,
        on_window=on_window,
    )
    spent = meter.stop()
    cores = meter.cores(spent)
    services: dict[str, Any] = {s: {"cores": cores[s]} for s in SERVICES}
    for (service, mode), recorder in recorders.items():
        _, err = await asyncio.to_thread(recorder.communicate)
        path = folder / f"{service}.{mode}.txt"
        if recorder.returncode != 0 or not path.exists():
            services[service][mode] = {"error": err.decode()[-300:]}
        else:
            services[service][mode] = profiler.analyse(path)
    run.results["profile"] = {
        "seconds": seconds,
        "concurrency": best["concurrency"],
        "rate_while_profiled": round(load.rate, 2),
        "other_processes_cores": cores["other processes"],
        "services": services,
        "raw": "bench/results/profiles/<service>.<gil|active>.txt (py-spy raw: stack count)",
    }
    write_json("profile", run.results["profile"])
    await settle(run.stack.rabbit.url, within=60, database=run.database)
    say("profile written")
