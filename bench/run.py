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
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import profile as profiler
from bench import report
from bench.common import (
    REPO,
    RESULTS,
    CpuMeter,
    Row,
    machine,
    rows_json,
    write_json,
)
from bench.e2e import Pipeline, half_rate, measure_point, settle
from bench.reads import wrk
from bench.receiver import FastReceiver, HangingReceiver
from bench.sse import fan_out
from bench.stack import SERVICES, Stack, close_servers, close_stack, open_stack, start_servers
from bench.webhooks import Endpoints, delivery_rate
from tests.support import free_port


@dataclass
class Run:
    args: argparse.Namespace
    stack: Stack
    pipeline: Pipeline
    receiver: FastReceiver
    user_id: str
    api_key: str
    started: float = field(default_factory=time.monotonic)
    rows: list[Row] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    unmeasured: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        return {**self.stack.pids(), "driver": os.getpid()}

    @property
    def window(self) -> float:
        return 5.0 if self.args.quick else 8.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


async def python_json(*args: str, limit: float) -> dict[str, Any]:
    """Run `python -m …` in a process of its own; its last stdout line, as JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {err.decode()[-800:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


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


SWEEP = (10, 30, 100, 300, 1000)


async def end_to_end(run: Run) -> None:
    pipeline = run.pipeline
    for _ in range(5):  # the fake renders its MP4 once; connections and caches warm up
        await pipeline.one()
    points: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    # A closed loop at C in flight needs about C / rate seconds to turn over once (warm-up),
    # as long again to drain; points that would take longer than this are left out.
    turnover_limit = 12.0 if run.args.quick else 35.0
    for concurrency in SWEEP:
        if best is not None and best["rate_per_s"] > 0:
            turnover = concurrency / best["rate_per_s"]
            if turnover > turnover_limit:
                run.unmeasured.append(
                    f"end to end at {concurrency} in flight: at {best['rate_per_s']:.1f}/s one "
                    f"turnover takes ~{turnover:.0f} s, over this run's {turnover_limit:.0f} s "
                    "per point"
                )
                continue
        point = await measure_point(
            pipeline, run.stack.rabbit.url, run.pids, concurrency, run.window
        )
        data = point.as_dict()
        points.append(data)
        say(
            f"e2e C={concurrency}: {data['rate_per_s']}/s p50 {data['latency']['p50_ms']} ms "
            f"p99 {data['latency']['p99_ms']} ms, failed {data['failed']}"
        )
        if best is None or data["rate_per_s"] > best["rate_per_s"]:
            best = data
        await settle(run.stack.rabbit.url)
    assert best is not None
    rate = best["rate_per_s"]
    half = await half_rate(pipeline, max(0.5, rate / 2), duration=2 * run.window)
    await settle(run.stack.rabbit.url)
    run.results["e2e"] = {
        "provider": "veo (fake, done at the first poll; 1280x720 4 s MP4)",
        "webhooks_per_generation": dict(pipeline.webhooks),
        "sweep": points,
        "best": best,
        "half_rate": half.as_dict(),
    }
    write_json("e2e", run.results["e2e"])
    say(f"e2e half rate {half.rate:.1f}/s: {half.as_dict()['latency']}")

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
            "bare FastStream 6-hop chain",
            chain_rate,
            "≥ 0.35× chain",
            None if ratio is None else ratio >= 0.35,
        ),
        Row(
            "1 end to end",
            f"p50 POST → completed webhook at half rate ({half.rate:.1f}/s)",
            lat["p50_ms"],
            "ms",
            "chain p50 at its half rate",
            chain_lat.get("p50_ms"),
            "≤ 50 ms",
            None if lat["p50_ms"] is None else lat["p50_ms"] <= 50,
        ),
        Row(
            "1 end to end",
            "p99 POST → completed webhook at half rate",
            lat["p99_ms"],
            "ms",
            "chain p99 at its half rate",
            chain_lat.get("p99_ms"),
            "≤ 250 ms",
            None if lat["p99_ms"] is None else lat["p99_ms"] <= 250,
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


async def profile(run: Run) -> None:
    if profiler.py_spy() is None:
        run.results["profile"] = {"note": "py-spy not installed"}
        run.unmeasured.append("profile: py-spy not installed")
        return
    best = run.results["e2e"]["best"]
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

    from bench.load import closed_loop

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
    await settle(run.stack.rabbit.url)
    say("profile written")


# -- 2. status reads ------------------------------------------------------------------------------


async def reads(run: Run) -> None:
    generation = run.pipeline.last_id
    assert generation is not None, "no completed generation to read"
    seconds = 4.0 if run.args.quick else 6.0
    url = f"{run.stack.api_url}/v1/generations/{generation}"
    auth = {"Authorization": f"Bearer {run.api_key}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=auth) as response:
        etag = response.headers.get("ETag")
        status = response.status
    if status != 200:
        raise RuntimeError(f"GET {url}: {status}")
    pids = {"server": run.stack.pids()["api"], "postgres": run.stack.postgres.pid}
    full = await wrk_metered(pids, url, auth, seconds)
    cached = (
        await wrk_metered(pids, url, {**auth, "If-None-Match": etag}, seconds) if etag else None
    )
    if etag is None:
        run.unmeasured.append("status reads, 304 path: the API sent no ETag")
    baselines: dict[str, Any] = {}
    for loop in ("uvloop", "asyncio"):
        port = free_port()
        args = ["--dsn", run.stack.settings.database_url, "--port", str(port), "--loop", loop]
        async with serving("bench.baseline_api", *args) as server:
            base = f"http://127.0.0.1:{port}"
            await wait_http(f"{base}/healthz")
            pids = {"server": server.pid, "postgres": run.stack.postgres.pid}
            baselines[loop] = await wrk_metered(
                pids, f"{base}/v1/generations/{generation}", {}, seconds
            )
    run.results["reads"] = {
        "api": full,
        "api_304": cached,
        "baseline": baselines,
        "generation": generation,
    }
    write_json("reads", run.results["reads"])
    base = baselines["uvloop"]
    say(
        f"reads: {full['requests_per_s']}/s (304: {cached and cached['requests_per_s']}), "
        f"baseline {base['requests_per_s']}/s"
    )
    for label, data in (("GET /v1/generations/{id}", full), ("same, 304 (If-None-Match)", cached)):
        if data is None:
            continue
        rate, p99 = data["requests_per_s"], data["latency"].get("p99_ms")
        base_rate = base["requests_per_s"]
        run.rows += [
            Row(
                "2 status reads",
                f"{label}, requests/s at 50 connections",
                rate,
                "/s",
                "bare FastAPI + asyncpg SELECT (uvicorn defaults)",
                base_rate,
                "≥ 0.5× baseline",
                None if not (rate and base_rate) else rate / base_rate >= 0.5,
                note=f"{data['non_2xx_3xx']} bad answers" if data["non_2xx_3xx"] else None,
            ),
            Row(
                "2 status reads",
                f"{label}, p99",
                p99,
                "ms",
                "baseline p99",
                base["latency"].get("p99_ms"),
                "≤ 20 ms",
                None if p99 is None else p99 <= 20,
            ),
        ]
    asyncio_base = baselines["asyncio"]["requests_per_s"]
    run.notes.append(
        f"Status-read baseline on the stdlib asyncio loop (the loop `reelflow api` runs on): "
        f"{asyncio_base} requests/s, against {base['requests_per_s']} on uvloop."
    )


async def wrk_metered(
    pids: dict[str, int], url: str, headers: dict[str, str], seconds: float
) -> dict[str, Any]:
    """wrk's figures, and the CPU the server and the database spent per request meanwhile."""
    meter = CpuMeter(pids)
    meter.start()
    result = await wrk(url, headers, seconds)
    cores = meter.cores(meter.stop())
    result["cpu_cores"] = cores
    if result["requests_per_s"]:
        result["server_core_ms_per_request"] = round(
            1000 * cores["server"] / result["requests_per_s"], 3
        )
    return result


