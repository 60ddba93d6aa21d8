"""Schemathesis against the API's own OpenAPI document: for every operation, generated requests
(valid and invalid, a bounded number each) with a real API key must never get a 500, and every
answer must match what the document declares (status codes, content types, headers, bodies).

The app runs in this process under uvicorn on a thread of its own (its lifespan and database
pool on that thread's event loop), because Schemathesis drives it synchronously.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from api.app import create_app
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from shared.settings import Settings

from tests.support import ADMIN_KEY, free_port

MAX_EXAMPLES = 25
# Schema-valid requests these operations refuse with 422 by rules no JSON Schema can state: a
# parameter the configured provider cannot honour, answers that do not fit the questions asked,
# a cursor this API never issued, a webhook URL on a private network.
SEMANTIC_422 = (
    r"^POST /v1/generations$",
    r"^POST /v1/generations/\{generation_id\}/answers$",
    r"^POST /v1/webhook-endpoints$",
    r"^POST /v1/webhook-endpoints/\{endpoint_id\}/resend-failed$",
    r"^GET /v1/(generations|conversations|webhook-endpoints)$",
    r"^GET /v1/webhook-endpoints/\{endpoint_id\}/deliveries$",
)
CONFIG = SchemathesisConfig.from_dict(
    {
        # Strings PostgreSQL can hold (no NUL): other ones are a documented 422 everywhere.
        # Unknown query parameters are ignored, as most HTTP APIs do, not refused.
        "generation": {"allow-x00": False, "codec": "utf-8", "allow-extra-parameters": False},
        "operations": [
            {
                "include-name-regex": "|".join(SEMANTIC_422),
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "401", "404", "409", "422", "429"]
                    }
                },
            }
        ],
    }
)


class ThreadedServer:
    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(prepared: Settings) -> Iterator[tuple[str, str]]:
    """The API on a thread, and an API key of a user of its own: (base URL, key)."""
    with ThreadedServer(prepared) as server:
        r = httpx.post(
            f"{server.url}/v1/admin/users",
            json={"name": "schemathesis"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert r.status_code == 201, r.text
        yield server.url, r.json()["api_key"]


def fuzz(strategy: Any, auth: dict[str, str]) -> Callable[[], None]:
    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=auth)

    return check


def test_the_api_holds_to_its_openapi_document(served: tuple[str, str]) -> None:
    url, key = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=CONFIG)
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema raises here
        operations += 1
        admin = operation.path.startswith("/v1/admin/")
        auth = {"Authorization": f"Bearer {ADMIN_KEY if admin else key}"}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation.as_strategy(generation_mode=mode), auth)()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to get wrong: no parameters
            except BaseException as exc:  # every operation's findings (groups included)
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:3000]
    assert operations >= 30
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
