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

    # A first small batch says how fast the notifier is; the measured batches are sized to keep
    # it busy for about `busy` seconds, whatever its speed.
    calibration = await measured(40)
    await settle(amqp)
    busy = 5.0 if run.args.quick else 8.0
    speed = calibration["deliveries_per_s"] or calibration["overall_per_s"] or 10.0
    events = int(min(4000, max(40, speed * busy / per_event)))
    pid = run.stack.pids()["notifier"]
    async with run.profiled("notifier delivering webhooks", pid, busy * 0.75) as prof:
        alone = await measured(events)
    run.results["phase_profiles"]["notifier delivering webhooks"].update(prof)
    await settle(amqp)
    say(f"webhooks alone: {alone}")
    hanging_result = None
    if registered:
        hang = HangingReceiver()
        await hang.start()
        hang_id = await endpoints.register(f"{hang.url}/hang")
        try:
            hanging_result = await measured(events)
            hanging_result["hanging_requests"] = hang.requests
        finally:
            await endpoints.delete(hang_id)
            await hang.stop()
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