@contextlib.asynccontextmanager
async def serving(module: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A baseline server (`python -m module args…`) in a process of its own, for the block."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_http(url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {within}s")


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
    alone = await measured(events)
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


# -- 3. live streams -----------------------------------------------------------------------------


async def streams(run: Run) -> None:
    api = run.stack.api_url
    auth = {"Authorization": f"Bearer {run.api_key}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{api}/openapi.json") as response:
            paths = (await response.json()).get("paths", {})
        if "/v1/generations/{generation_id}/events" not in paths:
            run.unmeasured.append("live streams: GET /v1/generations/{id}/events is not served")
            return
        body = {
            "prompt": "A red fox running through fresh snow at dawn, cinematic",
            "params": {"aspect_ratio": "16:9", "resolution": "720p", "duration_seconds": 4},
        }
        async with http.post(f"{api}/v1/generations", json=body) as response:
            generation = (await response.json())["id"]
        for _ in range(200):
            async with http.get(f"{api}/v1/generations/{generation}") as response:
                if (await response.json())["status"] == "pending_confirmation":
                    break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the stream's generation never reached pending_confirmation")

    async def cancel() -> None:
        async with (
            aiohttp.ClientSession(headers=auth) as http,
            http.post(f"{api}/v1/generations/{generation}/cancel") as response,
        ):
            if response.status != 200:
                raise RuntimeError(f"cancel: {response.status} {await response.text()}")

    n = 2000 if run.args.quick else 10_000
    open_seconds = 30.0 if run.args.quick else 90.0
    pid = run.stack.pids()["api"]
    ours = await fan_out(
        f"{api}/v1/generations/{generation}/events",
        auth,
        n,
        server_pid=pid,
        fire=cancel,
        open_seconds=open_seconds,
    )
    say(f"streams: {ours}")
    await settle(run.stack.rabbit.url)
    port = free_port()
    async with serving("bench.baseline_sse", "--port", str(port)) as server:
        base_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{base_url}/healthz")

        async def fire() -> None:
            async with aiohttp.ClientSession() as http, http.post(f"{base_url}/fire") as r:
                await r.read()

        bare = await fan_out(
            f"{base_url}/v1/generations/x/events",
            {},
            n,
            server_pid=server.pid,
            fire=fire,
            open_seconds=open_seconds,
        )
    say(f"streams baseline: {bare}")
    run.results["streams"] = {"api": ours, "baseline_bare_starlette": bare}
    write_json("streams", run.results["streams"])
    held, rss, p99 = ours["held"], ours["rss_held_mb"], ours["fan_out"]["p99_ms"]
    run.rows += [
        Row(
            "3 live streams",
            f"SSE subscribers held by one API process (of {n:,} asked, "
            f"{open_seconds:.0f} s to open; {ours['opened_per_s']}/s)",
            held,
            "",
            "bare Starlette SSE",
            bare["held"],
            "10,000",
            held >= 10_000,
        ),
        Row(
            "3 live streams",
            f"API RSS holding them ({ours['kb_per_stream']} KB each)",
            rss,
            "MB",
            "bare Starlette SSE",
            bare["rss_held_mb"],
            "< 1,024 MB at 10,000",
            None if held < 10_000 else rss < 1024,
            note=None
            if held >= 10_000
            else f"~{ours['rss_before_mb'] + (ours['kb_per_stream'] or 0) * 10_000 / 1024:,.0f} MB "
            "at 10,000 by extrapolation",
        ),
        Row(
            "3 live streams",
            f"fan-out p99, cancel → event at every stream ({ours['received']}"
            f" received, {ours['missed']} missed)",
            p99,
            "ms",
            "bare Starlette broadcast",
            bare["fan_out"]["p99_ms"],
            "≤ 200 ms",
            None if p99 is None else p99 <= 200,
        ),
    ]


