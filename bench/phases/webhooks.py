"""Phase 5: webhook deliveries to a fast receiver, alone and beside a hanging endpoint.

The two cases are measured in interleaved pairs — alone, then beside an endpoint that hangs for
the whole timeout, `PAIRS` times — and one closing alone half, so every hanging half sits
between two alone ones. A pair's ratio is its hanging half's rate over the mean of the alone
halves on either side, and the figure is the median of the pairs' ratios. On a shared machine
the CPU left to the notifier drifts over tens of seconds (two blocks measured one after the
other moved the ratio 0.83×–1.21× while the notifier's CPU per delivery stayed the same); halves
measured back to back see about the same machine, and a drift that is steady over a pair
cancels out between the alone halves before and after (against the pair's own alone half only,
a first try on a machine whose other load was easing read 1.07×, 1.46×, 1.07×: the hanging
half, measured second, always had more CPU).

Each hanging half has an endpoint (and a receiver) of its own, registered before it and deleted
after it, so an alone half has no hanging endpoint subscribed. What a hanging half leaves in the
notifier is cleared before the next half starts: closing the receiver makes the attempts its
lane still holds fail at once (their retry commands then find the endpoint deleted), and the
deliveries its full lane refused — pending until their lease runs out (30 s), then failed by the
sweeper a few hundred per sweep, which would land in a later half — are marked failed by the
bench, as the sweeper would. Every half starts with nothing held in the notifier's memory and
every queue and the outbox empty; a pair where that did not hold, or a half that failed or did
not complete, is kept in the JSON with the reason and left out of the medians.
"""

from __future__ import annotations

import statistics
import uuid
from typing import Any

from bench.common import CpuMeter, Row, write_json
from bench.context import Run, python_json, say
from bench.e2e import settle
from bench.receiver import HangingReceiver
from bench.webhooks import Endpoints, delivery_rate, fail_leftovers, wait_unheld

PAIRS = 3
CASES = ("alone", "beside_hanging")

# -- 5. webhooks ---------------------------------------------------------------------------------


