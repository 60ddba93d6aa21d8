"""The four services as real processes on private RabbitMQ/PostgreSQL, and a webhook receiver
that can be taken down — the stage for fault injection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from shared.db.migrate import migrate
from shared.settings import Settings, load_settings

from tests.e2e.harness import Receiver, eventually
from tests.infra import PrivatePostgres, PrivateRabbit
from tests.support import ADMIN_KEY, NO_LIMITS, PORT_VARIABLE, SERVICES, free_port


class KillableReceiver:
    """The Next.js app's webhook route on a fixed port that can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.receiver = Receiver()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.receiver.app(), host="127.0.0.1", port=self.port, log_level="warning"
            )
        )
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.02)

    async def down(self) -> None:
        if self._server and self._task:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None


@dataclass
class Cluster:
    env: dict[str, str]
    logs: Path
    rabbit: PrivateRabbit
    postgres: PrivatePostgres
    receiver: KillableReceiver
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    @property
    def settings(self) -> Settings:
        return load_settings(**self.env)

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child writes to it)
        self.procs[name] = subprocess.Popen(
            ["reelflow", name],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    async def ready(self, name: str, within: float = 90) -> None:
        port = self.env[PORT_VARIABLE[name]]

        async def check() -> bool:
            assert self.procs[name].poll() is None, f"{name} exited; see {self.logs}/{name}.log"
            try:
                async with httpx.AsyncClient(timeout=5) as http:
                    return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(check, within=within, every=0.3)

    async def restart(self, name: str) -> None:
        await asyncio.to_thread(self.kill9, name)
        self.start(name)
        await self.ready(name)

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    async def new_user(self) -> str:
        async with httpx.AsyncClient(base_url=self.api_url, timeout=30) as http:
            response = await http.post(
                "/v1/admin/users",
                json={"name": "chaos"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert response.status_code == 201, response.text
            return str(response.json()["api_key"])


@contextlib.asynccontextmanager
async def cluster(logs: Path, extra_env: dict[str, str] | None = None) -> AsyncIterator[Cluster]:
    rabbit, postgres, receiver = PrivateRabbit(), PrivatePostgres(), KillableReceiver()
    await asyncio.gather(asyncio.to_thread(rabbit.start), asyncio.to_thread(postgres.start))
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        "DATABASE_URL": f"{postgres.url}/reelflow",
        "AMQP_URL": rabbit.url,
        "ADMIN_API_KEY": ADMIN_KEY,
        "LOCAL_STORAGE_DIR": str(logs / "media"),
        "MEDIA_SIGNING_KEY": "chaos-media-key",
        "NEXTJS_URL": receiver.url,
        "WORKER_API_KEY": "chaos-worker-key",
        "WEBHOOK_RETRY_SCHEDULE": "1,2,4,8,15,30,60",
        "WEBHOOK_TIMEOUT_SECONDS": "3",
        "VIDEO_PROVIDER": "local",
        **NO_LIMITS,  # 200 generations from one key
        **{var: str(free_port()) for var in PORT_VARIABLE.values()},
        **(extra_env or {}),
    }
    c = Cluster(env, logs, rabbit, postgres, receiver)
    try:
        await migrate(c.settings)
        await receiver.up()
        for name in SERVICES:
            c.start(name)
        for name in SERVICES:
            await c.ready(name)
        yield c
    finally:
        await c.stop_all()
        await receiver.down()
        await asyncio.gather(asyncio.to_thread(rabbit.close), asyncio.to_thread(postgres.close))
