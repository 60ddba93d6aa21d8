"""Phases 1 and 6: the bare FastStream chain, the pipeline end to end (sweep and half-rate
latency), and the same with two replicas of each service."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.common import Row, write_json
from bench.context import Run, python_json, say
from bench.e2e import half_rate, measure_point, settle
from bench.load import LoadResult
from bench.timeline import breakdown, duplicates
from tests.support import SERVICES

# -- 1. the baseline chain and the pipeline end to end ---------------------------------------


async def chain(run: Run) -> None:
    window = str(run.window - 2 if run.args.quick else 5)
    amqp = run.stack.rabbit.url
    bare = await python_json(
        "-m", "bench.baseline_chain", "--amqp", amqp, "--window", window, limit=120
    )
    durable = await python_json(
        "-m",
        "bench.baseline_chain",
        "--amqp",
        amqp,
        "--window",
        window,
        "--durable",
        limit=120,
    )
    run.results["chain"] = {"bare": bare, "durable": durable}
    write_json("chain", run.results["chain"])
    say(
        f"chain: {bare['closed_loop']['rate_per_s']} chains/s bare, "
        f"{durable['closed_loop']['rate_per_s']} durable"
    )


async def chain_again(run: Run) -> None:
    """The bare chain once more at the end of the run: how far the machine drifted meanwhile."""
    again = await python_json(
        "-m", "bench.baseline_chain", "--amqp", run.stack.rabbit.url, "--window", "4", limit=120
    )
    run.results.setdefault("chain", {})["bare_at_end"] = again
    write_json("chain", run.results["chain"])
    first = run.results["chain"].get("bare", {}).get("closed_loop", {}).get("rate_per_s")
    if first is None or again["closed_loop"]["rate_per_s"] > first:
        rebase(run, again)
    run.notes.append(
        f"The bare chain measured again at the end of the run: "
        f"{again['closed_loop']['rate_per_s']} chains/s (p50 at half rate "
        f"{again['open_loop_half_rate']['latency']['p50_ms']} ms), against {first} chains/s at "
        "the start: the machine's drift during the run. The end-to-end rows compare with the "
        "better of the two."
    )


def rebase(run: Run, chain_run: dict[str, Any]) -> None:
    """Compare the pipeline with the better of the chain's two runs (the machine had more to
    give then): the stricter ratio."""
    values = {
        CHAIN_RATE: chain_run["closed_loop"]["rate_per_s"],
        CHAIN_P50: chain_run["open_loop_half_rate"]["latency"]["p50_ms"],
        CHAIN_P99: chain_run["open_loop_half_rate"]["latency"]["p99_ms"],
    }
    for row in run.rows:
        key = row.baseline
        if key in values:
            row.rebase(f"{key}, the better of its two runs", values[key])
            if key == CHAIN_RATE and row.ratio is not None:
                row.met = row.ratio >= 0.35


CHAIN_RATE = "bare FastStream 6-hop chain"
CHAIN_P50 = "chain p50 at its half rate"
CHAIN_P99 = "chain p99 at its half rate"
SWEEP = (10, 30, 100, 300, 1000)
IDLE_RATE = 2.0  # generations/s: a trickle, each alone in the pipeline


async def end_to_end(run: Run) -> None:
    pipeline = run.pipeline
    for _ in range(5):  # the fake renders its MP4 once; connections and caches warm up
        await pipeline.one()
    points: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    # A closed loop at C in flight needs about C / rate seconds to turn over once (warm-up),
    # as long again to drain; points that would take longer than this are left out, and their
    # latency is what Little's law says it must be once throughput is flat: in flight / rate.
    predicted: list[dict[str, Any]] = []
    limit = run.sweep_turnover_limit
    for concurrency in run.args.sweep or SWEEP:
        if best is not None and best["rate_per_s"] > 0:
            turnover = concurrency / best["rate_per_s"]
            if turnover > limit:
                predicted.append({"concurrency": concurrency, "p50_ms": round(1000 * turnover, 1)})
                run.unmeasured.append(
                    f"end to end at {concurrency} in flight: at {best['rate_per_s']:.1f}/s one "
                    f"turnover takes ~{turnover:.0f} s, over this run's {limit:.0f} s per point "
                    f"(Little's law: p50 ≈ {turnover:.0f} s there)"
                )
                continue
        # Each point ends when the system has finished what the load left in it (the worker's
        # jobs and the unpublished outbox rows included), so the next point starts idle.
        point = await measure_point(
            pipeline,
            run.stack.rabbit.url,
            run.pids,
            concurrency,
            run.window,
            max_warmup=1.3 * limit,
            database=run.database,
        )
        data = point.as_dict()
        points.append(data)
        drained = data["drained"]
        say(
            f"e2e C={concurrency}: {data['rate_per_s']}/s p50 {data['latency']['p50_ms']} ms "
            f"p99 {data['latency']['p99_ms']} ms, failed {data['failed']}, warm-up "
            f"{data['warmup_s']} s, drained {drained['waited_s']} s after the load "
            f"(left: {drained['at_start']})"
        )
        if not drained["idle"]:
            run.notes.append(
                f"end to end at {concurrency} in flight: the system was still busy "
                f"{drained['waited_s']} s after the load stopped (left then: "
                f"{drained['at_start']}); the next point started on it"
            )
        if best is None or data["rate_per_s"] > best["rate_per_s"]:
            best = data
    assert best is not None
    rate = best["rate_per_s"]
    half, steps = await _open_loop(run, max(0.5, rate / 2), duration=2 * run.window)
    # The same at a trickle: what the path itself costs, with no queueing to blame.
    idle, idle_steps = await _open_loop(run, IDLE_RATE, duration=1.5 * run.window)
    twice = await asyncio.to_thread(duplicates, run.stack.logs)
    run.notes.append(
        f"Messages delivered twice during the end-to-end phase (inboxes' `Duplicate ignored`, "
        f"all consumers): {sum(twice.values())} {twice or ''}; before the relay published "
        "handed-over rows under their locks, ~20,000 in a run with 1,000 in flight."
    )
    run.results["e2e"] = {
        "provider": "veo (fake, done at the first poll; 1280x720 4 s MP4)",
        "webhooks_per_generation": dict(pipeline.webhooks),
        "sweep": points,
        "predicted_by_littles_law": predicted,
        "best": best,
        "half_rate": half.as_dict(),
        "timeline_half_rate": steps,
        "idle_rate": idle.as_dict(),
        "timeline_idle_rate": idle_steps,
        "duplicates_ignored": twice,
    }
    write_json("e2e", run.results["e2e"])
    say(f"e2e half rate {half.rate:.1f}/s: {half.as_dict()['latency']}")
    say(f"e2e at {IDLE_RATE:g}/s: {idle.as_dict()['latency']}")

    chain_data = run.results.get("chain", {}).get("bare")
    chain_rate = chain_data["closed_loop"]["rate_per_s"] if chain_data else None
    chain_lat = chain_data["open_loop_half_rate"]["latency"] if chain_data else {}
    lat = half.as_dict()["latency"]
    ratio = rate / chain_rate if chain_rate else None
    run.rows += [
        Row(
            "1 end to end",
            f"generations/s (best of closed-loop sweep, at {best['concurrency']} in flight)",
            rate,
            "/s",
            CHAIN_RATE,
            chain_rate,
            "≥ 0.35× chain",
            None if ratio is None else ratio >= 0.35,
        ),
        Row(
            "1 end to end",
            f"p50 POST → completed webhook at half rate ({half.rate:.1f}/s)",
            lat["p50_ms"],
            "ms",
            CHAIN_P50,
            chain_lat.get("p50_ms"),
            "≤ 50 ms",
            None if lat["p50_ms"] is None else lat["p50_ms"] <= 50,
        ),
        Row(
            "1 end to end",
            "p99 POST → completed webhook at half rate",
            lat["p99_ms"],
            "ms",
            CHAIN_P99,
            chain_lat.get("p99_ms"),
            "≤ 250 ms",
            None if lat["p99_ms"] is None else lat["p99_ms"] <= 250,
        ),
        Row(
            "1 end to end",
            f"p50 POST → completed webhook at {IDLE_RATE:g}/s (the path's own floor, no queueing)",
            idle.as_dict()["latency"]["p50_ms"],
            "ms",
            CHAIN_P50,
            chain_lat.get("p50_ms"),
            note="no target of its own: the half-rate p50 above is this plus queueing",
        ),
        Row(
            "1 end to end",
            "CPU per generation, all services + brokers",
            best["core_ms_per_generation_total"],
            "core-ms",
            target="≤ 13.5 core-ms (tuned Celery chain, DESIGN.md, not this run)",
            met=best["core_ms_per_generation_total"] <= 13.5,
        ),
    ]


async def _open_loop(
    run: Run, rate: float, duration: float
) -> tuple[LoadResult, list[dict[str, Any]]]:
    """Generations started at `rate` for `duration` s, the system then settled; with where
    their time went (medians per step, from the services' logs)."""
    pipeline = run.pipeline
    before = set(pipeline.posted_at)
    result = await half_rate(pipeline, rate, duration=duration)
    await settle(run.stack.rabbit.url, database=run.database)
    posted = {g: t for g, t in pipeline.posted_at.items() if g not in before}
    steps = await asyncio.to_thread(breakdown, run.stack.logs, posted, pipeline.arrived_at)
    return result, steps


# -- 6. scaling ----------------------------------------------------------------------------------


def knee(run: Run) -> dict[str, Any]:
    """The knee of the one-replica sweep: the fewest in flight within 10% of its best rate (a
    higher count adds only waiting), among the points whose turnover fits in `turnover_limit`
    (the profile and the two-replica runs are sized by it; 1,000 in flight does not fit)."""
    sweep = run.results["e2e"]["sweep"]
    fitting = [
        p for p in sweep if p["concurrency"] / max(p["rate_per_s"], 0.1) <= run.turnover_limit
    ] or [run.results["e2e"]["best"]]
    top = max(p["rate_per_s"] for p in fitting)
    return min((p for p in fitting if p["rate_per_s"] >= 0.9 * top), key=lambda p: p["concurrency"])


async def scaling(run: Run) -> None:
    keys = [run.stack.start(service, 2) for service in SERVICES]
    try:
        await asyncio.gather(*(run.stack.ready(key) for key in keys))
    except Exception:
        await asyncio.gather(*(run.stack.stop(key) for key in keys if key in run.stack.procs))
        raise
    run.pipeline.set_apis(run.stack.api_urls())
    points = []
    one = knee(run)
    concurrencies = sorted({one["concurrency"], min(1000, one["concurrency"] * 3)})
    for concurrency in concurrencies:
        # The second point only when it is short: this phase comes last, near the 10 minutes.
        limit = run.turnover_limit if concurrency == one["concurrency"] else 20.0
        if concurrency / max(one["rate_per_s"], 0.1) > limit:
            run.unmeasured.append(
                f"two replicas at {concurrency} in flight: one turnover would take over "
                f"{limit:.0f} s"
            )
            continue
        point = await measure_point(
            run.pipeline,
            run.stack.rabbit.url,
            run.pids,
            concurrency,
            run.window,
            max_warmup=1.3 * run.turnover_limit,
            database=run.database,
        )
        points.append(point.as_dict())
        say(f"2 replicas C={concurrency}: {point.load.rate:.1f}/s")
    if not points:
        raise RuntimeError("two replicas: no point fitted in this phase's time")
    best_two = max(points, key=lambda p: p["rate_per_s"])
    run.results["scaling"] = {"one_replica": run.results["e2e"]["sweep"], "two_replicas": points}
    write_json("scaling", run.results["scaling"])
    run.rows.append(
        Row(
            "6 scaling",
            f"generations/s with two replicas of each service (at "
            f"{best_two['concurrency']} in flight)",
            best_two["rate_per_s"],
            "/s",
            "one replica each",
            one["rate_per_s"],
            "> 1× (more replicas, more throughput)",
            best_two["rate_per_s"] > one["rate_per_s"],
        )
    )
    sweep = run.results["e2e"]["sweep"]
    lo, hi = sweep[0], sweep[-1]
    run.rows.append(
        Row(
            "6 scaling",
            f"p50 latency growth from {lo['concurrency']} to {hi['concurrency']} "
            "in flight (1 replica)",
            hi["latency"]["p50_ms"],
            "ms",
            f"p50 at {lo['concurrency']} in flight",
            lo["latency"]["p50_ms"],
            "curve (bench/results/latency_curve.png)",
            None,
        )
    )


def bottlenecks(points: list[dict[str, Any]]) -> list[str]:
    """For each point: the busiest process and the deepest queue."""
    out = []
    for p in points:
        cores = {
            k: v
            for k, v in p.get("cpu_cores", {}).items()
            if k not in ("driver", "other processes")
        }
        if not cores:
            continue
        busiest = max(cores, key=lambda k: cores[k])
        queues = p.get("queue_depth", {})
        deepest = max(queues, key=lambda q: queues[q]["mean"]) if queues else None
        queue = (
            f"deepest queue `{deepest}` (mean {queues[deepest]['mean']})"
            if deepest and queues[deepest]["mean"] > 0
            else "no queue backed up"
        )
        out.append(
            f"{p['concurrency']} in flight: {p['rate_per_s']}/s, p50 "
            f"{p['latency']['p50_ms']} ms; busiest `{busiest}` {cores[busiest]} cores of "
            f"{sum(cores.values()):.2f} used by the system "
            f"({p['cpu_cores'].get('other processes', '?')} by other processes); {queue}"
        )
    return out
