"""The user's moves: answers, confirm, cancel; 409 for a wrong status, and nothing changes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from api import fastpath
from shared.domain.clarifier import ASPECT, DETAIL, DURATION
from shared.settings import Settings

Problem = Callable[[httpx.Response, int], dict[str, Any]]
Create = Callable[..., Awaitable[dict[str, Any]]]
SetRow = Callable[..., Awaitable[None]]
Row = Callable[[str], Awaitable[dict[str, Any]]]
Outbox = Callable[[str], Awaitable[list[dict[str, Any]]]]

ALL_QUESTIONS = [q.model_dump(mode="json") for q in (ASPECT, DURATION, DETAIL)]
ANSWERS = {"aspect_ratio": "9:16", "duration_seconds": 8, "detail": "slow motion, golden light"}


Asked = Callable[..., Awaitable[dict[str, Any]]]
Move = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def asked(create: Create, set_row: SetRow) -> Asked:
    """`await asked(**body)`: a generation the orchestrator has asked its questions about."""

    async def make(**body: Any) -> dict[str, Any]:
        gen = await create("a fox", **body)
        await set_row(gen["id"], questions=ALL_QUESTIONS, version=2)
        return gen

    return make


@pytest.fixture
def move(client: httpx.AsyncClient, user: dict[str, Any]) -> Move:
    """`await move(gen, "answers", body)`: the user's POST of a move (answers, confirm, cancel)
    on a generation; no body unless given."""

    async def post(gen: dict[str, Any], action: str, body: Any = None) -> httpx.Response:
        url = f"/v1/generations/{gen['id']}/{action}"
        return await client.post(url, json=body, headers=user["headers"])

    return post


async def test_answers_complete_the_spec_and_await_confirmation(
    asked: Asked, move: Move, outbox: Outbox
) -> None:
    gen = await asked()
    r = await move(gen, "answers", {"answers": ANSWERS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "pending_confirmation"
    assert body["answers"] == {
        "aspect_ratio": "9:16",
        "duration_seconds": "8",
        "detail": ANSWERS["detail"],
    }
    assert [q["id"] for q in body["questions"]] == ["aspect_ratio", "duration_seconds", "detail"]
    spec = body["spec"]
    assert spec["aspect_ratio"] == "9:16" and spec["duration_seconds"] == 8
    assert spec["model"] == "local" and spec["prompt"] == "a fox. slow motion, golden light"
    assert body["estimated_cost_usd"] == 0.0
    assert r.headers["etag"] == f'W/"{gen["id"]}.3"'
    events = [(m["type"], m["routing_key"]) for m in await outbox(gen["id"])]
    assert events == [
        ("generation.requested", "generation.requested"),
        ("generation.lifecycle", "generation.awaiting_confirmation"),
    ]

    r = await move(gen, "confirm")
    assert r.status_code == 200 and r.json()["status"] == "confirmed"
    assert (await outbox(gen["id"]))[-1]["routing_key"] == "generation.confirmed"


async def test_answers_with_auto_confirm_go_straight_to_confirmed(
    asked: Asked, move: Move, outbox: Outbox
) -> None:
    gen = await asked(auto_confirm=True)
    r = await move(gen, "answers", {"answers": ANSWERS})
    assert r.status_code == 200 and r.json()["status"] == "confirmed"
    assert (await outbox(gen["id"]))[-1]["routing_key"] == "generation.confirmed"


@pytest.mark.parametrize(
    ("answers", "bad"),
    [
        ({**ANSWERS, "aspect_ratio": "4:3"}, "answers.aspect_ratio"),
        ({**ANSWERS, "duration_seconds": 5}, "answers.duration_seconds"),
        ({**ANSWERS, "detail": "   "}, "answers.detail"),
        ({k: v for k, v in ANSWERS.items() if k != "detail"}, "answers.detail"),
        ({**ANSWERS, "colour": "red"}, "answers.colour"),
        ({**ANSWERS, "detail": "x" * 1001}, "answers.detail"),
        ({**ANSWERS, "detail": "a\u0000b"}, "answers.detail"),
        ({**ANSWERS, "duration_seconds": 8.0}, "answers.duration_seconds"),
        ({**ANSWERS, "duration_seconds": None}, "answers.duration_seconds"),
        ({**ANSWERS, "aspect_ratio": ["16:9"]}, "answers.aspect_ratio"),
    ],
)
async def test_bad_answers_are_a_422_per_question_and_change_nothing(
    asked: Asked, move: Move, row: Row, problem: Problem, answers: dict[str, Any], bad: str
) -> None:
    gen = await asked()
    r = await move(gen, "answers", {"answers": answers})
    errors = problem(r, 422)["errors"]
    assert any(e["field"].startswith(bad) for e in errors), errors
    after = await row(gen["id"])
    assert after["status"] == "pending_clarification" and after["version"] == 2
    assert after["answers"] == {}


@pytest.mark.parametrize("body", [{}, {"answers": []}, {"answers": "9:16"}, {"answers": None}])
async def test_answers_body_must_be_an_object_of_answers(
    asked: Asked, move: Move, problem: Problem, body: dict[str, Any]
) -> None:
    gen = await asked()
    r = await move(gen, "answers", body)
    assert problem(r, 422)["errors"][0]["field"] == "answers"


async def test_answers_before_any_question_is_asked_is_a_409(
    create: Create, move: Move, problem: Problem
) -> None:
    gen = await create("a fox")
    r = await move(gen, "answers", {"answers": ANSWERS})
    assert problem(r, 409)["current_status"] == "pending_clarification"


# status the row is put in -> the moves that must then be refused
ILLEGAL = [
    ("pending_clarification", "confirm"),
    ("pending_confirmation", "answers"),
    ("confirmed", "answers"),
    ("confirmed", "confirm"),
    ("processing", "answers"),
    ("processing", "confirm"),
    ("completed", "answers"),
    ("completed", "confirm"),
    ("completed", "cancel"),
    ("failed", "cancel"),
    ("failed", "confirm"),
    ("cancelled", "cancel"),
    ("cancelled", "answers"),
]


@pytest.mark.parametrize(("status", "action"), ILLEGAL)
async def test_an_illegal_move_is_a_409_and_changes_nothing(
    move: Move,
    create: Create,
    set_row: SetRow,
    row: Row,
    outbox: Outbox,
    problem: Problem,
    status: str,
    action: str,
) -> None:
    gen = await create("a fox")
    await set_row(gen["id"], status=status, questions=ALL_QUESTIONS, version=5)
    before = await row(gen["id"])
    messages_before = len(await outbox(gen["id"]))
    body = {"answers": ANSWERS} if action == "answers" else None
    doc = problem(await move(gen, action, body), 409)
    assert doc["current_status"] == status and status in doc["detail"]
    assert await row(gen["id"]) == before
    assert len(await outbox(gen["id"])) == messages_before


@pytest.mark.parametrize(
    "status", ["pending_clarification", "pending_confirmation", "confirmed", "processing"]
)
async def test_cancel_from_any_live_status(
    move: Move,
    create: Create,
    set_row: SetRow,
    row: Row,
    outbox: Outbox,
    status: str,
) -> None:
    gen = await create("a fox")
    await set_row(gen["id"], status=status, version=4)
    r = await move(gen, "cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await row(gen["id"]))["version"] == 5
    assert (await outbox(gen["id"]))[-1]["routing_key"] == "generation.cancelled"


async def test_another_users_generation_is_a_404_everywhere(
    client: httpx.AsyncClient,
    asked: Asked,
    row: Row,
    make_user: Callable[[str], Awaitable[dict[str, Any]]],
    problem: Problem,
) -> None:
    gen = await asked()
    mallory = (await make_user("mallory"))["headers"]
    gid = gen["id"]
    for method, path, body in (
        ("GET", f"/v1/generations/{gid}", None),
        ("GET", f"/api/generations/{gid}/status", None),
        ("POST", f"/v1/generations/{gid}/answers", {"answers": ANSWERS}),
        ("POST", f"/v1/generations/{gid}/confirm", None),
        ("POST", f"/v1/generations/{gid}/cancel", None),
    ):
        problem(await client.request(method, path, json=body, headers=mallory), 404)
    after = await row(gid)
    assert after["status"] == "pending_clarification" and after["version"] == 2


@pytest.mark.parametrize("gid", ["not-a-uuid", "123", "00000000-0000-0000-0000-000000000000"])
async def test_unknown_or_malformed_ids_are_a_404(
    client: httpx.AsyncClient, user: dict[str, Any], problem: Problem, gid: str
) -> None:
    for method, path in (
        ("GET", f"/v1/generations/{gid}"),
        ("GET", f"/api/generations/{gid}/status"),
        ("POST", f"/v1/generations/{gid}/confirm"),
        ("POST", f"/v1/generations/{gid}/cancel"),
    ):
        problem(await client.request(method, path, headers=user["headers"]), 404)


# --- reading: ETag and 304, the result with signed links, the seed's shape ------------------


async def test_etag_and_if_none_match(
    client: httpx.AsyncClient, user: dict[str, Any], create: Create
) -> None:
    gen = await create("a fox")
    url = f"/v1/generations/{gen['id']}"
    first = await client.get(url, headers=user["headers"])
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag
    same = await client.get(url, headers={**user["headers"], "If-None-Match": tag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag
    listed = await client.get(url, headers={**user["headers"], "If-None-Match": f'"x", {tag}'})
    assert listed.status_code == 304
    await client.post(f"{url}/cancel", headers=user["headers"])
    changed = await client.get(url, headers={**user["headers"], "If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert changed.json()["status"] == "cancelled"


async def test_the_status_read_fast_path_answers_as_the_route_does(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    create: Create,
    make_user: Callable[[str], Awaitable[dict[str, Any]]],
    problem: Problem,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`api.fastpath` serves the canonical id; the same id in its hyphenless spelling goes to
    the FastAPI route: both answer alike, and a revoked key stops at once on either."""
    served: list[str] = []
    original = fastpath.caller_and_generation

    async def counted(*args: Any) -> Any:
        served.append(str(args[3]))
        return await original(*args)

    monkeypatch.setattr(fastpath, "caller_and_generation", counted)
    gen = await create("a fox")
    fast, routed = f"/v1/generations/{gen['id']}", f"/v1/generations/{gen['id'].replace('-', '')}"
    answers = [await client.get(url, headers=user["headers"]) for url in (fast, routed)]
    assert [a.status_code for a in answers] == [200, 200]
    assert served == [gen["id"]]  # the fast path served the first, the route the second
    assert answers[0].content == answers[1].content
    for name in ("etag", "cache-control", "content-type", "content-length"):
        assert answers[0].headers[name] == answers[1].headers[name], name
    tag = {"If-None-Match": answers[0].headers["etag"]}
    for url in (fast, routed):
        again = await client.get(url, headers={**user["headers"], **tag})
        assert again.status_code == 304 and again.headers["etag"] == tag["If-None-Match"]
    bob = await make_user("bob")
    for url in (fast, routed):
        problem(await client.get(url, headers=bob["headers"]), 404)  # not bob's
        problem(await client.get(url, headers={"Authorization": "Bearer rf_live_nope"}), 401)
        problem(await client.get(url), 401)
    [key] = (await client.get("/v1/api-keys", headers=user["headers"])).json()["items"]
    revoked = await client.delete(f"/v1/api-keys/{key['id']}", headers=user["headers"])
    assert revoked.status_code == 204
    for url in (fast, routed):
        problem(await client.get(url, headers=user["headers"]), 401)


