"""Private RabbitMQ and PostgreSQL servers for fault tests.

Restarting or killing the machine's shared servers would break every other test running at the
same time; these start a server of their own on a free port, with data on disk, so a test can
stop, kill -9 and restart it and see what survives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import free_port

PG_BIN = (
    Path("/usr/lib/postgresql")
    / (
        sorted(os.listdir("/usr/lib/postgresql"))[-1]
        if os.path.isdir("/usr/lib/postgresql")
        else ""
    )
    / "bin"
)


def _wait(check: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready within {within}s")


class PrivateRabbit:
    """A RabbitMQ node of its own (`rftest<port>@localhost`), durable across restarts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.node = f"rftest{self.port}@localhost"
        self.base = Path(tempfile.mkdtemp(prefix="rf-rabbit-"))
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        # The server scripts drop to the `rabbitmq` user, which must own the node's files.
        for path in (self.base, self.base / "rabbitmq.conf", self.base / "enabled_plugins"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbit.pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(
            lambda: self._ctl("await_startup", timeout=30).returncode == 0,
            90,
            f"RabbitMQ {self.node}",
        )

    def stop(self) -> None:
        self._ctl("stop")

    def kill(self) -> None:
        """What a crash looks like: the node dies without closing anything."""
        pid = int((self.base / "rabbit.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: self._ctl("ping", timeout=10).returncode != 0, 30, "node death")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of its own on a free port (run as the `postgres` user)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="rf-pg-"))
        self.data = self.base / "data"
        shutil.chown(self.base, "postgres", "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _as_postgres(self, *cmd: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120
        )

    def server_options(self) -> str:
        """Throwaway data: no fsync (the benchmark's server keeps it, see bench/stack.py)."""
        return "-c fsync=off"

    def start(self) -> None:
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.base / "log"),
            "-o",
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 {self.server_options()}",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
