"""Phase 2: status reads against a bare FastAPI + asyncpg route."""

from __future__ import annotations

from typing import Any

import aiohttp

from bench.common import CpuMeter, Row, write_json
from bench.context import Run, say, serving, wait_http
from bench.reads import wrk
from tests.support import free_port

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
