"""What every phase of the run shares: the run's state, and small process helpers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import REPO, RESULTS, Row
from bench.e2e import Pipeline
from bench.receiver import FastReceiver
from bench.stack import Stack


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
    def turnover_limit(self) -> float:
        """Seconds one closed-loop point may take to turn its in-flight work over once."""
        return 12.0 if self.args.quick else 30.0

    @property
    def sweep_turnover_limit(self) -> float:
        """The same for the end-to-end sweep, whose last point (1,000 in flight) is the curve's
        far end: measured when the system turns it over within this (~60 s at 17/s; then as
        long again to drain it, which the run waits for), else predicted by Little's law."""
        return 12.0 if self.args.quick else 90.0

    @property
    def database(self) -> str:
        """The stack's database, for `settle` to see the work no queue shows."""
        return self.stack.env["DATABASE_URL"]

    @property
    def window(self) -> float:
        return 5.0 if self.args.quick else 8.0

    def profiled(self, name: str, pid: int, seconds: float) -> Any:
        """py-spy (GIL samples) on `pid` during a phase's block, kept as `phase_profiles`."""
        from bench import profile

        folder = RESULTS / "profiles"
        folder.mkdir(parents=True, exist_ok=True)
        slot = self.results.setdefault("phase_profiles", {}).setdefault(name, {})
        slot["seconds"] = max(1, int(seconds))
        slug = name.replace(" ", "_")
        return profile.sampling(pid, slot["seconds"], folder / f"{slug}.gil.txt")

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