# -- 6. scaling ----------------------------------------------------------------------------------


async def scaling(run: Run) -> None:
    one = run.results["e2e"]["best"]
    keys = [run.stack.start(service, 2) for service in SERVICES]
    await asyncio.gather(*(run.stack.ready(key) for key in keys))
    run.pipeline.set_apis(run.stack.api_urls())
    points = []
    concurrencies = sorted({one["concurrency"], min(1000, one["concurrency"] * 3)})
    for concurrency in concurrencies:
        if concurrency / max(one["rate_per_s"], 0.1) > (12.0 if run.args.quick else 35.0):
            run.unmeasured.append(f"two replicas at {concurrency} in flight: too long")
            continue
        point = await measure_point(
            run.pipeline, run.stack.rabbit.url, run.pids, concurrency, run.window
        )
        points.append(point.as_dict())
        say(f"2 replicas C={concurrency}: {point.load.rate:.1f}/s")
        await settle(run.stack.rabbit.url)
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
            *("--operations", "1000", "--seconds", "30", "--timeout", "240"),
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
    if not out.exists():
        return
    data = json.loads(out.read_text())
    age = (time.time() - out.stat().st_mtime) / 60
    source = f"veo_wait.json, {age:.0f} min old" if age > 15 else None
    held = data.get("max_pending_at_once")
    rss = data.get("rss_while_waiting_mb") or data.get("peak_rss_mb")
    idle = data.get("idle_rss_mb")
    waiting_s = (data.get("first_done_after_s") or 0) - (data.get("all_submitted_after_s") or 0)
    cpu = data.get("cpu_waiting_s")
    per_op_min = (cpu / (held * waiting_s / 60)) * 1000 if cpu and held and waiting_s > 0 else None
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
            "worker RSS while waiting",
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
            user_id, key = await stack.new_user()
            await pipeline.open(key, stack.api_urls())
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
                    await settle(rabbit.url, within=20)
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
    write_readme(summary, rows, results)
    say(f"done in {summary['wall_seconds']} s; bench/results/summary.json, bench/README.md")
    print(report.table(rows))
    return 0


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
        report.curve(series)
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
    parts += [
        "### Profile of the end-to-end run",
        "",
        report.profile_section(results.get("profile", {})),
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
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
