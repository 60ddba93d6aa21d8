"""Live streams over real HTTP, fed by the real broker, with the whole pipeline running: two API
instances (two apps on two ports, no sticky routing) both deliver every event; a client that
disconnects resumes with Last-Event-ID without losing one; streams end after the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from api.app import create_app
from fastapi import FastAPI
from shared.settings import Settings, load_settings
from sqlalchemy import event

from tests.e2e.harness import Api, eventually, running_pipeline, serve_asgi
from tests.support import ADMIN_KEY, free_port

STATUS_ORDER = [
    "pending_clarification",
    "pending_confirmation",
    "confirmed",
    "processing",
    "completed",
]
LIGHTHOUSE = "make a landscape 4 second video of a lighthouse in a storm at night"


@dataclass
class Cluster:
    a: Api  # instance A
    b: Api  # instance B
    key: str
    app_b: FastAPI
    other_key: str

    def url(self, api: Api, path: str) -> str:
        return f"{api.http.base_url}{path}"


async def _user(base_url: str, name: str) -> str:
    async with httpx.AsyncClient(base_url=base_url) as admin:
        r = await admin.post(
            "/v1/admin/users", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["api_key"])


@pytest.fixture
async def cluster(
    env: dict[str, str], prepared: Settings, clean_db: None
) -> AsyncIterator[Cluster]:
    port_b = free_port()
    overrides = {"SSE_HEARTBEAT_SECONDS": "0.3"}
    settings_a = load_settings(**{**env, **overrides})
    settings_b = load_settings(**{**env, **overrides, "API_PORT": str(port_b)})
    app_b = create_app(settings_b)
    async with running_pipeline(settings_a), serve_asgi(app_b, port_b):
        key = await _user(settings_a.public_url, "sse")
        other = await _user(settings_b.public_url, "someone else")
        a, b = Api(settings_a.public_url, key), Api(settings_b.public_url, key)
        try:
            yield Cluster(a, b, key, app_b, other)
        finally:
            await a.aclose()
            await b.aclose()


@dataclass
class Event:
    name: str | None = None
    id: str | None = None
    data: str = ""
    comment: str | None = None

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse a text/event-stream body as it arrives (comments included, as events)."""
    current = Event()
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Event(comment=line[1:].strip())
            continue
        if line == "":
            if lines:
                current.data = "\n".join(lines)
            if current.name or current.id or lines:
                yield current
            current, lines = Event(), []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            current.name = value
        elif name == "id":
            current.id = value
        elif name == "data":
            lines.append(value)


@dataclass
class Recorder:
    """Reads one stream to its end in the background, keeping every event."""

    seen: list[Event] = field(default_factory=list)
    comments: int = 0
    ended: bool = False

    async def run(self, url: str, headers: dict[str, str]) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for e in events(response):
                if e.comment is not None:
                    self.comments += 1
                else:
                    self.seen.append(e)
        self.ended = True

    def statuses(self) -> list[str]:
        out: list[str] = []
        for e in self.seen:
            status = e.json["status"]
            if not out or out[-1] != status:
                out.append(status)
        return out


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_every_status_in_order_on_two_instances_and_resume_loses_nothing(
    cluster: Cluster,
) -> None:
    c = cluster
    created = await c.a.create({"prompt": "a fox"})  # vague: every question is asked
    assert created.status_code == 201, created.text
    gen_id = created.json()["id"]
    path = f"/v1/generations/{gen_id}/events"

    # Instance A: one uninterrupted stream, from the start to the end.
    whole = Recorder()
    whole_task = asyncio.create_task(whole.run(c.url(c.a, path), _auth(c.key)))

    # Instance B: a stream that answers the questions, then disconnects once the generation
    # awaits confirmation.
    first_part: list[Event] = []
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
        client.stream("GET", c.url(c.b, path), headers=_auth(c.key)) as response,
    ):
        assert response.status_code == 200
        answered = False
        async for e in events(response):
            if e.comment is not None:
                continue
            first_part.append(e)
            gen = e.json
            if gen["status"] == "pending_clarification" and gen["questions"] and not answered:
                await asyncio.sleep(1.0)  # idle: heartbeats flow meanwhile
                r = await c.a.http.post(  # answered through A, streamed by B
                    f"/v1/generations/{gen_id}/answers",
                    json={
                        "answers": {
                            "aspect_ratio": "9:16",
                            "duration_seconds": 4,
                            "detail": "in deep snow at dawn",
                        }
                    },
                )
                assert r.status_code == 200, r.text
                answered = True
            if gen["status"] == "pending_confirmation":
                break  # the client goes away
    last_id = first_part[-1].id
    assert last_id is not None

    # While B's client is away: confirm, and let the video finish.
    confirmed = await c.b.http.post(f"/v1/generations/{gen_id}/confirm")
    assert confirmed.status_code == 200, confirmed.text
    done = await c.a.wait_status(gen_id, "completed", "failed", within=90)
    assert done["status"] == "completed", done

    # B's client comes back with Last-Event-ID: everything it missed, in order, then the end.
    resumed = Recorder()
    await asyncio.wait_for(
        resumed.run(c.url(c.b, path), {**_auth(c.key), "Last-Event-ID": last_id}), 30
    )
    await asyncio.wait_for(whole_task, 30)

    assert whole.ended and resumed.ended  # both streams ended by themselves after `completed`
    assert whole.statuses() == STATUS_ORDER
    assert whole.seen[-1].name == "generation.completed"
    assert whole.seen[-1].json["result"]["video_url"]
    assert whole.comments >= 2  # heartbeats while idle (every 0.3 s here)

    ids = [int(e.id or 0) for e in whole.seen]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # one event per version, no gap
    b_ids = [int(e.id or 0) for e in first_part + resumed.seen]
    assert b_ids == list(range(b_ids[0], ids[-1] + 1))  # B missed nothing across the gap
    assert int(resumed.seen[0].id or 0) == int(last_id) + 1
    assert [e.name for e in resumed.seen][:2] == ["generation.confirmed", "generation.processing"]
    # B's events and A's are the same events.
    by_id = {e.id: (e.name, e.json["status"]) for e in whole.seen}
    for e in first_part + resumed.seen:
        if e.id in by_id:
            assert by_id[e.id] == (e.name, e.json["status"])
    names = {e.name for e in whole.seen}
    assert {"generation.clarification_requested", "generation.awaiting_confirmation"} <= names


