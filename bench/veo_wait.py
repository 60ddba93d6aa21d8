"""Benchmark (not a test): one `reelflow worker` process waits on many slow Veo operations.

    uv run --frozen python bench/veo_wait.py [--operations 1000] [--seconds 60]

(`make bench-veo`: 5,000 operations of 30 s each, issue 9's figure, carried to the end.)

Sets up its own database (`reelflow_bench_veo`) and RabbitMQ vhost, starts the fake Gemini API
in a process of its own (`slow seconds=N`: every operation pending N seconds), one
`reelflow worker` with VIDEO_PROVIDER=veo, publishes N render commands as the orchestrator
would, and waits until every job has ended. Meanwhile it samples the worker's /proc every
0.25 s: RSS, peak RSS (VmHWM), CPU time (utime+stime), threads; and the database: how many
operations are pending at once. Prints a summary and writes bench/results/veo_wait.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aio_pika  # noqa: E402
import asyncpg  # noqa: E402
from aio_pika.abc import DeliveryMode  # noqa: E402
from shared.db.migrate import migrate  # noqa: E402
from shared.messages import RenderRequested  # noqa: E402
from shared.schemas import RenderSpec  # noqa: E402
from shared.settings import load_settings  # noqa: E402
from shared.topology import COMMANDS, declare  # noqa: E402

from tests.fakes.fake_veo import FakeVeoProcess  # noqa: E402

DB = "reelflow_bench_veo"
VHOST = "reelflow_bench_veo"
PG = os.environ.get("REELFLOW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
AMQP = os.environ.get("REELFLOW_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
KEY = "bench-key"
MODEL = "veo-3.1-fast-generate-preview"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Sample:
    t: float
    rss_mb: float
    cpu_s: float
    threads: int
    pending: int
    done: int


@dataclass
class Trace:
    samples: list[Sample] = field(default_factory=list)
    all_submitted_at: float | None = None
    first_done_at: float | None = None
    cancelled_at: float | None = None


def proc_stats(pid: int) -> tuple[float, float, float, int]:
    """(rss MB, peak rss MB, cpu seconds, threads) of one process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    peak = int(fields["VmHWM"].split()[0]) / 1024
    threads = int(fields["Threads"])
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime, stime
    return rss, peak, cpu, threads


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=False, capture_output=True, timeout=60)


async def prepare(env: dict[str, str]) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    finally:
        await conn.close()
    await migrate(load_settings(**env))
    await asyncio.to_thread(_rabbitmqctl, "delete_vhost", VHOST)
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", VHOST)
    await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")


async def seed(db: asyncpg.Connection, count: int, duration: int) -> list[RenderRequested]:
    user = uuid.uuid4()
    await db.execute(
        "INSERT INTO users (id, name, api_key_prefix, api_key_sha256, created_at) "
        "VALUES ($1, 'bench', 'rf_bench', $2, now())",
        user,
        uuid.uuid4().hex,
    )
    commands = []
    rows = []
    for n in range(count):
        spec = RenderSpec(
            model=MODEL,
            prompt=f"A lighthouse in a storm at night, take {n}",
            aspect_ratio="16:9",
            resolution="720p",
            duration_seconds=duration,
            generate_audio=True,
        )
        gen = uuid.uuid4()
        rows.append((gen, user, "confirmed", spec.prompt, spec.model_dump_json()))
        commands.append(RenderRequested(generation_id=gen, user_id=user, spec=spec))
    await db.executemany(
        "INSERT INTO generations (id, user_id, status, version, prompt, auto_confirm, params, "
        "spec, questions, answers, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, true, "
        "'{}', $5::jsonb, '[]', '{}', now(), now())",
        rows,
    )
    return commands


async def started(db: asyncpg.Connection) -> None:
    """Until the worker's scheduler has started (it creates the submissions window)."""
    for _ in range(300):
        if await db.fetchval("SELECT count(*) FROM submit_windows"):
            await asyncio.sleep(1.0)  # let it settle before the idle sample
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the worker did not start within 60 s")