RESULT = {
    "video_key": "videos/u/g.mp4",
    "thumbnail_key": "videos/u/g.jpg",
    "duration_seconds": 4.0,
    "file_size_bytes": 123456,
    "resolution": "720x1280",
    "format": "mp4",
    "processing_time_ms": 4321,
}


async def test_a_completed_generation_reads_with_signed_links(
    client: httpx.AsyncClient, user: dict[str, Any], create: Create, set_row: SetRow
) -> None:
    gen = await create("a fox")
    await set_row(gen["id"], status="completed", result=RESULT, version=7)
    body = (await client.get(f"/v1/generations/{gen['id']}", headers=user["headers"])).json()
    result = body["result"]
    assert result["video_url"].split("?")[0].endswith("/media/videos/u/g.mp4")
    assert "exp=" in result["video_url"] and "sig=" in result["video_url"]
    assert result["thumbnail_url"].split("?")[0].endswith("/media/videos/u/g.jpg")
    assert {k: result[k] for k in ("duration_seconds", "file_size_bytes", "resolution")} == {
        "duration_seconds": 4.0,
        "file_size_bytes": 123456,
        "resolution": "720x1280",
    }
    assert result["format"] == "mp4" and result["processing_time_ms"] == 4321
    assert "video_key" not in result

    seed = (
        await client.get(f"/api/generations/{gen['id']}/status", headers=user["headers"])
    ).json()
    record = seed["generation"]
    assert record["id"] == gen["id"] and record["status"] == "completed"
    assert record["resultUrl"].split("?")[0] == result["video_url"].split("?")[0]
    assert record["thumbnailUrl"].split("?")[0] == result["thumbnail_url"].split("?")[0]
    assert record["error"] is None and record["updatedAt"] and record["createdAt"]
    assert record["fileSize"] == 123456 and record["resolution"] == "720x1280"


