"""From a fresh clone, `make run` serves the API and a generation completes through all four
service processes, exactly as a newcomer would run it; Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from shared.settings import Settings

from tests.e2e.harness import Receiver, eventually, serve_asgi
from tests.support import ADMIN_KEY, free_port

REPO = Path(__file__).resolve().parents[2]


def _clone() -> Path:
    target = Path(tempfile.mkdtemp(prefix="reelflow-clone-")) / "reelflow"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(target)],
        check=True,
        timeout=120,
    )
    return target


@pytest.mark.usefixtures("clean_db")
async def test_fresh_clone_make_run_serves_and_completes(
    env: dict[str, str], prepared: Settings
) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = await asyncio.to_thread(_clone)
    receiver, receiver_port, api_port = Receiver(), free_port(), free_port()
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))},
        **env,
        "API_PORT": str(api_port),
        "ORCHESTRATOR_METRICS_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
        "NOTIFIER_METRICS_PORT": str(free_port()),
        "NEXTJS_URL": f"http://127.0.0.1:{receiver_port}",
        "WORKER_API_KEY": "clone-worker-key",
    }
    log = open(clone / "make-run.log", "wb")  # noqa: SIM115 (kept open for the child)
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=run_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{api_port}"
    try:
        async with (
            serve_asgi(receiver.app(), receiver_port),
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):

            async def ready() -> bool:
                assert proc.poll() is None, (clone / "make-run.log").read_text()[-3000:]
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within=240, every=0.5)
            assert f"open {base}" in (clone / "make-run.log").read_text()

            user = await http.post(
                "/v1/admin/users",
                json={"name": "newcomer"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert user.status_code == 201, user.text
            http.headers["Authorization"] = f"Bearer {user.json()['api_key']}"
            created = await http.post(
                "/v1/generations",
                json={
                    "prompt": "A paper boat drifting down a rainy street gutter, macro shot",
                    "auto_confirm": True,
                    "params": {"aspect_ratio": "9:16", "duration_seconds": 4},
                },
            )
            assert created.status_code == 201, created.text
            gen_id = created.json()["id"]

            async def completed() -> dict | None:
                gen = (await http.get(f"/v1/generations/{gen_id}")).json()
                assert gen["status"] != "failed", gen
                return gen if gen["status"] == "completed" else None

            gen = await eventually(completed, within=120, every=0.5)
            assert gen["result"]["resolution"] == "720x1280"
            video = await http.get(gen["result"]["video_url"])
            assert video.status_code == 200 and video.content[4:8] == b"ftyp"

            async def webhook() -> bool:
                return "generation.completed" in receiver.events(gen_id)

            await eventually(webhook, within=30)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.close()
    output = (clone / "make-run.log").read_text()
    # make itself dies of the SIGINT (-2) or reports it (2, 130); the services stop cleanly.
    assert code in (0, 130, 2, -2), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for service in ("api", "orchestrator", "worker", "notifier"):
        assert f'"service": "{service}"' in output
