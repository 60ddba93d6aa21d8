"""The message catalogue as an AsyncAPI 3.0 document, generated from the code.

Messages and their JSON Schemas come from `messages.CATALOGUE` (pydantic, serialization mode:
what goes on the wire); exchanges, routing keys and queues from `topology`; who sends what from
`topology.PUBLISHES`; who receives from the queues' names. A new message type shows up on its
own; a message that no queue would receive is an error (the relay publishes `mandatory`).
`make asyncapi` writes docs/asyncapi.json; tests/deploy/test_asyncapi.py fails on drift.
"""

from __future__ import annotations

import enum
import inspect
import json
import typing
from collections.abc import Iterable
from typing import Any

from pydantic.json_schema import models_json_schema

from shared import topology
from shared.messages import CATALOGUE, Message
from shared.outbox import _COMMAND_TYPES, _LIVE_TYPES

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"
SCHEMAS = "#/components/schemas/"
TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_EXCHANGE_TYPES = dict(topology.EXCHANGES)


def exchange_of(cls: type[Message]) -> str:
    """The exchange the outbox publishes `cls` on (as `outbox.enqueue` chooses it)."""
    if cls.TYPE in _COMMAND_TYPES:
        return topology.COMMANDS
    return topology.LIVE if cls.TYPE in _LIVE_TYPES else topology.EVENTS


def _choices(annotation: Any) -> list[Any]:
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return list(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return []


def routing_keys(cls: type[Message]) -> tuple[str, ...]:
    """Every routing key `cls` can be published with: its TYPE, or, where `routing_key` is
    overridden, the keys it yields over the values of the one Enum/Literal field it follows."""
    if cls.routing_key is Message.routing_key:
        return (cls.TYPE,)
    for name, info in cls.model_fields.items():
        values = _choices(info.annotation)
        if name == "version" or not values:
            continue
        keys = [cls.model_construct(**{name: v}).routing_key for v in values]
        if len(set(keys)) > 1:
            return tuple(dict.fromkeys(keys))
    raise ValueError(f"{cls.__name__}: cannot enumerate the routing keys it is published with")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` one word, `#` zero or more words."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] in ("*", k[0])) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def _routes(exchange: str, pattern: str, key: str) -> bool:
    if _EXCHANGE_TYPES[exchange].value == "topic":
        return topic_matches(pattern, key)
    return pattern == key


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _exchange_binding(exchange: str) -> dict[str, Any]:
    return {
        "name": exchange,
        "type": _EXCHANGE_TYPES[exchange].value,
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }


def _queue_binding(name: str) -> dict[str, Any]:
    return {"name": name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"}


def _summary(cls: type) -> str:
    return (inspect.getdoc(cls) or cls.__name__).splitlines()[0]


def _message(cls: type[Message]) -> dict[str, Any]:
    return {
        "name": cls.TYPE,
        "title": cls.__name__,
        "summary": _summary(cls),
        "description": inspect.getdoc(cls) or "",
        "contentType": "application/json",
        "headers": {"$ref": SCHEMAS + "AmqpHeaders"},
        "payload": {"$ref": SCHEMAS + cls.__name__},
        "correlationId": {
            "description": "AMQP `correlation_id`: the generation id (a conversation notice "
            "without one carries its conversation id)",
            "location": "$message.payload#/generation_id",
        },
        "bindings": {"amqp": {"messageType": cls.TYPE, "bindingVersion": AMQP_BINDING}},
        "x-amqp-properties": {
            "message_id": "unique per message (the outbox row's id); the consumer's inbox key",
            "type": cls.TYPE,
            "correlation_id": "generation_id",
            "content_type": "application/json",
            "delivery_mode": 2,
            "mandatory": exchange_of(cls) != topology.LIVE,  # live updates may go unheard
            "routing_keys": list(routing_keys(cls)),
            "exchange": exchange_of(cls),
        },
    }


def _schemas(catalogue: Iterable[type[Message]]) -> dict[str, Any]:
    _, top = models_json_schema(
        [(cls, "serialization") for cls in catalogue],
        ref_template=SCHEMAS + "{model}",
    )
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))
    schemas["AmqpHeaders"] = {
        "type": "object",
        "description": "AMQP headers: W3C trace context, so one trace spans every service",
        "properties": {"traceparent": {"type": "string", "pattern": TRACEPARENT}},
    }
    return schemas


def _key_channel_id(exchange: str, key: str) -> str:
    return f"{exchange.removeprefix('reelflow.')}.{key}"


