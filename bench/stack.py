"""The system under test: private RabbitMQ and PostgreSQL, the fake Veo, and the four services as
real processes (any number of replicas each), started the way `reelflow <service>` starts them.

Private servers keep the benchmark away from the machine's shared ones (other engineers' tests
run there) and from theirs. Unlike the fault tests' PostgreSQL, this one keeps `fsync` on: the
outbox and inbox are commits, and a commit that skips the disk flatters every figure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from shared.db.migrate import migrate
from shared.settings import Settings, load_settings

from tests.fakes.fake_veo import FakeVeoProcess
from tests.infra import PrivatePostgres, PrivateRabbit
from tests.support import ADMIN_KEY, PORT_VARIABLE, SERVICES, free_port

VEO_KEY = "bench-veo-key"
WORKER_KEY = "bench-worker-key"


class DurablePostgres(PrivatePostgres):
    """The fault tests' private PostgreSQL, but with the durability settings of a real one
    (`fsync` and `synchronous_commit` on) and room for every replica's pool."""

    def __init__(self, fsync: bool = True) -> None:
        super().__init__()
        self.fsync = fsync

    def server_options(self) -> str:
        return f"-c max_connections=400 -c fsync={'on' if self.fsync else 'off'}"

    @property
    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


def rabbit_pid(rabbit: PrivateRabbit) -> int:
    return int((rabbit.base / "rabbit.pid").read_text().strip())


@dataclass
class Stack:
    """Servers, fake Veo and service processes; `key` of a process is e.g. `api` or `api.2`."""

    env: dict[str, str]
    logs: Path
    rabbit: PrivateRabbit
    postgres: DurablePostgres
    veo: FakeVeoProcess
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return load_settings(**self.env)

    def api_urls(self) -> list[str]:
        return [
            f"http://127.0.0.1:{self.ports[key]}"
            for key in sorted(self.procs)
            if key.split(".")[0] == "api" and self.procs[key].poll() is None
        ]

    @property
    def api_url(self) -> str:
        return self.api_urls()[0]

    def pids(self) -> dict[str, int]:
        """Every process of the system, by name, for CPU and memory accounting."""
        pids = {key: proc.pid for key, proc in self.procs.items() if proc.poll() is None}
        pids["rabbitmq"] = rabbit_pid(self.rabbit)
        pids["postgres"] = self.postgres.pid
        if self.veo.process is not None:
            pids["fake_veo"] = self.veo.process.pid
        return pids

    def start(self, service: str, replica: int = 1, **extra: str) -> str:
        key = service if replica == 1 else f"{service}.{replica}"
        port = int(self.env[PORT_VARIABLE[service]]) if replica == 1 else free_port()
        self.ports[key] = port
        log = open(self.logs / f"{key}.log", "ab")  # noqa: SIM115 (the child writes to it)
        self.procs[key] = subprocess.Popen(
            ["reelflow", service],
            env={**os.environ, **self.env, PORT_VARIABLE[service]: str(port), **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return key

    async def ready(self, key: str, within: float = 90) -> None:
        deadline = time.monotonic() + within
        url = f"http://127.0.0.1:{self.ports[key]}/readyz"
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.procs[key].poll() is not None:
                    raise RuntimeError(f"{key} exited; see {self.logs}/{key}.log")
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.3)
        raise TimeoutError(f"{key} not ready within {within}s; see {self.logs}/{key}.log")

    async def stop(self, key: str) -> None:
        proc = self.procs.pop(key)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(key) for key in list(self.procs)))

    async def new_user(self, name: str = "bench") -> tuple[str, str]:
        """A user made through the admin route: (its id, its API key)."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.api_url}/v1/admin/users",
                json={"name": name},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ) as response,
        ):
            body: dict[str, Any] = await response.json()
            if response.status != 201:
                raise RuntimeError(f"creating a user failed: {response.status} {body}")
            return str(body["id"]), str(body["api_key"])


def stack_env(
    rabbit: PrivateRabbit, postgres: DurablePostgres, veo_url: str, receiver_url: str, media: Path
) -> dict[str, str]:
    return {
        "DATABASE_URL": f"{postgres.url}/reelflow",
        "AMQP_URL": rabbit.url,
        "ADMIN_API_KEY": ADMIN_KEY,
        # The instant provider: the fake Veo answers `done` at the first poll, made at once.
        "VIDEO_PROVIDER": "veo",
        "GEMINI_API_KEY": VEO_KEY,
        "GOOGLE_GEMINI_BASE_URL": veo_url,
        "VEO_POLL_INTERVAL_SECONDS": "0.001",
        "VEO_POLL_MAX_INTERVAL_SECONDS": "0.05",
        "VEO_SUBMISSIONS_PER_MINUTE": "100000",
        "STORAGE_BACKEND": "local",
        "LOCAL_STORAGE_DIR": str(media),
        "MEDIA_SIGNING_KEY": "bench-media-key",
        "NEXTJS_URL": receiver_url,
        "WORKER_API_KEY": WORKER_KEY,
        "WEBHOOK_RETRY_SCHEDULE": "1,2,4,8,15,30,60",
        "WEBHOOK_TIMEOUT_SECONDS": "5",
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        # Abuse limits and quotas raised out of reach: they are policy, not capacity; their
        # checks (a token taken from a PostgreSQL bucket per request, the user's row locked and
        # counted per confirmation) still run on every request.
        "RATE_LIMIT_PER_SECOND": "1000000",
        "RATE_LIMIT_BURST": "1000000",
        "QUOTA_MAX_CONCURRENT_GENERATIONS": "1000000",
        "QUOTA_VIDEO_SECONDS_PER_DAY": "1000000000",
        "LOG_LEVEL": "INFO",
        **{var: str(free_port()) for var in PORT_VARIABLE.values()},
    }


async def start_servers(
    fsync: bool = True, postgres: DurablePostgres | None = None
) -> tuple[PrivateRabbit, DurablePostgres]:
    """A private RabbitMQ and PostgreSQL (`postgres`, or the bench's own), both started."""
    rabbit, postgres = PrivateRabbit(), postgres or DurablePostgres(fsync=fsync)
    await asyncio.gather(asyncio.to_thread(rabbit.start), asyncio.to_thread(postgres.start))
    return rabbit, postgres


async def close_servers(rabbit: PrivateRabbit, postgres: DurablePostgres) -> None:
    await asyncio.gather(asyncio.to_thread(rabbit.close), asyncio.to_thread(postgres.close))


async def open_stack(
    rabbit: PrivateRabbit,
    postgres: DurablePostgres,
    receiver_url: str,
    *,
    replicas: int = 1,
) -> Stack:
    """Fake Veo, migrations, and `replicas` processes of each service, all ready."""
    logs = Path(tempfile.mkdtemp(prefix="reelflow-bench-"))
    veo = FakeVeoProcess(api_key=VEO_KEY, scenario="succeed polls=0")
    await veo.__aenter__()
    env = stack_env(rabbit, postgres, veo.base_url, receiver_url, logs / "media")
    stack = Stack(env, logs, rabbit, postgres, veo)
    await migrate(stack.settings)
    keys = [stack.start(s, r) for r in range(1, replicas + 1) for s in SERVICES]
    await asyncio.gather(*(stack.ready(k) for k in keys))
    return stack


async def close_stack(stack: Stack) -> None:
    """Stop everything; the logs stay (for `timeline.py` and for reading), the videos go."""
    await stack.stop_all()
    await stack.veo.aclose()
    await asyncio.to_thread(shutil.rmtree, stack.logs / "media", ignore_errors=True)
