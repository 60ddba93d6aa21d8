"""Chaos: many generations while, in turn, services are killed -9, RabbitMQ and PostgreSQL are
restarted and the webhook receiver goes down, with poison messages in every work queue and Veo
answered by the fake Gemini API in a process of its own; then the guarantees are checked.

`python -m tests.faults.chaos --generations 200` is the long run (`make chaos`); the test suite
runs the same scenario small (tests/faults/test_chaos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from shared.db.engine import make_engine
from shared.topology import WORK_QUEUES
from sqlalchemy import text
from veo_worker.flows import CRASH_WINDOW

from reelflow import dlq
from tests.fakes.fake_veo import FakeVeoProcess
from tests.faults.cluster import Cluster, cluster

DETAILED = "A red fox running through fresh snow at dawn, cinematic tracking shot"
TERMINAL = {"completed", "failed", "cancelled"}
CHAT_EVENTS = (
    "generation.clarification_requested",
    "generation.awaiting_confirmation",
    "generation.confirmed",
    "generation.completed",
    "generation.failed",
    "generation.cancelled",
)


@dataclass
class Report:
    generations: int
    faults: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(v is True for k, v in self.checks.items() if k.startswith("ok_"))


class Driver:
    """A user making generations through the HTTP API, patient with an API that is briefly
    unavailable (a 5xx or a refused connection is retried; a 4xx is a finding)."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )

    async def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        for attempt in range(120):
            try:
                response = await self.http.request(method, url, **kw)
                if response.status_code < 500:
                    return response
            except httpx.TransportError:
                pass
            await asyncio.sleep(min(0.2 * (attempt + 1), 2))
        raise AssertionError(f"{method} {url} never succeeded")

    async def auto_confirmed(self, conversation_id: str, n: int) -> str:
        response = await self.call(
            "POST",
            "/v1/generations",
            json={
                "prompt": f"{DETAILED} #{n}",
                "auto_confirm": True,
                "conversation_id": conversation_id,
                "params": {"aspect_ratio": random.choice(["16:9", "9:16"]), "duration_seconds": 4},
            },
            headers={"Idempotency-Key": f"chaos-{n}"},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def clarified(self, conversation_id: str, n: int) -> str:
        response = await self.call(
            "POST",
            "/v1/generations",
            json={"prompt": f"a fox {n}", "conversation_id": conversation_id},
            headers={"Idempotency-Key": f"chaos-{n}"},
        )
        assert response.status_code == 201, response.text
        gid = str(response.json()["id"])
        for _ in range(600):
            gen = (await self.call("GET", f"/v1/generations/{gid}")).json()
            if gen["questions"]:
                break
            await asyncio.sleep(0.2)
        answered = await self.call(
            "POST",
            f"/v1/generations/{gid}/answers",
            json={
                "answers": {
                    "aspect_ratio": "16:9",
                    "duration_seconds": "4",
                    "detail": "in deep snow at dawn",
                }
            },
        )
        assert answered.status_code in (200, 409), answered.text  # 409: a retried request landed
        for _ in range(600):
            gen = (await self.call("GET", f"/v1/generations/{gid}")).json()
            if gen["status"] != "pending_clarification":
                break
            await asyncio.sleep(0.2)
        confirmed = await self.call("POST", f"/v1/generations/{gid}/confirm")
        assert confirmed.status_code in (200, 409), confirmed.text
        return gid

    async def status(self, gid: str) -> str:
        return str((await self.call("GET", f"/v1/generations/{gid}")).json()["status"])


async def _conversations(c: Cluster, user_key: str, count: int) -> list[str]:
    engine = make_engine(c.settings, pool_size=1)
    try:
        async with engine.begin() as conn:
            user_id = await conn.scalar(
                text("SELECT user_id FROM api_keys WHERE sha256 = encode(sha256(:k), 'hex')"),
                {"k": user_key.encode()},
            )
            ids = [str(uuid.uuid4()) for _ in range(count)]
            for cid in ids:
                await conn.execute(
                    text(
                        "INSERT INTO conversations (id, user_id, title, created_at) "
                        "VALUES (:i, :u, 'chaos', now())"
                    ),
                    {"i": cid, "u": user_id},
                )
            return ids
    finally:
        await engine.dispose()


async def in_flight(c: Cluster, veo: FakeVeoProcess) -> dict[str, int]:
    """What a fault is about to hit: generations not yet terminal, by status, and Veo
    operations submitted and not yet done."""
    engine = make_engine(c.settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT status, count(*) FROM generations WHERE status NOT IN "
                        "('completed', 'failed', 'cancelled') GROUP BY status"
                    )
                )
            ).all()
            pending_deliveries = await conn.scalar(
                text("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            )
    finally:
        await engine.dispose()
    stats = await veo.stats(operations=False)
    return {
        **{f"generations_{status}": int(n) for status, n in rows},
        "veo_operations_pending": int(stats["submissions"] - stats["operations_done"]),
        "webhook_deliveries_pending": int(pending_deliveries or 0),
    }


async def inject_faults(
    c: Cluster, veo: FakeVeoProcess, report: Report, receiver_down_seconds: float, pause: float
) -> None:
    async def fault(name: str, action: Any) -> None:
        hit = await in_flight(c, veo)
        started = time.monotonic()
        await action()
        report.faults.append(
            {"fault": name, "seconds": round(time.monotonic() - started, 1), "in_flight": hit}
        )
        await asyncio.sleep(pause)

    async def receiver_outage() -> None:
        await c.receiver.down()
        await asyncio.sleep(receiver_down_seconds)
        await c.receiver.up()

    async def rabbit_restart() -> None:
        await asyncio.to_thread(c.rabbit.restart)
        for name in ("api", "orchestrator", "worker", "notifier"):
            await c.ready(name, within=120)

    async def postgres_restart() -> None:
        await asyncio.to_thread(c.postgres.restart)
        for name in ("api", "orchestrator", "worker", "notifier"):
            await c.ready(name, within=120)

    await asyncio.sleep(pause)
    # The receiver goes down first, while the first generations' webhooks are in flight.
    await fault(f"webhook receiver down {receiver_down_seconds:g} s", receiver_outage)
    await fault("worker killed -9 mid-work", lambda: c.restart("worker"))
    await fault("orchestrator killed -9", lambda: c.restart("orchestrator"))
    await fault("notifier killed -9", lambda: c.restart("notifier"))
    await fault("RabbitMQ restarted", rabbit_restart)
    await fault("PostgreSQL restarted", postgres_restart)


VEO_KEY = "chaos-gemini-key"
# What each work queue carries, for a poison message that is its type from a future schema.
QUEUE_TYPES = {
    "orchestrator.requests": "generation.requested",
    "orchestrator.confirmations": "generation.lifecycle",
    "orchestrator.reports": "render.reported",
    "worker.render": "render.requested",
    "notifier.events": "generation.lifecycle",
    "notifier.deliveries": "webhook.delivery_requested",
}
POISON = {  # message id suffix: (type, body)
    "unparseable": (None, b"{not json"),
    "unknown-type": ("no.such.type", b"{}"),
    "future-schema": (None, b'{"version": 2}'),
}


async def inject_poison(c: Cluster) -> int:
    """Three poison messages straight into each work queue, before the traffic: each must end
    in the queue's DLQ with its reason while the queue goes on flowing."""
    connection = await aio_pika.connect(c.rabbit.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for queue in WORK_QUEUES:
            for kind, (type_, body) in POISON.items():
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=f"poison-{queue.name}-{kind}",
                        type=type_ or QUEUE_TYPES[queue.name],
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue.name,
                    mandatory=True,
                )
    return len(WORK_QUEUES) * len(POISON)


def veo_env(veo: FakeVeoProcess) -> dict[str, str]:
    """The worker renders with Veo, answered by the fake Gemini API in a process of its own, so
    a kill -9 lands while operations are pending and every paid submission is counted there."""
    return {
        "VIDEO_PROVIDER": "veo",
        "GEMINI_API_KEY": VEO_KEY,
        "GOOGLE_GEMINI_BASE_URL": veo.base_url,
        "VEO_POLL_INTERVAL_SECONDS": "0.5",
        "VEO_POLL_MAX_INTERVAL_SECONDS": "1",
        "VEO_SUBMISSIONS_PER_MINUTE": "10000",
        "WORKER_LEASE_SECONDS": "3",
    }


RECOVERY_LINES = {  # log line: what it shows
    "Duplicate ignored": "a redelivered message applied once (inbox)",
    "Database unavailable, retrying": "a handler waiting out the PostgreSQL restart",
    "Handling failed, message requeued": "a message handed back for redelivery",
    "Relay failed, will retry": "outbox rows waiting while RabbitMQ was down",
    "Webhook failed, will retry": "a webhook attempt failed and scheduled again",
}


def recovery_counts(logs: Path) -> dict[str, dict[str, int]]:
    """How often each service logged each recovery step, from its log file."""
    counts: dict[str, dict[str, int]] = {}
    for path in sorted(logs.glob("*.log")):
        text_ = path.read_text(errors="replace")
        found = {line: text_.count(f"] {line}") for line in RECOVERY_LINES}
        counts[path.stem] = {k: v for k, v in found.items() if v}
    return counts


async def check_veo(veo: FakeVeoProcess, ids: list[str], report: Report) -> None:
    stats = await veo.stats(operations=False)
    report.checks["veo_submissions"] = stats["submissions"]
    report.checks["veo_submit_attempts"] = stats["submit_attempts"]
    report.checks["veo_downloads"] = stats["downloads"]
    # Accepted submissions by prompt (each generation's prompt is its own): never two.
    accepted = Counter(
        str(r["body"]["instances"][0]["prompt"])
        for r in await veo.requests()
        if "operation" in r and isinstance(r.get("body"), dict)
    )
    report.checks["ok_veo_never_paid_twice"] = sum(accepted.values()) == stats[
        "submissions"
    ] and all(n == 1 for n in accepted.values())
    # Every generation here is confirmed, so each is paid for once; one the worker was killed
    # in the middle of submitting may have reached Veo or not (it is failed, never resent).
    refused = report.checks["crash_window_failures"]
    report.checks["ok_veo_paid_once_per_generation"] = (
        len(ids) - refused <= stats["submissions"] <= len(ids)
    )


def _crash_window(error: Any) -> bool:
    return isinstance(error, dict) and (error.get("code"), error.get("message")) == (
        "internal",
        CRASH_WINDOW,
    )


async def check(
    c: Cluster, ids: list[str], driver: Driver, report: Report, settle_seconds: float
) -> None:
    deadline = time.monotonic() + settle_seconds
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {gid: await driver.status(gid) for gid in ids}
        if all(s in TERMINAL for s in statuses.values()):
            break
        await asyncio.sleep(1)
    counts = Counter(statuses.values())
    report.checks["statuses"] = dict(counts)
    report.checks["not_completed"] = {
        gid: (await driver.call("GET", f"/v1/generations/{gid}")).json().get("error")
        for gid, s in statuses.items()
        if s != "completed"
    }
    report.checks["ok_every_generation_terminal"] = all(s in TERMINAL for s in statuses.values())
    report.checks["ok_none_lost"] = len(statuses) == len(ids)
    report.generations = len(ids)
    # A worker killed -9 between sending a submission and storing Veo's answer fails that
    # generation on purpose rather than send it again (Veo may have accepted it, and would
    # charge twice); whether a kill lands in that window is luck. Every other one completes.
    report.checks["crash_window_failures"] = sum(
        1 for error in report.checks["not_completed"].values() if _crash_window(error)
    )
    report.checks["ok_all_completed"] = counts.get("completed", 0) + report.checks[
        "crash_window_failures"
    ] == len(ids)

    engine = make_engine(c.settings, pool_size=1)
    try:
        async with engine.connect() as conn:

            async def scalar(sql: str, **p: Any) -> Any:
                return await conn.scalar(text(sql), p)

            # Let retries finish: every webhook delivery settles once the receiver is back.
            for _ in range(int(settle_seconds)):
                if not await scalar(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
                ):
                    break
                await asyncio.sleep(1)
            expected = (
                await conn.execute(
                    text(
                        "SELECT correlation_id, count(*) FROM outbox WHERE routing_key = ANY(:k) "
                        "GROUP BY correlation_id"
                    ),
                    {"k": list(CHAT_EVENTS)},
                )
            ).all()
            written: dict[str, int] = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT generation_id::text, count(*) FROM messages "
                            "WHERE role = 'assistant' GROUP BY generation_id"
                        )
                    )
                ).all()
            )
            report.checks["assistant_messages"] = sum(written.values())
            report.checks["ok_one_message_per_event"] = all(
                written.get(cid, 0) == n for cid, n in expected
            )
            deliveries: dict[str, str] = dict(
                (
                    await conn.execute(text("SELECT webhook_id, status FROM webhook_deliveries"))
                ).all()
            )
            report.checks["webhook_deliveries"] = dict(Counter(deliveries.values()))
            report.checks["ok_every_webhook_delivered"] = all(
                s == "succeeded" for s in deliveries.values()
            )
            report.checks["deliveries_retried"] = await scalar(
                "SELECT count(*) FROM (SELECT delivery_id FROM webhook_attempts "
                "GROUP BY delivery_id HAVING count(*) > 1) AS retried"
            )
            report.checks["ok_outbox_drained"] = (
                await scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
            )
            report.checks["render_jobs"] = await scalar("SELECT count(*) FROM render_jobs")
            # Taken over by the restarted worker after the kill (its lease ran out).
            report.checks["render_jobs_taken_over"] = await scalar(
                "SELECT count(*) FROM render_jobs WHERE attempts > 1"
            )
            report.checks["ok_one_render_per_generation"] = await scalar(
                "SELECT count(DISTINCT generation_id) FROM render_jobs"
            ) == len(ids)
    finally:
        await engine.dispose()

    received = Counter(r["headers"].get("webhook-id") for r in c.receiver.receiver.received)
    bodies: dict[str, set[bytes]] = {}
    for r in c.receiver.receiver.received:
        bodies.setdefault(r["headers"].get("webhook-id"), set()).add(r["body"])
    report.checks["webhooks_received"] = sum(received.values())
    report.checks["webhook_retries_seen"] = sum(n - 1 for n in received.values())
    report.checks["ok_webhook_ids_known_and_stable"] = set(received) <= set(deliveries) and all(
        len(b) == 1 for b in bodies.values()
    )
    report.checks["ok_every_delivery_arrived"] = set(deliveries) <= set(received)
    # Whether the outage caught deliveries in flight (some webhook needed a retry) depends on
    # timing: reported, not gated, so a short run on a slow machine does not fail on luck.
    report.checks["receiver_outage_exercised"] = report.checks["deliveries_retried"] > 0

    connection = await aio_pika.connect(c.rabbit.url)
    async with connection:
        channel = await connection.channel()
        dead = {}
        for q in WORK_QUEUES:
            declared = await channel.declare_queue(q.dlq, passive=True)
            dead[q.dlq] = int(declared.declaration_result.message_count or 0)
    report.checks["dlq_depths"] = {k: v for k, v in dead.items() if v}
    shown = {
        name: await dlq.show(c.rabbit.url, name, limit=depth + 1)
        for name, depth in dead.items()
        if depth
    }
    poison = {
        str(m.message_id): m
        for found in shown.values()
        for m in found
        if str(m.message_id).startswith("poison-")
    }
    report.checks["dead_messages_not_injected"] = [
        m.summary()
        for found in shown.values()
        for m in found
        if not str(m.message_id).startswith("poison-")
    ]
    report.checks["poison_reasons"] = {k: m.reason[:80] for k, m in sorted(poison.items())}
    injected = {f"poison-{q.name}-{kind}": q.name for q in WORK_QUEUES for kind in POISON}
    report.checks["ok_poison_dead_lettered_with_reason"] = all(
        k in poison and poison[k].reason.startswith("unreadable: ") and poison[k].died_in == q
        for k, q in injected.items()
    )
    unexpected = report.checks["dead_messages_not_injected"]
    report.checks["ok_nothing_else_dead"] = sum(dead.values()) == len(injected) and not unexpected