async def webhooks(run: Run) -> None:
    endpoints = Endpoints(run.stack.api_url, run.api_key)
    user = uuid.UUID(run.user_id)
    amqp = run.stack.rabbit.url
    metrics_url = f"http://127.0.0.1:{run.stack.ports['notifier']}/metrics"
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

    async def quiet() -> dict[str, Any]:
        """Wait until nothing of the previous half is left: no delivery in the notifier's memory,
        every work and delay queue and the outbox empty."""
        held = await wait_unheld(metrics_url, within=30)
        settled = await settle(amqp, within=30, database=run.database)
        after = await wait_unheld(metrics_url, within=5)
        return {
            "quiet": settled.idle and held["held"] == 0 and after["held"] == 0,
            "held_in_memory": after["held"],
            "waited_s": round(held["waited_s"] + settled.waited_s + after["waited_s"], 2),
            "backlog_seen": settled.at_start,
        }

    async def half(events: int, hanging: bool) -> dict[str, Any]:
        before = await quiet()
        if not hanging:
            return {**await measured(events), "before": before}
        hang = HangingReceiver()
        await hang.start()
        hang_id = None
        cleanup: dict[str, Any] = {}
        try:
            hang_id = await endpoints.register(f"{hang.url}/hang")
            result = {**await measured(events), "before": before, "hanging_cleanup": cleanup}
            result["hanging_requests"] = hang.requests
        finally:
            if hang_id is not None:
                await endpoints.delete(hang_id)
            await hang.stop()  # what its lane holds fails at once: connection refused
            # The lane's jobs, and their retries (which find the endpoint deleted), run out;
            # then what the full lane refused is failed, as the sweeper would once its lease
            # ran out. Done even when the half failed, so the next half starts clean.
            drained = await wait_unheld(metrics_url, within=30)
            settled = await settle(amqp, within=30, database=run.database)
            if hang_id is not None:
                cleanup.update(await fail_leftovers(run.database, hang_id))
            cleanup["lane_drained"] = drained["held"] == 0 and settled.idle
            cleanup["waited_s"] = round(drained["waited_s"] + settled.waited_s, 2)
        return result

    # A first batch says how fast the notifier is, and sizes the profiled batch; that one, long
    # enough to reach the notifier's sustained rate (a short batch runs faster), sizes the
    # measured halves to keep it busy for about `busy` seconds each, whatever its speed.
    calibration = await measured(200)
    await settle(amqp)
    busy = 5.0 if run.args.quick else 7.0
    pid = run.stack.pids()["notifier"]
    # The profile is taken on a batch of its own, outside the pairs: py-spy's sampling takes
    # CPU on this machine too, and would weigh on the half it ran beside.
    async with run.profiled("notifier delivering webhooks", pid, busy * 0.75) as prof:
        profiled = await measured(_size(calibration, busy, per_event))
    run.results["phase_profiles"]["notifier delivering webhooks"].update(prof)
    events = _size(profiled, busy, per_event)

    pairs: list[dict[str, Any]] = []
    for number in range(1, PAIRS + 1):
        pair: dict[str, Any] = {"pair": number}
        try:
            for case in CASES if registered else CASES[:1]:
                pair[case] = await half(events, hanging=case == "beside_hanging")
        except Exception as exc:
            pair["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            await settle(amqp, within=30, database=run.database)
        pairs.append(pair)
    # One more alone half closes the last pair: each hanging half sits between two alone ones.
    closing: dict[str, Any] | None = None
    if registered:
        try:
            closing = await half(events, hanging=False)
        except Exception as exc:
            closing = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    for i, pair in enumerate(pairs):
        _judge(pair, registered, pairs[i + 1].get("alone") if i + 1 < len(pairs) else closing)
        say(f"webhooks pair {pair['pair']}: {_summary(pair)}")
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

    included = [p for p in pairs if p["included"]]
    ratios = [p["ratio"] for p in included if p.get("ratio") is not None]
    median_ratio = round(statistics.median(ratios), 3) if ratios else None
    alone_halves = [p["alone"] for p in included]
    if closing is not None and _invalid(closing, "closing alone") is None:
        alone_halves.append(closing)
    cases = {
        "alone": _medians(alone_halves),
        "beside_hanging": _medians([p["beside_hanging"] for p in included if registered]),
    }
    run.results["webhooks"] = {
        "timeout_seconds": run.stack.env["WEBHOOK_TIMEOUT_SECONDS"],
        "method": (
            f"{PAIRS} interleaved pairs (alone, then beside an endpoint hanging for the timeout, "
            "registered for that half only) and one closing alone half, so that each hanging "
            "half sits between two alone ones; a pair's ratio is its beside-hanging steady rate "
            "over the mean of the alone halves before and after it (a drift of the machine's "
            "speed that is steady over the pair cancels out; `ratio_to_own_alone` is the same "
            "over the pair's own alone half only); the figure is the median of the included "
            "pairs' ratios, and the rates are the medians of the included halves"
        ),
        "events_per_half": events,
        "calibration": calibration,
        "profiled_batch": profiled,
        "pairs": pairs,
        "closing_alone": closing,
        "pair_ratios": ratios,
        "excluded_pairs": [
            {"pair": p["pair"], "because": p["excluded_because"]}
            for p in pairs
            if not p["included"]
        ],
        "median_pair_ratio": median_ratio,
        **cases,
        "baseline_bare_aiohttp": baseline,
    }
    write_json("webhooks", run.results["webhooks"])

    rate = cases["alone"]["median_deliveries_per_s"]
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
            note=f"median of {len(alone_halves)} alone halves" if alone_halves else None,
        )
    )
    excluded = len(pairs) - len(included)
    left_out = f"; {excluded} of {len(pairs)} left out, see webhooks.json" if excluded else ""
    pair_text = ", ".join(f"{r:.2f}×" for r in ratios)
    cpu_alone = cases["alone"]["median_notifier_core_ms_per_delivery"]
    cpu_beside = cases["beside_hanging"]["median_notifier_core_ms_per_delivery"]
    if cpu_alone is not None:
        run.notes.append(
            f"Webhooks: the notifier spent {cpu_alone} core-ms per delivery alone"
            + (f", {cpu_beside} beside the hanging endpoint" if cpu_beside is not None else "")
            + f" (medians of the halves of {len(included)} interleaved pairs"
            + (" and a closing alone half" if registered else "")
            + (f"; pair ratios {pair_text}" if ratios else "")
            + f"{left_out})."
        )
    if registered:
        beside = cases["beside_hanging"]["median_deliveries_per_s"]
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
                None if median_ratio is None else median_ratio >= 0.9,
                note=(
                    f"ratio: median of {len(ratios)} interleaved pairs' ratios, {pair_text}"
                    f"{left_out}"
                    if ratios
                    else f"no complete pair{left_out}"
                ),
                ratio=median_ratio,
            )
        )


