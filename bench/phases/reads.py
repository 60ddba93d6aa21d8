"""Phase 2: status reads against a bare FastAPI + asyncpg route."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from bench.common import CpuMeter, Row, write_json
from bench.context import Run, say, serving, wait_http
from bench.reads import CONNECTIONS, wrk
from tests.support import free_port

# -- 2. status reads ------------------------------------------------------------------------------


async def reads(run: Run) -> None:
    """Each of the pipeline's users reads its own latest generation with its own key, in
    turn: 50 connections, as many users."""
    if len(run.pipeline.completed_by_key) < len(run.pipeline.api_keys):  # e2e skipped: one each
        await asyncio.gather(*(run.pipeline.one() for _ in run.pipeline.api_keys))
    mine = run.pipeline.completed_by_key
    seconds = 4.0 if run.args.quick else 6.0
    api = run.stack.api_url
    reads_: list[tuple[str, dict[str, str]]] = []
    revalidations: list[tuple[str, dict[str, str]]] = []
    async with aiohttp.ClientSession() as http:
        for key, generation in mine.items():
            path = f"/v1/generations/{generation}"
            auth = {"Authorization": f"Bearer {key}"}
            async with http.get(api + path, headers=auth) as response:
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: {response.status}")
                etag = response.headers.get("ETag")
            reads_.append((path, auth))
            if etag:
                revalidations.append((path, {**auth, "If-None-Match": etag}))
    # The rest of the stack metered too: were it still busy after the end-to-end load (as
    # once suspected at 1,000 in flight), it would show here and not as "other processes".
    stack = run.stack.pids()
    rest = {k: v for k, v in stack.items() if k not in ("api", "postgres")}
    pids = {"server": stack["api"], "postgres": run.stack.postgres.pid, **rest}
    async with run.profiled("api during status reads", pids["server"], seconds - 1) as prof:
        full = await wrk_metered(pids, api, reads_, seconds)
    run.results["phase_profiles"]["api during status reads"].update(prof)
    cached = await wrk_metered(pids, api, revalidations, seconds) if revalidations else None
    # The same 50 clients offering about half of that capacity: the latency of a server that
    # is busy but not saturated (at saturation Little's law sets the mean: 50 ÷ requests/s).
    pause = _half_rate_pause(full)
    paced = await wrk_metered(pids, api, reads_, seconds, pause) if pause else None
    if cached is None:
        run.unmeasured.append("status reads, 304 path: the API sent no ETag")
    baselines: dict[str, Any] = {}
    for loop in ("uvloop", "asyncio"):
        port = free_port()
        args = ["--dsn", run.stack.settings.database_url, "--port", str(port), "--loop", loop]
        async with serving("bench.baseline_api", *args) as server:
            base = f"http://127.0.0.1:{port}"
            await wait_http(f"{base}/healthz")
            pids = {"server": server.pid, "postgres": run.stack.postgres.pid, **rest}
            bare: list[tuple[str, dict[str, str]]] = [(path, {}) for path, _ in reads_]
            baselines[loop] = await wrk_metered(pids, base, bare, seconds)
            if loop == "uvloop" and pause:
                baselines["uvloop_paced"] = await wrk_metered(pids, base, bare, seconds, pause)
    run.results["reads"] = {
        "api": full,
        "api_304": cached,
        "api_paced": paced,
        "baseline": baselines,
        "users": len(reads_),
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
    if paced is not None:
        p99, bare_paced = paced["latency"].get("p99_ms"), baselines.get("uvloop_paced", {})
        run.rows.append(
            Row(
                "2 status reads",
                f"GET /v1/generations/{{id}}, p99 at about half that rate "
                f"({paced['requests_per_s']}/s: 50 connections, each pausing {pause:.0f} ms)",
                p99,
                "ms",
                "bare route's p99, paced alike",
                bare_paced.get("latency", {}).get("p99_ms"),
                "≤ 20 ms (read at half load)",
                None if p99 is None else p99 <= 20,
            )
        )
    asyncio_base = baselines["asyncio"]["requests_per_s"]
    run.notes.append(
        f"Status-read baseline on the stdlib asyncio loop (what uvloop is worth here; "
        f"`reelflow api` runs on uvloop like the baseline): "
        f"{asyncio_base} requests/s, against {base['requests_per_s']} on uvloop."
    )


def _half_rate_pause(saturated: dict[str, Any]) -> float | None:
    """The pause (ms) after each answer that makes 50 connections offer about half of the
    `saturated` run's requests/s (each connection's period is then 100 ÷ rate; its own
    latency comes on top, so the rate offered is a little under half)."""
    rate = saturated.get("requests_per_s")
    return 1000 * 2 * CONNECTIONS / rate if rate else None


async def wrk_metered(
    pids: dict[str, int],
    url: str,
    requests: list[tuple[str, dict[str, str]]],
    seconds: float,
    pause_ms: float | None = None,
) -> dict[str, Any]:
    """wrk's figures, and the CPU the server and the database spent per request meanwhile."""
    meter = CpuMeter(pids)
    meter.start()
    result = await wrk(url, requests, seconds, pause_ms=pause_ms)
    cores = meter.cores(meter.stop())
    result["cpu_cores"] = cores
    if result["requests_per_s"]:
        result["server_core_ms_per_request"] = round(
            1000 * cores["server"] / result["requests_per_s"], 3
        )
    return result
