"""Phase 3: SSE subscribers held by one API process, and one event fanned out to all."""

from __future__ import annotations

import asyncio

import aiohttp

from bench.common import Row, write_json
from bench.context import Run, say, serving, wait_http
from bench.e2e import settle
from bench.sse import fan_out
from tests.support import free_port

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
    open_seconds = 30.0 if run.args.quick else 60.0
    pid = run.stack.pids()["api"]
    async with run.profiled("api opening streams", pid, min(20.0, open_seconds / 2)) as prof:
        ours = await fan_out(
            f"{api}/v1/generations/{generation}/events",
            auth,
            n,
            server_pid=pid,
            fire=cancel,
            open_seconds=open_seconds,
        )
    run.results["phase_profiles"]["api opening streams"].update(prof)
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
            note=f"first stream at {ours.get('first_arrival_ms')} ms; while fanning out the "
            f"server spent {ours['server_cpu_s_fanning_out']} core-s "
            f"({ours.get('server_kernel_share_fanning_out')} of it in the kernel), the "
            f"subscribers {ours.get('subscribers_cpu_s_fanning_out')}",
        ),
    ]