async def publish(amqp_url: str, commands: list[RenderRequested]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel)
        exchange = await channel.get_exchange(COMMANDS)
        for command in commands:
            await exchange.publish(
                aio_pika.Message(
                    command.model_dump_json().encode(),
                    message_id=str(uuid.uuid4()),
                    type=command.TYPE,
                    correlation_id=str(command.generation_id),
                    content_type="application/json",
                    delivery_mode=DeliveryMode.PERSISTENT,
                ),
                routing_key=command.routing_key,
            )


async def watch(
    pid: int,
    db: asyncpg.Connection,
    count: int,
    trace: Trace,
    t0: float,
    limit: float,
    cancel_after: float | None,
) -> None:
    while True:
        rss, _, cpu, threads = proc_stats(pid)
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'running') AS pending, "
            "count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled')) AS done, "
            "count(*) FILTER (WHERE operation_name IS NOT NULL) AS submitted FROM render_jobs"
        )
        now = time.monotonic() - t0
        trace.samples.append(Sample(now, rss, cpu, threads, row["pending"], row["done"]))
        if trace.all_submitted_at is None and row["submitted"] >= count:
            trace.all_submitted_at = now
        if trace.first_done_at is None and row["done"] > 0:
            trace.first_done_at = now
        waited = now - trace.all_submitted_at if trace.all_submitted_at is not None else 0.0
        if cancel_after is not None and trace.cancelled_at is None and waited >= cancel_after:
            # Wait-only mode: every generation is cancelled; the worker stops waiting.
            await db.execute("UPDATE generations SET status = 'cancelled', version = version + 1")
            trace.cancelled_at = now
        if row["done"] >= count:
            return
        if now > limit:
            raise TimeoutError(f"only {row['done']} of {count} jobs ended in {limit:.0f} s")
        await asyncio.sleep(0.25)