async def test_a_finished_generation_sends_its_final_state_once_and_auth_is_checked(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    c = cluster
    caplog.set_level(logging.DEBUG)
    created = await c.b.create(
        {
            "prompt": "a red fox running through fresh snow at dawn, cinematic",
            "auto_confirm": True,
            "params": {"aspect_ratio": "16:9", "duration_seconds": 4},
        }
    )
    gen_id = created.json()["id"]
    await c.a.wait_status(gen_id, "completed", within=90)
    path = f"/v1/generations/{gen_id}/events"

    final = Recorder()
    await asyncio.wait_for(final.run(c.url(c.a, path), _auth(c.key)), 10)
    assert [(e.name, e.json["status"]) for e in final.seen] == [
        ("generation.completed", "completed")
    ]
    version = final.seen[0].id

    async with httpx.AsyncClient() as client:
        # Already has the final event: 204, which tells an EventSource to stop reconnecting.
        again = await client.get(
            c.url(c.b, path), headers={**_auth(c.key), "Last-Event-ID": str(version)}
        )
        assert again.status_code == 204
        # Another user's generation is as unknown as a made-up one; no key is a 401.
        theirs = await client.get(c.url(c.b, path), headers=_auth(c.other_key))
        assert theirs.status_code == 404
        assert (await client.get(c.url(c.b, path))).status_code == 401
        # A browser trades its key for a stream token and passes it in the query.
        minted = await client.post(c.url(c.a, "/v1/stream-tokens"), headers=_auth(c.key))
        assert minted.status_code == 201
        token = minted.json()["token"]
        assert token.startswith("st_") and c.key not in token
        by_token = await client.get(c.url(c.b, path), params={"token": token})
        assert by_token.status_code == 200 and "event: generation.completed" in by_token.text
        other_token = (
            await client.post(c.url(c.b, "/v1/stream-tokens"), headers=_auth(c.other_key))
        ).json()["token"]
        assert (
            await client.get(c.url(c.a, path), params={"token": other_token})
        ).status_code == 404
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        refused = await client.get(c.url(c.a, path), params={"token": forged})
        assert refused.status_code == 401
        assert "stream token" in refused.json()["detail"]
        # A stream token is not an API key.
        assert (
            await client.get(c.url(c.a, f"/v1/generations/{gen_id}"), headers=_auth(token))
        ).status_code == 401
    # Neither keys nor tokens reach the server's logs (its access line names the route, not
    # the URL). The test's own HTTP client logs its URLs: those lines are not the server's.
    server = [r for r in caplog.records if r.name.startswith(("reelflow", "uvicorn", "api"))]
    logged = "".join(f"{r.getMessage()} {r.__dict__}" for r in server)
    assert "/v1/generations/{generation_id}/events" in logged
    for secret in (c.key, c.other_key, token, other_token, forged):
        assert secret not in logged


async def test_the_conversation_stream_carries_messages_and_statuses_and_resumes(
    cluster: Cluster,
) -> None:
    c = cluster
    conversation_id = (await c.a.http.post("/v1/conversations", json={})).json()["id"]
    path = f"/v1/conversations/{conversation_id}/events"
    seen: list[Event] = []

    async def watch(api: Api, headers: dict[str, str]) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client,
            client.stream("GET", c.url(api, path), headers=headers) as response,
        ):
            assert response.status_code == 200
            async for e in events(response):
                if e.comment is None:
                    seen.append(e)

    async with httpx.AsyncClient() as client:  # someone else's conversation is unknown
        assert (await client.get(c.url(c.a, path), headers=_auth(c.other_key))).status_code == 404
    watcher = asyncio.create_task(watch(c.b, _auth(c.key)))
    await asyncio.sleep(0.3)
    say = f"/v1/conversations/{conversation_id}/messages"
    asked = await c.a.http.post(say, json={"content": LIGHTHOUSE})
    assert asked.status_code == 201, asked.text
    gen_id = asked.json()["generation"]["id"]

    def messages() -> list[dict[str, Any]]:
        return [e.json for e in seen if e.name == "message"]

    async def summary_arrived() -> bool:
        return any("Shall I go ahead" in m["content"] for m in messages())

    await eventually(summary_arrived, within=30)
    assert (await c.b.http.post(say, json={"content": "yes"})).status_code == 201

    async def video_arrived() -> bool:
        return any(m["attachments"] for m in messages())

    await eventually(video_arrived, within=90)
    contents = [m["content"] for m in messages()]
    assert contents[0] == LIGHTHOUSE and "yes" in contents
    assert "Generating video…" in contents
    video = next(m for m in messages() if m["attachments"])["attachments"][0]
    assert video["url"].startswith("http") and "sig=" in video["url"]
    statuses = [e.json["status"] for e in seen if e.name and e.name.startswith("generation.")]
    assert statuses[0] == "pending_confirmation" and statuses[-1] == "completed"
    assert "processing" in statuses
    assert all(e.json["id"] == gen_id for e in seen if e.name and e.name.startswith("generation."))
    cursor = [e.id for e in seen if e.name == "message"][-1]
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher

    # Away: a message and the API's reply. Back with Last-Event-ID: both arrive.
    hello = (await c.a.http.post(say, json={"content": "thanks!"})).json()
    seen.clear()
    watcher = asyncio.create_task(watch(c.a, {**_auth(c.key), "Last-Event-ID": str(cursor)}))

    async def caught_up() -> bool:
        ids = {m["id"] for m in messages()}
        return {hello["message"]["id"], hello["reply"]["id"]} <= ids

    await eventually(caught_up, within=10)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher

    # The timeline: every event of the generation, in order, from the record.
    timeline = (await c.b.http.get(f"/v1/generations/{gen_id}/timeline")).json()["items"]
    assert [t["event"] for t in timeline][:3] == [
        "generation.requested",
        "generation.awaiting_confirmation",
        "generation.confirmed",
    ]
    assert timeline[-1]["event"] == "generation.completed"
    assert [t["version"] for t in timeline] == list(range(1, len(timeline) + 1))
    assert all(t["published_at"] for t in timeline)
    assert timeline[1]["details"]["estimated_cost_usd"] == 0.0


