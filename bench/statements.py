"""Statements and transactions per generation, counted by PostgreSQL itself (a count, not a
timing: the machine's speed cannot move it).

    uv run --frozen python -m bench.statements [--generations 120] [--rate 8]

The bench's private servers (`bench.stack`), PostgreSQL with `pg_stat_statements` loaded; the
whole stack started and warmed up; PostgreSQL's counters reset; `--generations` auto_confirm
generations at `--rate` a second through all four services (the fake Veo done at once), until
every webhook arrived and the system is idle; then the counters again. The same counters over
an idle stretch as long as the run give the background (heartbeats, the relays' safety nets,
sweeps), which is subtracted. Writes bench/results/statements.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg

from bench.common import write_json
from bench.context import say
from bench.e2e import Pipeline, half_rate, settle
from bench.receiver import FastReceiver
from bench.stack import DurablePostgres, close_servers, close_stack, open_stack, start_servers

COUNTERS = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
       (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s
        JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()) AS statements
"""
TOP = """
SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 140) AS query
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database() ORDER BY calls DESC LIMIT $1
"""
RESET = "SELECT pg_stat_reset(), pg_stat_statements_reset()"
USERS = 20


class CountingPostgres(DurablePostgres):
    """The bench's PostgreSQL, with every statement counted."""

    def server_options(self) -> str:
        return (
            f"{super().server_options()} -c shared_preload_libraries=pg_stat_statements "
            "-c pg_stat_statements.track=all"
        )


async def counters(conn: asyncpg.Connection) -> dict[str, int]:
    # The statistics collector publishes what backends report at most every 0.5 s or so.
    await asyncio.sleep(1.0)
    row = await conn.fetchrow(COUNTERS)
    return {"commits": int(row["commits"]), "statements": int(row["statements"])}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    receiver = FastReceiver()
    pipeline = Pipeline(receiver)
    await receiver.start()
    rabbit, postgres = await start_servers(postgres=CountingPostgres())
    try:
        stack = await open_stack(rabbit, postgres, receiver.url)
        database = stack.env["DATABASE_URL"]
        conn = await asyncpg.connect(database)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            users = await asyncio.gather(*(stack.new_user(f"count-{i}") for i in range(USERS)))
            await pipeline.open([key for _, key in users], stack.api_urls())
            await half_rate(pipeline, args.rate, duration=2.0)  # warm-up: pools, caches, plans
            await settle(rabbit.url, database=database)
            seconds = args.generations / args.rate
            # The background: the same stretch with no load.
            await conn.execute(RESET)
            started = time.monotonic()
            await asyncio.sleep(seconds)
            idle = await counters(conn)
            idle_seconds = time.monotonic() - started
            # The load, until the system is idle again.
            await conn.execute(RESET)
            started = time.monotonic()
            load = await half_rate(pipeline, args.rate, duration=seconds)
            await settle(rabbit.url, database=database)
            busy = await counters(conn)
            busy_seconds = time.monotonic() - started
            top = await conn.fetch(TOP, 25)
        finally:
            await conn.close()
            await pipeline.close()
            await close_stack(stack)
    finally:
        await close_servers(rabbit, postgres)
        await receiver.stop()
    done = load.as_dict()["completed_in_window"]
    if not done:
        raise RuntimeError("no generation completed: nothing to divide by")
    per_second = {k: v / idle_seconds for k, v in idle.items()}
    net = {k: busy[k] - per_second[k] * busy_seconds for k in busy}
    return {
        "generations": done,
        "rate_per_s": args.rate,
        "seconds_with_load": round(busy_seconds, 1),
        "background_per_s": {k: round(v, 1) for k, v in per_second.items()},
        "raw": busy,
        "per_generation": {k: round(v / done, 1) for k, v in net.items()},
        "per_generation_raw": {k: round(v / done, 1) for k, v in busy.items()},
        "top_statements_per_generation": [
            {"calls_per_generation": round(r["calls"] / done, 2), "query": r["query"]} for r in top
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=120)
    parser.add_argument("--rate", type=float, default=8.0)
    result = asyncio.run(run(parser.parse_args()))
    write_json("statements", result)
    say(f"per generation: {result['per_generation']} (raw {result['per_generation_raw']})")


if __name__ == "__main__":
    main()