def _cpu_between(samples: list[Sample], start: float, end: float) -> tuple[float, float]:
    """CPU seconds and average cores used between two times."""
    inside = [s for s in samples if start <= s.t <= end]
    if len(inside) < 2:
        return 0.0, 0.0
    cpu = inside[-1].cpu_s - inside[0].cpu_s
    wall = inside[-1].t - inside[0].t
    return round(cpu, 2), round(cpu / wall, 3) if wall else 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    media = Path(tempfile.mkdtemp(prefix="reelflow-bench-media-"))
    async with FakeVeoProcess(api_key=KEY, scenario=f"slow seconds={args.seconds}") as veo:
        env = {
            "DATABASE_URL": f"{PG}/{DB}",
            "AMQP_URL": f"{AMQP}/{VHOST}",
            "VIDEO_PROVIDER": "veo",
            "GEMINI_API_KEY": KEY,
            "GOOGLE_GEMINI_BASE_URL": veo.base_url,
            "VEO_MAX_IN_FLIGHT": str(args.operations),
            "VEO_SUBMISSIONS_PER_MINUTE": "100000",
            "LOCAL_STORAGE_DIR": str(media),
            "MEDIA_SIGNING_KEY": "bench",
            "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": args.log_level,
            **dict(pair.split("=", 1) for pair in args.set),
        }
        await prepare(env)
        db = await asyncpg.connect(env["DATABASE_URL"])
        try:
            commands = await seed(db, args.operations, args.duration)
            log = Path(tempfile.mkdtemp(prefix="reelflow-bench-log-")) / "worker.log"
            worker = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "reelflow"),
                "worker",
                env={**os.environ, **env},
                cwd=REPO,
                stdout=log.open("wb"),  # warnings and errors only (LOG_LEVEL)
                stderr=subprocess.STDOUT,
            )
            try:
                await started(db)
                idle_rss, _, idle_cpu, _ = proc_stats(worker.pid)
                assert veo.process is not None
                fake_cpu0 = proc_stats(veo.process.pid)[2]
                load_at_start = os.getloadavg()
                t0 = time.monotonic()
                await publish(env["AMQP_URL"], commands)
                trace = Trace()
                await watch(
                    worker.pid, db, args.operations, trace, t0, args.timeout, args.cancel_after
                )
                wall = time.monotonic() - t0
                _, peak_rss, cpu, _ = proc_stats(worker.pid)
                fake_cpu = proc_stats(veo.process.pid)[2] - fake_cpu0
            finally:
                worker.terminate()
                await asyncio.wait_for(worker.wait(), 60)
            outcomes = dict(
                await db.fetch("SELECT status, count(*) FROM render_jobs GROUP BY status")
            )
        finally:
            await db.close()
        stats = await veo.stats(operations=False)
    await asyncio.to_thread(_rabbitmqctl, "delete_vhost", VHOST)
    samples = trace.samples
    submitted = trace.all_submitted_at or wall
    first_done = min(trace.first_done_at or wall, trace.cancelled_at or wall)
    # Recording and submitting, then waiting: everything before the first job ends.
    before_cpu, before_cores = _cpu_between(samples, 0.0, first_done)
    # Pure waiting: every operation submitted, none ended (if the run had such a window).
    window = first_done - submitted
    waiting_cpu, waiting_cores = _cpu_between(samples, submitted, first_done)
    per_op_minute = (
        round(waiting_cpu * 1000 / (args.operations * window / 60), 2) if window > 5 else None
    )
    finishing_cpu, finishing_cores = _cpu_between(samples, first_done, wall)
    return {
        "operations": args.operations,
        "operation_seconds": args.seconds,
        "video_seconds": args.duration,
        "cpus": os.cpu_count(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": os.getloadavg(),
        "mode": "wait only (cancelled)" if args.cancel_after is not None else "complete",
        "settings": args.set,
        "outcomes": outcomes,
        "fake": {k: stats[k] for k in ("submit_attempts", "submissions", "polls", "downloads")},
        "max_pending_at_once": max(s.pending for s in samples),
        "all_submitted_after_s": round(submitted, 2),
        "first_done_after_s": round(first_done, 2),
        "cancelled_after_s": trace.cancelled_at,
        "all_done_after_s": round(wall, 2),
        "idle_rss_mb": round(idle_rss, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "rss_while_waiting_mb": round(
            max((s.rss_mb for s in samples if s.t <= first_done), default=0.0), 1
        ),
        "max_threads": max(s.threads for s in samples),
        "cpu_total_s": round(cpu - idle_cpu, 2),
        "cpu_before_first_done_s": before_cpu,
        "cores_before_first_done": before_cores,
        "pure_waiting_window_s": round(window, 2) if window > 5 else None,
        "cpu_waiting_s": waiting_cpu if window > 5 else None,
        "cores_while_waiting": waiting_cores if window > 5 else None,
        "cpu_ms_per_operation_minute_waiting": per_op_minute,
        "cpu_finishing_s": finishing_cpu,
        "cores_while_finishing": finishing_cores,
        "cpu_ms_per_operation": round((cpu - idle_cpu) * 1000 / args.operations, 1),
        "fake_veo_cpu_s": round(fake_cpu, 2),
        "worker_log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="each operation's wait")
    parser.add_argument("--duration", type=int, default=4, help="seconds of each video")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--log-level", default="WARNING", help="the worker's LOG_LEVEL")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another setting for the worker, e.g. VEO_POLL_MAX_INTERVAL_SECONDS=30",
    )
    parser.add_argument(
        "--cancel-after",
        type=float,
        default=None,
        help="wait-only mode: cancel every generation this many seconds after the last "
        "submission (measures waiting at scale without storing every video)",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    name = "veo_wait" if args.cancel_after is None else f"veo_wait_{args.operations}_wait_only"
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