async def test_idle_streams_make_no_database_queries(cluster: Cluster) -> None:
    """Open streams wait on the broker feed: no query per client while nothing happens."""
    c = cluster
    gen_id = (await c.b.create({"prompt": LIGHTHOUSE, "params": {"aspect_ratio": "16:9"}})).json()[
        "id"
    ]
    await c.b.wait_status(gen_id, "pending_clarification", "pending_confirmation", within=30)

    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM outbox WHERE published_at IS NULL" not in statement:  # the outbox relay's poll
            statements.append(statement)

    engine = c.app_b.state.runtime.engine.sync_engine
    recorders = [Recorder() for _ in range(10)]
    url = c.url(c.b, f"/v1/generations/{gen_id}/events")
    tasks = [asyncio.create_task(r.run(url, _auth(c.key))) for r in recorders]

    async def all_open() -> bool:
        return all(r.seen for r in recorders)

    await eventually(all_open, within=10)
    await asyncio.sleep(0.5)  # let the opening reads finish
    event.listen(engine, "before_cursor_execute", count)
    try:
        comments_before = sum(r.comments for r in recorders)
        await asyncio.sleep(2.0)
        assert sum(r.comments for r in recorders) >= comments_before + 10  # alive, heartbeating
    finally:
        event.remove(engine, "before_cursor_execute", count)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert statements == []

    # The subscriptions end with the streams.
    async def unsubscribed() -> bool:
        return c.app_b.state.realtime.feed.subscribers == 0

    await eventually(unsubscribed, within=10)