def _size(batch: dict[str, Any], busy: float, per_event: int) -> int:
    """Events that keep the notifier busy for about `busy` seconds at `batch`'s rate."""
    speed = batch["deliveries_per_s"] or batch["overall_per_s"] or 10.0
    return int(min(6000, max(40, speed * busy / per_event)))


def _invalid(result: dict[str, Any] | None, case: str) -> str | None:
    """Why a half cannot be used (None: it can)."""
    if result is None:
        return f"{case} not measured"
    if "error" in result:
        return f"{case} failed: {result['error']}"
    reasons = []
    if not result["complete"]:
        reasons.append(
            f"{case} incomplete: {result['delivered']} of {result['expected']} deliveries"
        )
    if not result["deliveries_per_s"]:
        reasons.append(f"{case}: no steady rate")
    if not result["before"]["quiet"]:
        reasons.append(
            f"{case} started before the previous half's work was done "
            f"(held in memory: {result['before']['held_in_memory']})"
        )
    cleanup = result.get("hanging_cleanup")
    if cleanup is not None and not cleanup.get("lane_drained"):
        reasons.append(f"{case}: its hanging lane did not drain within 30 s after it")
    return "; ".join(reasons) or None


def _judge(pair: dict[str, Any], registered: bool, after: dict[str, Any] | None) -> None:
    """Whether the pair counts (and why not), and its ratio: the beside-hanging rate over the
    mean of the alone halves on either side of it (the pair's own, and the next one's)."""
    reasons = [f"failed: {pair['error']}"] if "error" in pair else []
    for case in CASES if registered else CASES[:1]:
        if (reason := _invalid(pair.get(case), case)) is not None:
            reasons.append(reason)
    pair["included"] = not reasons
    pair["excluded_because"] = "; ".join(reasons) or None
    if not registered or reasons:
        return
    alone = pair["alone"]["deliveries_per_s"]
    beside = pair["beside_hanging"]["deliveries_per_s"]
    pair["ratio_to_own_alone"] = round(beside / alone, 3)
    why_not = _invalid(after, "the next alone half")
    if why_not is None:
        assert after is not None
        pair["alone_after_per_s"] = after["deliveries_per_s"]
        pair["ratio"] = round(beside / ((alone + after["deliveries_per_s"]) / 2), 3)
        pair["bracketed"] = True
    else:  # kept, against its own alone half only, and said so
        pair["ratio"] = pair["ratio_to_own_alone"]
        pair["bracketed"] = False
        pair["not_bracketed_because"] = why_not


def _medians(halves: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [h["deliveries_per_s"] for h in halves]
    cpu = [
        h["notifier_core_ms_per_delivery"] for h in halves if "notifier_core_ms_per_delivery" in h
    ]
    return {
        "halves": len(halves),
        "median_deliveries_per_s": round(statistics.median(rates), 1) if rates else None,
        "median_notifier_core_ms_per_delivery": round(statistics.median(cpu), 2) if cpu else None,
        "deliveries_per_s_by_half": rates,
    }


def _summary(pair: dict[str, Any]) -> str:
    parts = []
    for case in CASES:
        result = pair.get(case)
        if result:
            parts.append(
                f"{case} {result['deliveries_per_s']}/s "
                f"({result.get('notifier_core_ms_per_delivery')} core-ms/delivery)"
            )
    if "ratio" in pair:
        parts.append(
            f"ratio {pair['ratio']} (to its own alone half {pair['ratio_to_own_alone']}"
            + (f", next alone {pair['alone_after_per_s']}/s)" if pair["bracketed"] else ")")
        )
    if not pair["included"]:
        parts.append(f"EXCLUDED: {pair['excluded_because']}")
    return ", ".join(parts)
