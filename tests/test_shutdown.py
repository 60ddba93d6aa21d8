"""Each consumer service, as a real process, comes up ready and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import httpx
import pytest

from tests.e2e.harness import eventually

PORT_VARIABLE = {
    "orchestrator": "ORCHESTRATOR_METRICS_PORT",
    "worker": "WORKER_METRICS_PORT",
    "notifier": "NOTIFIER_METRICS_PORT",
}


@pytest.mark.parametrize("service", sorted(PORT_VARIABLE))
@pytest.mark.usefixtures("prepared")
async def test_ready_then_sigterm_stops_cleanly(env: dict[str, str], service: str) -> None:
    proc = subprocess.Popen(
        ["reelflow", service],
        env={**os.environ, **env, "LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    port = env[PORT_VARIABLE[service]]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def ready() -> bool:
                assert proc.poll() is None, "the service exited before it was ready"
                try:
                    response = await http.get("/readyz")
                except httpx.TransportError:
                    return False
                return response.status_code == 200 and response.json()["ok"] is True

            await eventually(ready, within=60, every=0.3)
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200 and "reelflow_up 1.0" in metrics.text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert code == 0, output[-2000:]
    assert "Shutdown requested" in output and "Service stopped" in output