async def test_progress_and_error_shapes(
    client: httpx.AsyncClient, user: dict[str, Any], create: Create, set_row: SetRow
) -> None:
    gen = await create("a fox")
    await set_row(gen["id"], status="processing", progress={"stage": "generating", "percent": 40.0})
    body = (await client.get(f"/v1/generations/{gen['id']}", headers=user["headers"])).json()
    assert body["progress"] == {"stage": "generating", "percent": 40.0, "queue_position": None}
    seed = (
        await client.get(f"/api/generations/{gen['id']}/status", headers=user["headers"])
    ).json()
    assert seed["generation"]["progress"] == 40.0

    await set_row(
        gen["id"], status="failed", error={"code": "content_policy", "message": "refused"}
    )
    body = (await client.get(f"/v1/generations/{gen['id']}", headers=user["headers"])).json()
    assert body["error"] == {"code": "content_policy", "message": "refused"}
    seed = (
        await client.get(f"/api/generations/{gen['id']}/status", headers=user["headers"])
    ).json()
    assert seed["generation"]["error"] == "refused" and seed["generation"]["resultUrl"] is None


# --- with the Veo provider: a real price ---------------------------------------------------


async def test_answers_price_the_spec_with_the_model_price_table(
    veo_client: httpx.AsyncClient,
    user: dict[str, Any],
    set_row: SetRow,
    prepared: Settings,
) -> None:
    r = await veo_client.post(
        "/v1/generations",
        json={"prompt": "a fox", "params": {"model": "veo-3.1-generate-preview"}},
        headers=user["headers"],
    )
    gen = r.json()
    await set_row(gen["id"], questions=ALL_QUESTIONS, version=2)
    r = await veo_client.post(
        f"/v1/generations/{gen['id']}/answers", json={"answers": ANSWERS}, headers=user["headers"]
    )
    assert r.status_code == 200
    price = prepared.price_per_second_usd["veo-3.1-generate-preview"]
    assert Decimal(str(r.json()["estimated_cost_usd"])) == price * 8
    assert r.json()["spec"]["generate_audio"] is True


async def test_concurrent_moves_apply_once(
    move: Move,
    create: Create,
    set_row: SetRow,
    row: Row,
    outbox: Outbox,
) -> None:
    gen = await create("a fox")
    await set_row(gen["id"], status="pending_confirmation", version=3)
    responses = await asyncio.gather(
        *(move(gen, "confirm") for _ in range(4)), *(move(gen, "cancel") for _ in range(4))
    )
    codes = sorted(r.status_code for r in responses)
    # Whatever wins first, exactly one confirm and at most one cancel (after it) succeed.
    after = await row(gen["id"])
    moved = [r for r in responses if r.status_code == 200]
    assert all(r.status_code in (200, 409) for r in responses), codes
    assert after["version"] == 3 + len(moved)
    assert after["status"] in ("confirmed", "cancelled")
    routing = [m["routing_key"] for m in await outbox(gen["id"])][1:]
    assert len(routing) == len(moved)
    assert routing.count("generation.confirmed") <= 1 and routing.count("generation.cancelled") <= 1
