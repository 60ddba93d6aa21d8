"""No key or secret reaches a log line or an exported span.

A full run of the security matrix (every operation, every kind of caller, good and bad keys in
headers, stream tokens in query strings, signed media links) plus the calls that hand secrets
out (new API keys, webhook secrets and their rotation, stream tokens), with every log record
formatted by the services' own formatter at DEBUG and every span exported in memory; then each
secret used is looked for in all of it. (tests/e2e/test_telemetry.py does the same for the four
services as processes.)
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shared.logging import _Formatter
from shared.settings import Settings
from shared.telemetry import setup_telemetry, shutdown_telemetry

from tests.support import ADMIN_KEY

from .test_security_matrix import World, callers, world  # noqa: F401  (world: a fixture)
from .test_security_matrix import test_the_matrix as run_matrix

NOISY = ("aiormq", "aio_pika", "httpx", "httpcore", "sqlalchemy.engine")


@pytest.fixture
def captured(prepared: Settings) -> Iterator[tuple[io.StringIO, InMemorySpanExporter]]:
    """Every log line (JSON, as the services write them) and every span of what runs inside."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(_Formatter(json_lines=True))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # As `configure_logging` sets them in the services. (httpx here is also the test's own
    # client, whose request lines would show the test's query strings.)
    noisy = {name: logging.getLogger(name) for name in NOISY}
    levels = {name: logger.level for name, logger in noisy.items()}
    for logger in noisy.values():
        logger.setLevel(logging.WARNING)
    spans = InMemorySpanExporter()
    setup_telemetry("api", prepared, exporter=spans)
    try:
        yield lines, spans
    finally:
        shutdown_telemetry()
        root.removeHandler(handler)
        root.setLevel(level)
        for name, logger in noisy.items():
            logger.setLevel(levels[name])


async def test_no_secret_in_logs_or_spans(
    client: httpx.AsyncClient,
    world: World,  # noqa: F811
    captured: tuple[io.StringIO, InMemorySpanExporter],
    prepared: Settings,
) -> None:
    w = world
    lines, spans = captured
    await run_matrix(client, w)

    alice = w.alice["headers"]
    handed_out: dict[str, str] = {}
    made = await client.post("/v1/api-keys", json={"name": "laptop"}, headers=alice)
    handed_out["new API key"] = made.json()["api_key"]
    hook = await client.post(
        "/v1/webhook-endpoints", json={"url": "https://hooks.example.com/x"}, headers=alice
    )
    handed_out["webhook secret"] = hook.json()["secret"]
    rotated = await client.post(
        f"/v1/webhook-endpoints/{hook.json()['id']}/rotate-secret", headers=alice
    )
    handed_out["rotated webhook secret"] = rotated.json()["secret"]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    user = await client.post("/v1/admin/users", json={"name": "zed"}, headers=admin)
    handed_out["admin-made key"] = user.json()["api_key"]
    token = (await client.post("/v1/stream-tokens", headers=alice)).json()["token"]
    handed_out["stream token"] = token
    # Secrets sent where they do not belong still stay out of the logs.
    await client.get(f"/v1/generations/{w.generation}/events?token={handed_out['new API key']}")
    await client.get("/v1/generations", headers={"Authorization": f"Basic {ADMIN_KEY}"})
    await client.get(
        "/v1/generations", headers={"Authorization": f"Bearer {handed_out['webhook secret']}"}
    )

    query = parse_qs(urlsplit(w.media_path).query)
    assert prepared.media_signing_key is not None
    secrets = {
        "alice's key": w.alice["api_key"],
        "mallory's key": w.mallory["api_key"],
        "revoked key": w.revoked_key,
        **{f"key {i}": k for i, k in enumerate(w.secrets_of_alice)},
        "webhook secret (matrix)": w.endpoint_secret,
        "alice's stream token": w.alice_token,
        "mallory's stream token": w.mallory_token,
        "admin key": ADMIN_KEY,
        "media signing key": prepared.media_signing_key.get_secret_value(),
        "media link signature": query["sig"][0],
        **handed_out,
    }
    for caller, (headers, params) in callers(w).items():
        sent = headers.get("Authorization", "").removeprefix("Bearer ") or params.get("token")
        if sent:
            secrets[f"credential of {caller!r}"] = sent
    # The random part after the visible prefix (`rf_live_`, `rf_`, `whsec_`); it may itself
    # contain "_", so strip the known prefix instead of splitting on the last "_".
    secrets.update({f"{k} (its secret part)": _secret_part(v) for k, v in handed_out.items()})

    log = lines.getvalue()
    exported = json.dumps([json.loads(s.to_json()) for s in spans.get_finished_spans()])
    assert log.count("\n") > 100, "the run logged too little to mean anything"
    assert len(spans.get_finished_spans()) > 100, "the run exported too few spans"
    for what, secret in secrets.items():
        assert len(secret) >= 8, what
        assert secret not in log, f"the {what} is in the logs"
        assert secret not in exported, f"the {what} is in an exported span"


def _secret_part(value: str) -> str:
    for prefix in ("rf_live_", "whsec_", "rf_"):
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value
