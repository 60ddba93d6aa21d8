"""The AsyncAPI document (docs/asyncapi.json) is the code's message catalogue, not a copy of it:
regenerated here and compared, then checked for dangling references, for messages nobody sends
or receives, and against real messages of every type."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import shared.asyncapi as asyncapi
import shared.topology as topology
from faststream.specification.asyncapi.v3_0_0.schema import ApplicationSchema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from shared.messages import (
    CATALOGUE,
    GenerationRequested,
    GenerationSnapshot,
    LifecycleEvent,
    Message,
    RenderReported,
    RenderRequested,
    WebhookDeliveryRequested,
)
from shared.schemas import ErrorInfo, GenerationParams, Progress, RenderResult, RenderSpec
from shared.state_machine import Event, Status

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi.document()


def test_checked_in_document_matches_the_code() -> None:
    assert DOC_PATH.read_text() == asyncapi.render(), (
        "docs/asyncapi.json drifted from shared/messages.py or shared/topology.py: run "
        "`make asyncapi` and commit the result"
    )


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert len(refs) > 50
    for ref in refs:
        _resolve(doc, ref)


def test_shape_is_asyncapi_3(doc: dict[str, Any]) -> None:
    parsed = ApplicationSchema.model_validate(doc)  # FastStream's own AsyncAPI 3.0 models
    assert parsed.asyncapi == "3.0.0"
    for name, op in doc["operations"].items():
        channel = _resolve(doc, op["channel"]["$ref"])
        channel_id = op["channel"]["$ref"].removeprefix("#/channels/")
        for m in op["messages"]:
            # An operation's messages must be ones its channel carries.
            assert m["$ref"].startswith(f"#/channels/{channel_id}/messages/"), name
            assert m["$ref"].rsplit("/", 1)[1] in channel["messages"], name
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_message_type_is_sent_and_received(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    assert {m["name"] for m in messages.values()} == set(CATALOGUE)
    sent: set[str] = set()
    received: set[str] = set()
    for op in doc["operations"].values():
        names = {m["$ref"].rsplit("/", 1)[1] for m in op["messages"]}
        (sent if op["action"] == "send" else received).update(names)
    for cls in CATALOGUE.values():
        assert cls.__name__ in sent, f"{cls.TYPE}: no service publishes it (topology.PUBLISHES)"
        assert cls.__name__ in received, f"{cls.TYPE}: no work queue would receive it"


def test_amqp_properties_are_documented(doc: dict[str, Any]) -> None:
    for cls in CATALOGUE.values():
        m = doc["components"]["messages"][cls.__name__]
        props = m["x-amqp-properties"]
        assert props["type"] == m["bindings"]["amqp"]["messageType"] == cls.TYPE
        assert props["delivery_mode"] == 2 and props["correlation_id"] == "generation_id"
        assert "message_id" in props
        headers = _resolve(doc, m["headers"]["$ref"])
        assert "traceparent" in headers["properties"]


def test_routing_keys_follow_the_models() -> None:
    assert asyncapi.routing_keys(GenerationRequested) == ("generation.requested",)
    assert asyncapi.routing_keys(LifecycleEvent) == topology.LIFECYCLE_KEYS
    assert asyncapi.routing_keys(RenderReported) == tuple(
        f"render.{k}" for k in ("started", "progress", "succeeded", "failed")
    )
    assert asyncapi.exchange_of(RenderRequested) == topology.COMMANDS
    assert asyncapi.exchange_of(LifecycleEvent) == topology.EVENTS


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("render.*", "render.started", True),
        ("render.*", "render", False),
        ("render.*", "render.a.b", False),
        ("render.#", "render", True),
        ("#", "a.b.c", True),
        ("generation.confirmed", "generation.confirmed", True),
        ("generation.confirmed", "generation.completed", False),
    ],
)
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    assert asyncapi.topic_matches(pattern, key) is expected


def _examples() -> list[Message]:
    gid, uid = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    spec = RenderSpec(
        model="local",
        prompt="a red fox",
        aspect_ratio="16:9",
        resolution="720p",
        duration_seconds=4,
    )
    result = RenderResult(
        video_key="v.mp4",
        thumbnail_key="t.jpg",
        duration_seconds=4.0,
        file_size_bytes=123,
        resolution="1280x720",
        format="mp4",
        processing_time_ms=10,
    )
    snapshot = GenerationSnapshot(
        status=Status.COMPLETED,
        prompt="a red fox",
        params=GenerationParams(),
        spec=spec,
        estimated_cost_usd=Decimal("0.60"),
        progress=Progress(stage="uploading", percent=100),
        result=result,
        created_at=now,
        updated_at=now,
    )
    return [
        GenerationRequested(generation_id=gid, user_id=uid),
        LifecycleEvent(generation_id=gid, event=Event.COMPLETED, user_id=uid, snapshot=snapshot),
        RenderRequested(generation_id=gid, user_id=uid, spec=spec),
        RenderReported(generation_id=gid, kind="succeeded", result=result),
        RenderReported(
            generation_id=gid, kind="failed", error=ErrorInfo(code="timeout", message="late")
        ),
        WebhookDeliveryRequested(generation_id=gid, delivery_id=uuid.uuid4(), attempt=2),
    ]


def test_real_messages_validate_against_the_document(doc: dict[str, Any]) -> None:
    registry: Registry = Registry().with_resource(
        "urn:reelflow:asyncapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    for message in _examples():
        payload = json.loads(message.model_dump_json())  # exactly what the outbox sends
        schema = {"$ref": f"urn:reelflow:asyncapi#/components/schemas/{type(message).__name__}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(payload)
        bad = {k: v for k, v in payload.items() if k != "generation_id"}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema, registry=registry).validate(bad)
