"""Phase 5: webhook deliveries to a fast receiver, alone and beside a hanging endpoint."""

from __future__ import annotations

import uuid
from typing import Any

from bench.common import CpuMeter, Row, write_json
from bench.context import Run, python_json, say
from bench.e2e import settle
from bench.receiver import HangingReceiver
from bench.webhooks import Endpoints, delivery_rate

# -- 5. webhooks ---------------------------------------------------------------------------------


async def webhooks(run: Run) -> None:
    endpoints = Endpoints(run.stack.api_url, run.api_key)
    user = uuid.UUID(run.user_id)
    amqp = run.stack.rabbit.url
    registered = await endpoints.available()
    fast_id = None
    if registered:
        fast_id = await endpoints.register(f"{run.receiver.url}/fast")
    else:
        run.unmeasured.append(
            "webhooks: POST /v1-webhook-endpoints absent; NEXTJS_URL only, no hanging endpoint"
        )
    per_event = 2 if registered else 1

    async def measured(events: int) -> dict[str, Any]:
        meter = CpuMeter(run.pids())
        meter.start()
        result = await delivery_rate(run.receiver, amqp, user, events, per_event)
        result["cpu_cores"] = meter.cores(meter.stop())
        if result["delivered"]:
            notifier = result["cpu_cores"]["notifier"] * meter.wall
            result["notifier_core_ms_per_delivery"] = round(
                1000 * notifier / result["delivered"], 2
            )
        return result

    # A first batch says how fast the notifier is; the measured batches are sized to keep it
    # busy for about `busy` seconds, whatever its speed.
    calibration = await measured(200)
    await settle(amqp)
    busy = 5.0 if run.args.quick else 8.0
    speed = calibration["deliveries_per_s"] or calibration["overall_per_s"] or 10.0
    events = int(min(6000, max(40, speed * busy / per_event)))
    pid = run.stack.pids()["notifier"]
    # Each case is measured twice in a row and the better run kept (as for the bare chain): on
    # a shared machine a run can lose half its CPU to others' work, which says nothing about the
    # notifier. The notifier's CPU per delivery, less sensitive to that, is kept for each run.
    async with run.profiled("notifier delivering webhooks", pid, busy * 0.75) as prof:
        alone_runs = [await measured(events)]
    run.results["phase_profiles"]["notifier delivering webhooks"].update(prof)
    await settle(amqp)
    alone_runs.append(await measured(events))
    await settle(amqp)
    alone = _best(alone_runs)
    say(f"webhooks alone: {alone}")
    hanging_result = None
    hanging_runs: list[dict[str, Any]] = []
    if registered:
        hang = HangingReceiver()
        await hang.start()
        hang_id = await endpoints.register(f"{hang.url}/hang")
        try:
            for _ in range(2):
                hanging_runs.append(await measured(events))
                hanging_runs[-1]["hanging_requests"] = hang.requests
                await settle(amqp)
        finally:
            await endpoints.delete(hang_id)
            await hang.stop()
        hanging_result = _best(hanging_runs)
        say(f"webhooks beside a hanging endpoint: {hanging_result}")
        await settle(amqp, within=60)
    if fast_id:
        await endpoints.delete(fast_id)
    baseline = await python_json(
        "-m",
        "bench.baseline_webhooks",
        "--url",
        f"{run.receiver.url}/fast",
        "--seconds",
        "4",
        limit=60,
    )
    run.results["webhooks"] = {
        "timeout_seconds": run.stack.env["WEBHOOK_TIMEOUT_SECONDS"],
        "calibration": calibration,
        "alone": alone,
        "beside_hanging": hanging_result,
        "runs": {"alone": alone_runs, "beside_hanging": hanging_runs},
        "baseline_bare_aiohttp": baseline,
    }
    write_json("webhooks", run.results["webhooks"])
    rate = alone["deliveries_per_s"]
    run.rows.append(
        Row(
            "5 webhooks",
            "deliveries/s to a fast receiver",
            rate,
            "/s",
            "bare aiohttp POSTs, 16 at once",
            baseline["requests_per_s"],
            "≥ 1,000/s",
            None if rate is None else rate >= 1000,
        )
    )
    cpu_alone = _cpu(alone_runs)
    if cpu_alone is not None:
        run.notes.append(
            f"Webhooks: the notifier spent {cpu_alone} core-ms per delivery alone"
            + (
                f", {_cpu(hanging_runs)} beside the hanging endpoint"
                if _cpu(hanging_runs) is not None
                else ""
            )
            + " (the lower of the two runs each; rates are the better of two runs each)."
        )
    if hanging_result is not None:
        beside = hanging_result["deliveries_per_s"]
        run.rows.append(
            Row(
                "5 webhooks",
                "fast receiver's deliveries/s beside an endpoint hanging "
                f"{run.stack.env['WEBHOOK_TIMEOUT_SECONDS']} s (the timeout)",
                beside,
                "/s",
                "the same alone",
                rate,
                "≥ 0.9× (costs ≤ 10%)",
                None if not (beside and rate) else beside / rate >= 0.9,
            )
        )


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the highest steady rate (complete runs first)."""
    return max(runs, key=lambda r: (r["complete"], r["deliveries_per_s"] or 0.0))


def _cpu(runs: list[dict[str, Any]]) -> float | None:
    values = [
        r["notifier_core_ms_per_delivery"] for r in runs if "notifier_core_ms_per_delivery" in r
    ]
    return min(values) if values else None