def document(catalogue: dict[str, type[Message]] | None = None) -> dict[str, Any]:
    catalogue = dict(sorted((catalogue or CATALOGUE).items()))
    messages = {cls.__name__: _message(cls) for cls in catalogue.values()}
    # (exchange, key) → the catalogue messages published with that key there; a delay queue's
    # name is a key too, carrying what it dead-letters back (`enqueue(routing_key=…)`).
    on_key: dict[tuple[str, str], list[type[Message]]] = {}
    for cls in catalogue.values():
        for key in routing_keys(cls):
            on_key.setdefault((exchange_of(cls), key), []).append(cls)
    for delay in topology.DELAY_QUEUES:
        carried = on_key.get((delay.exchange, delay.target_key), [])
        if carried:
            on_key[(delay.exchange, delay.name)] = list(carried)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for (exchange, key), classes in sorted(on_key.items()):
        cid = _key_channel_id(exchange, key)
        channels[cid] = {
            "address": key,
            "title": f"{exchange} ← {key}",
            "messages": {c.__name__: _ref("components", "messages", c.__name__) for c in classes},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": _exchange_binding(exchange),
                    "bindingVersion": AMQP_BINDING,
                }
            },
        }
        for service in topology.SERVICES:
            patterns = topology.PUBLISHES[service].get(exchange, ())
            if any(_routes(exchange, p, key) for p in patterns):
                operations[f"{service}.send.{cid}"] = {
                    "action": "send",
                    "title": f"{service} publishes {key}",
                    "channel": _ref("channels", cid),
                    "messages": [_ref("channels", cid, "messages", c.__name__) for c in classes],
                }

    for queue in topology.WORK_QUEUES:
        carried = [
            cls
            for (exchange, key), classes in sorted(on_key.items())
            if exchange == queue.exchange and any(_routes(exchange, b, key) for b in queue.bindings)
            for cls in classes
        ]
        carried = list(dict.fromkeys(carried))
        refs = {c.__name__: _ref("components", "messages", c.__name__) for c in carried}
        owner = queue.name.split(".")[0]
        for name, description, arguments in (
            (
                queue.name,
                f"Work queue of the {owner}: bound to {queue.exchange} with "
                + ", ".join(queue.bindings),
                queue.arguments(),
            ),
            (
                queue.dlq,
                f"Dead letters of {queue.name} (after {queue.delivery_limit} deliveries, or "
                "unreadable); read and replay with `reelflow dlq`",
                {"x-queue-type": "quorum"},
            ),
        ):
            channels[f"queue.{name}"] = {
                "address": name,
                "title": name,
                "description": description,
                "messages": dict(refs),
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": _queue_binding(name),
                        "bindingVersion": AMQP_BINDING,
                    }
                },
                "x-queue-arguments": arguments,
                "x-bindings": [
                    {"exchange": queue.exchange, "routingKey": b} for b in queue.bindings
                ]
                if name == queue.name
                else [{"exchange": topology.DEAD_LETTERS, "routingKey": queue.name}],
            }
        operations[f"{owner}.receive.{queue.name}"] = {
            "action": "receive",
            "title": f"{owner} consumes {queue.name}",
            "channel": _ref("channels", f"queue.{queue.name}"),
            "messages": [_ref("channels", f"queue.{queue.name}", "messages", n) for n in refs],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
        }

    # The API's per-instance live queues: exclusive, auto-delete, one per running instance.
    live = topology.LiveQueue("{instance_id}")
    carried = list(
        dict.fromkeys(
            cls
            for (exchange, key), classes in sorted(on_key.items())
            if any(x == exchange and _routes(x, b, key) for x, b in live.bindings)
            for cls in classes
        )
    )
    refs = {c.__name__: _ref("components", "messages", c.__name__) for c in carried}
    channels["queue.api.live"] = {
        "address": live.name,
        "title": "api.live.<instance>",
        "description": "One API instance's live updates for the views it serves (SSE): "
        "exclusive, auto-delete, capped; a view that misses one resyncs from the database",
        "parameters": {"instance_id": {"description": "the API instance's random id"}},
        "messages": refs,
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {**_queue_binding(live.name), "durable": False, "exclusive": True}
                | {"autoDelete": True},
                "bindingVersion": AMQP_BINDING,
            }
        },
        "x-queue-arguments": live.arguments(),
        "x-bindings": [{"exchange": x, "routingKey": b} for x, b in live.bindings],
    }
    operations["api.receive.api.live"] = {
        "action": "receive",
        "title": "api consumes its live queue",
        "channel": _ref("channels", "queue.api.live"),
        "messages": [_ref("channels", "queue.api.live", "messages", n) for n in refs],
    }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:reelflow:messages",
        "info": {
            "title": "Reelflow message catalogue",
            "version": "1",
            "description": (
                "Every event and command on RabbitMQ. Messages are persistent JSON with "
                "`message_id`, `type`, `correlation_id` (the generation id) and a `traceparent` "
                "header; consumers refuse unknown types and versions (dead-letter). Generated by "
                "`make asyncapi` from shared/messages.py and shared/topology.py."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "rabbitmq:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "pathname": "/",
                "description": "RabbitMQ 3.10+, vhost from AMQP_URL",
            }
        },
        "channels": channels,
        "operations": dict(sorted(operations.items())),
        "components": {"messages": messages, "schemas": _schemas(catalogue.values())},
    }


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # `make asyncapi`
    print(render(), end="")