async def run(
    generations: int,
    logs: Path,
    receiver_down_seconds: float = 60,
    pause: float = 3,
    settle_seconds: float = 300,
    interval: float = 1.0,
    veo_seconds: float = 5,
) -> Report:
    report = Report(generations)
    started = time.monotonic()
    async with (
        FakeVeoProcess(api_key=VEO_KEY, scenario=f"slow seconds={veo_seconds:g}") as veo,
        cluster(logs, veo_env(veo)) as c,
    ):
        key = await c.new_user()
        driver = Driver(c.api_url, key)
        conversations = await _conversations(c, key, generations * 4)
        report.checks["poison_injected"] = await inject_poison(c)

        async def one(n: int) -> str:
            make = driver.auto_confirmed if n % 2 == 0 else driver.clarified
            return await make(conversations[n % len(conversations)], n)

        faults = asyncio.create_task(inject_faults(c, veo, report, receiver_down_seconds, pause))
        # A steady trickle for as long as the faults last (at least `generations` of them),
        # so every fault lands while work is in every stage.
        tasks: list[asyncio.Task[str]] = []
        while len(tasks) < generations or not faults.done():
            tasks.append(asyncio.create_task(one(len(tasks))))
            await asyncio.sleep(interval)
        ids = list(await asyncio.gather(*tasks))
        await faults
        await check(c, ids, driver, report, settle_seconds)
        await check_veo(veo, ids, report)
        report.checks["recovery_seen_in_logs"] = recovery_counts(logs)
        await driver.http.aclose()
    report.seconds = round(time.monotonic() - started, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--receiver-down", type=float, default=60)
    parser.add_argument("--out", type=Path, default=Path("bench/results/chaos.json"))
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="reelflow-chaos-"))
    report = asyncio.run(run(args.generations, logs, args.receiver_down))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report.__dict__, indent=2))
    print(json.dumps(report.__dict__, indent=2))
    print(f"logs: {logs}")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
