"""`make bench`: every benchmark of issue 9 in one run, each figure beside a baseline measured in
the same run on the same machine. Writes bench/results/*.json and the table in bench/README.md.

    uv run python -m bench.run [--quick] [--veo-wait auto|run] [--skip PHASE] [--fsync off]

Phases (each bounded in time; one that fails is reported and the others go on):
chain baseline → end to end (concurrency sweep, half-rate latency) → profile → status reads →
webhooks → live streams → scaling (two replicas) → waiting on Veo (bench/veo_wait.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from bench import report
from bench.common import (
    RESULTS,
    SCRATCH,
    Row,
    machine,
    rows_json,
    write_json,
)
from bench.context import Run, say
from bench.e2e import Pipeline, settle
from bench.phases.end_to_end import (
    IDLE_RATE,
    bottlenecks,
    chain,
    chain_again,
    end_to_end,
    scaling,
)
from bench.phases.profiling import profile
from bench.phases.reads import reads
from bench.phases.streams import streams
from bench.phases.veo import veo_wait
from bench.phases.webhooks import webhooks
from bench.receiver import FastReceiver
from bench.stack import close_servers, close_stack, open_stack, start_servers

# -- the run ----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    machine_start = machine()
    say(f"machine: {machine_start}")
    receiver = FastReceiver()
    pipeline = Pipeline(receiver)
    await receiver.start()
    rabbit, postgres = await start_servers(fsync=args.fsync == "on")
    rows: list[Row] = []
    unmeasured: list[str] = []
    notes: list[str] = []
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        stack = await open_stack(rabbit, postgres, receiver.url)
        say(f"stack up in {time.monotonic() - began:.0f} s; logs in {stack.logs}")
        try:
            # Many users, as in life: each polls and generates within its own rate limit.
            users = await asyncio.gather(*(stack.new_user(f"bench-{i}") for i in range(USERS)))
            user_id, key = users[0]
            await pipeline.open([k for _, k in users], stack.api_urls())
            run = Run(
                args,
                stack,
                pipeline,
                receiver,
                user_id,
                key,
                started=began,
                rows=rows,
                results=results,
                unmeasured=unmeasured,
                notes=notes,
            )
            phases: list[tuple[str, Callable[[Run], Awaitable[None]]]] = [
                ("chain", chain),
                ("e2e", end_to_end),
                ("profile", profile),
                ("reads", reads),
                ("webhooks", webhooks),
                ("streams", streams),
                ("scaling", scaling),
                ("chain_again", chain_again),
            ]
            for name, phase in phases:
                if name in args.skip:
                    unmeasured.append(f"{name}: skipped (--skip)")
                    continue
                t0 = time.monotonic()
                try:
                    await phase(run)
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    unmeasured.append(
                        f"{name}: failed this run ({type(exc).__name__}: {str(exc)[:200]})"
                    )
                    traceback.print_exc()
                    await settle(rabbit.url, within=20, database=stack.env["DATABASE_URL"])
                say(f"{name} took {time.monotonic() - t0:.0f} s (total {run.elapsed():.0f} s)")
        finally:
            await pipeline.close()
            await close_stack(stack)
    finally:
        await close_servers(rabbit, postgres)
        await receiver.stop()
    if "veo_wait" not in args.skip:
        t0 = time.monotonic()
        await veo_wait(args.veo_wait, rows, unmeasured)
        say(f"veo_wait took {time.monotonic() - t0:.0f} s")
    summary = {
        "machine_at_start": machine_start,
        "machine_at_end": machine(),
        "wall_seconds": round(time.monotonic() - began, 1),
        "postgres_fsync": args.fsync,
        "rows": rows_json(rows),
        "unmeasured": unmeasured,
        "notes": notes,
        "errors": errors,
    }
    write_json("summary", summary)
    if results.get("phase_profiles"):
        write_json("phase_profiles", results["phase_profiles"])
    if not SCRATCH:
        write_readme(summary, rows, results)
    say(f"done in {summary['wall_seconds']} s; bench/results/summary.json, bench/README.md")
    print(report.table(rows))
    return 0


USERS = 50


def write_readme(summary: dict[str, Any], rows: list[Row], results: dict[str, Any]) -> None:
    start, end = summary["machine_at_start"], summary["machine_at_end"]
    parts = [
        f"Run of {start['at']} on {start['cpus']} cores / {start['memory_gb']} GB, Python "
        f"{start['python']}, {summary['wall_seconds']:.0f} s; load average "
        f"{start['loadavg'][0]} at the start, {end['loadavg'][0]} at the end (other work "
        f"shares the machine: read the ratios). PostgreSQL fsync {summary['postgres_fsync']}.",
        "",
        report.table(rows),
        "",
    ]
    scaling = results.get("scaling") or {}
    sweep = results.get("e2e", {}).get("sweep") or []
    if sweep:
        series = {"1 replica each": sweep}
        if scaling.get("two_replicas"):
            series["2 replicas each"] = scaling["two_replicas"]
        report.curve(series, results.get("e2e", {}).get("predicted_by_littles_law"))
        parts += [
            "![latency and throughput against generations in flight](results/latency_curve.png)",
            "",
            "Where the bottleneck sits at each point (CPU cores per process over the measuring "
            "window, and the work queue holding the most messages on average):",
            "",
            *[f"- {line}" for line in bottlenecks(sweep)],
            *[f"- two replicas, {line}" for line in bottlenecks(scaling.get("two_replicas", []))],
            "",
        ]
    steps = results.get("e2e", {}).get("timeline_half_rate")
    if steps:
        parts += [
            "### Where a generation's time goes (half rate, medians)",
            "",
            report.timeline_section(steps),
            "",
        ]
    idle_steps = results.get("e2e", {}).get("timeline_idle_rate")
    if idle_steps:
        parts += [
            f"### The same at a trickle ({IDLE_RATE:g}/s, each generation alone: the path's floor)",
            "",
            report.timeline_section(idle_steps),
            "",
        ]
    parts += [
        "### Profile of the end-to-end run",
        "",
        report.profile_section(results.get("profile", {})),
        "",
    ]
    if results.get("phase_profiles"):
        parts += [
            "Other phases, the process under load (GIL samples):",
            "",
            report.phase_profiles_section(results["phase_profiles"]),
            "",
        ]
    if summary["notes"]:
        parts += ["### Notes", "", *[f"- {n}" for n in summary["notes"]], ""]
    parts += ["### Not measured this run", ""]
    parts += [f"- {u}" for u in summary["unmeasured"]] or ["- nothing: every figure ran"]
    report.update_readme("\n".join(parts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer streams")
    parser.add_argument(
        "--veo-wait",
        choices=("auto", "run"),
        default="auto",
        help="auto: include bench/results/veo_wait.json if there, else run bench/veo_wait.py",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="a phase to leave out: chain, e2e, profile, reads, webhooks, "
        "streams, scaling, veo_wait",
    )
    parser.add_argument("--fsync", choices=("on", "off"), default="on")
    parser.add_argument(
        "--sweep",
        type=int,
        action="append",
        default=[],
        help="generations in flight of one end-to-end point (repeatable; default: 10, 30, 100, "
        "300, 1000)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
