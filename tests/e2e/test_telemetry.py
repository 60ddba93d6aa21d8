"""One generation across the four services as real processes, each exporting its spans over
OTLP/HTTP (protobuf) to a receiver in this test, with JSON logs and the Veo provider (the fake
Gemini API), a registered webhook endpoint and the `NEXTJS_URL` route.

- one trace spans api, orchestrator, worker and notifier, with correct parent links: every
  consumer span is the child of the producer span of the message it consumed, every producer
  span the child of the span that wrote its outbox row, and the receivers' `traceparent` names
  the webhook attempt's own span (the confirm request, a trace of its own, is linked);
- each service's `/metrics`, parsed by prometheus_client's parser, moved as the generation ran;
- no key or secret used in the run appears in any log line or exported span.

Processes, not in-process services: in one process every service would share one tracer
provider and one context, which proves nothing about propagation between processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families
from shared.settings import Settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.e2e.harness import Receiver, eventually, serve_asgi
from tests.fakes.fake_veo import FakeVeo
from tests.support import ADMIN_KEY, PORT_VARIABLE, SERVICES, free_port

GEMINI_KEY = "AIzaSyB-telemetry-test-key-0123456789abc"
WORKER_API_KEY = "worker-key-telemetry-e2e"
MODEL = "veo-3.1-fast-generate-preview"
QUEUES = (
    "orchestrator.requests",
    "orchestrator.confirmations",
    "orchestrator.reports",
    "worker.render",
    "notifier.events",
    "notifier.deliveries",
)
# Queues a generation's messages pass through. `notifier.deliveries` is not among them: it
# carries only retries and manual redeliveries (a first attempt goes from the event's consumer
# straight to its endpoint's lane), and every webhook here succeeds at once.
CONSUMED = tuple(q for q in QUEUES if q != "notifier.deliveries")
CONSUMER, PRODUCER, CLIENT, SERVER = 5, 4, 3, 2  # OTLP's Span.SpanKind values

pytestmark = pytest.mark.timeout(300)


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[str]


@dataclass
class Collector:
    """OTLP/HTTP `POST /v1/traces`, decoded with opentelemetry-proto."""

    spans: list[Span] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def app(self) -> Starlette:
        async def traces(request: Request) -> Response:
            body = await request.body()
            self.raw.append(body)
            self.spans += decode(ExportTraceServiceRequest.FromString(body))
            return Response(
                ExportTraceServiceResponse().SerializeToString(),
                media_type="application/x-protobuf",
            )

        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def decode(request: ExportTraceServiceRequest) -> list[Span]:
    found = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                found.append(
                    Span(
                        service=resource["service.name"],
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        links=[link.span_id.hex() for link in s.links],
                    )
                )
    return found


@dataclass
class Run:
    generation_id: str
    user_id: str
    api_key: str
    whsec: str
    estimated_cost: Decimal
    collector: Collector
    nextjs: Receiver
    endpoint: Receiver
    metrics_before: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]
    metrics_after: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]
    logs: dict[str, str]
    shown: dict[str, Any]

    def spans_of(self, trace_id: str) -> list[Span]:
        return [s for s in self.collector.spans if s.trace_id == trace_id]

    @property
    def trace_id(self) -> str:
        (created,) = [
            s
            for s in self.collector.spans
            if s.name == "POST /v1/generations"
            and s.attributes.get("reelflow.generation_id") == self.generation_id
        ]
        return created.trace_id


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(exposition: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(
        v
        for (n, have), v in samples.items()
        if n == name and all((k, want) in have for k, want in labels.items())
    )


async def _scrape(env: dict[str, str]) -> dict[str, Samples]:
    async with httpx.AsyncClient(timeout=10) as http:
        found = {}
        for name in SERVICES:
            r = await http.get(f"http://127.0.0.1:{env[PORT_VARIABLE[name]]}/metrics")
            assert r.status_code == 200, (name, r.text)
            found[name] = parse_metrics(r.text)
        return found


async def _clean(prepared: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
    from conftest import TABLES, purge_queues  # the root conftest's own helpers

    await purge_queues(prepared.amqp_url)
    async with sessions() as session, session.begin():
        await session.execute(text(f"TRUNCATE {TABLES} CASCADE"))
        await session.execute(text("DELETE FROM submit_windows"))


async def _ready(name: str, port: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async def check() -> bool:
        assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(check, within=90, every=0.3)


@pytest.fixture(scope="module")
async def run(
    prepared: Settings,
    sessions: async_sessionmaker[AsyncSession],
    env: dict[str, str],
    reelflow_bin: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Run]:
    await _clean(prepared, sessions)
    logs_dir = tmp_path_factory.mktemp("telemetry-logs")
    collector, nextjs, endpoint = Collector(), Receiver(), Receiver()
    otlp_port, nextjs_port, endpoint_port = free_port(), free_port(), free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    async with (
        serve_asgi(collector.app(), otlp_port),
        serve_asgi(nextjs.app(), nextjs_port),
        serve_asgi(endpoint.app(), endpoint_port),
        FakeVeo(api_key=GEMINI_KEY, scenario="succeed polls=2") as veo,
    ):
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        service_env = {
            **inherited,
            **env,
            **{variable: str(free_port()) for variable in PORT_VARIABLE.values()},
            "VIDEO_PROVIDER": "veo",
            "GEMINI_API_KEY": GEMINI_KEY,
            "GOOGLE_GEMINI_BASE_URL": veo.base_url,
            "VEO_POLL_INTERVAL_SECONDS": "0.1",
            "VEO_POLL_MAX_INTERVAL_SECONDS": "0.3",
            "VEO_SUBMISSIONS_PER_MINUTE": "1000",
            "NEXTJS_URL": f"http://127.0.0.1:{nextjs_port}",
            "WORKER_API_KEY": WORKER_API_KEY,
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
            "LOG_FORMAT": "json",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        base = f"http://127.0.0.1:{service_env['API_PORT']}"
        try:
            for name in SERVICES:
                log = (logs_dir / f"{name}.log").open("wb")
                procs[name] = subprocess.Popen(
                    [reelflow_bin, name],
                    env=service_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            for name in SERVICES:
                port = service_env[PORT_VARIABLE[name]]
                await _ready(name, port, procs[name], logs_dir / f"{name}.log")
            before = await _scrape(service_env)

            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
                r = await http.post("/v1/admin/users", json={"name": "otel"}, headers=admin)
                assert r.status_code == 201, r.text
                user_id, api_key = r.json()["id"], r.json()["api_key"]
                auth = {"Authorization": f"Bearer {api_key}"}
                r = await http.post("/v1/conversations", json={"title": "otel"}, headers=auth)
                assert r.status_code == 201, r.text
                conversation_id = r.json()["id"]
                r = await http.post(
                    "/v1/webhook-endpoints",
                    json={"url": f"http://127.0.0.1:{endpoint_port}/api/webhooks/worker"},
                    headers=auth,
                )
                assert r.status_code == 201, r.text
                whsec = r.json()["secret"]
                r = await http.post(
                    "/v1/generations",
                    json={
                        "prompt": "A lighthouse in a storm at night, waves crashing, wide shot",
                        "conversation_id": conversation_id,
                        "params": {"model": MODEL, "aspect_ratio": "16:9", "duration_seconds": 4},
                    },
                    headers=auth,
                )
                assert r.status_code == 201, r.text
                gid = r.json()["id"]

                async def status(*wanted: str) -> dict[str, Any] | None:
                    body = (await http.get(f"/v1/generations/{gid}", headers=auth)).json()
                    assert body["status"] not in ("failed", "cancelled"), body
                    return body if body["status"] in wanted else None

                pending = await eventually(lambda: status("pending_confirmation"), within=60)
                r = await http.post(f"/v1/generations/{gid}/confirm", headers=auth)
                assert r.status_code == 200, r.text
                await eventually(lambda: status("completed"), within=120)

            async def delivered() -> bool:
                return "generation.completed" in nextjs.events(
                    gid
                ) and "generation.completed" in endpoint.events(gid)

            await eventually(delivered, within=60)
            after = await _scrape(service_env)

            async def exported() -> bool:
                """Every queue's consumer span, a span per webhook attempt, and no span
                whose parent is still on its way."""
                names = {s.name for s in collector.spans}
                ids = {s.span_id for s in collector.spans}
                attempts = sum(1 for s in collector.spans if s.kind == CLIENT and s.name == "POST")
                return (
                    all(f"process {q}" in names for q in CONSUMED)
                    and attempts >= len(nextjs.received) + len(endpoint.received)
                    and all(s.parent_id in ids for s in collector.spans if s.parent_id)
                )

            await eventually(exported, within=30)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs.values():
                await asyncio.to_thread(proc.wait, 60)
    shown = await asyncio.to_thread(
        subprocess.run,
        [reelflow_bin, "generations", "show", gid],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    yield Run(
        generation_id=gid,
        user_id=user_id,
        api_key=api_key,
        whsec=whsec,
        estimated_cost=Decimal(str(pending["estimated_cost_usd"])),
        collector=collector,
        nextjs=nextjs,
        endpoint=endpoint,
        metrics_before=before,
        metrics_after=after,
        logs={name: (logs_dir / f"{name}.log").read_text() for name in SERVICES},
        shown=json.loads(shown.stdout),
    )


def _ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def test_one_trace_spans_the_four_services_with_correct_parent_links(run: Run) -> None:
    trace_id = run.trace_id
    spans = run.spans_of(trace_id)
    by_id = {s.span_id: s for s in spans}
    services = {s.service for s in spans}
    assert {f"reelflow-{name}" for name in SERVICES} <= services, services

    # Everything about the generation is in its trace, labelled with it and its user; only the
    # confirm request has a trace of its own, linked from the move it made in this one.
    about = [s for s in run.collector.spans if s.attributes.get("reelflow.generation_id")]
    elsewhere = [s for s in about if s.trace_id != trace_id]
    assert {(s.service, s.kind) for s in elsewhere} == {("reelflow-api", SERVER)}
    assert {s.name for s in elsewhere} == {
        "POST /v1/generations/{generation_id}/confirm",
        "GET /v1/generations/{generation_id}",  # the test's status polls
    }
    for span in spans:
        assert span.attributes.get("reelflow.generation_id") == run.generation_id, span
        assert span.attributes.get("reelflow.user_id") == run.user_id, span
    (confirm_request,) = [s for s in elsewhere if s.name.endswith("/confirm")]
    (confirm,) = [s for s in spans if s.name == "generation confirm"]
    assert confirm.service == "reelflow-api" and confirm.links == [confirm_request.span_id]

    # Each consumer span's parent is the producer span of the very message it consumed; each
    # producer span's parent is the span that wrote the outbox row.
    consumers = [s for s in spans if s.kind == CONSUMER]
    assert {s.name for s in consumers} >= {f"process {q}" for q in CONSUMED}
    for consumer in consumers:
        producer = by_id[consumer.parent_id]
        assert producer.kind == PRODUCER, (consumer.name, producer.name)
        routing_key = consumer.attributes["messaging.rabbitmq.destination.routing_key"]
        assert producer.name == f"publish {routing_key}"
        assert (
            producer.attributes["messaging.message.id"]
            == consumer.attributes["messaging.message.id"]
        )
        assert consumer.attributes["messaging.system"] == "rabbitmq"
        assert consumer.attributes["messaging.operation.type"] == "process"
    for producer in (s for s in spans if s.kind == PRODUCER):
        assert producer.parent_id in by_id, producer.name
        assert producer.attributes["messaging.operation.type"] == "send"
    roots = [s for s in spans if not s.parent_id]
    assert [(s.service, s.name, s.kind) for s in roots] == [
        ("reelflow-api", "POST /v1/generations", SERVER)
    ]

    # The worker's Veo calls and uploads hang under the render command's consumer span.
    def under_render(span: Span) -> bool:
        return any(a.name == "process worker.render" for a in _ancestors(span, by_id))

    submits = [s for s in spans if s.name.startswith("POST /v1beta/models/")]
    polls = [s for s in spans if s.name == "GET /v1beta/{operation}"]
    downloads = [s for s in spans if s.name == "GET /v1beta/files/{file}:download"]
    uploads = [s for s in spans if s.name == "storage put"]
    assert len(submits) == 1 and len(polls) >= 2 and len(downloads) == 1 and len(uploads) == 2
    for span in submits + polls + downloads + uploads:
        assert span.service == "reelflow-worker" and under_render(span), span.name
    for span in submits + polls + downloads:
        assert span.kind == CLIENT and span.attributes["http.response.status_code"] == 200
        assert span.attributes["server.address"] == "127.0.0.1"
        assert GEMINI_KEY not in span.attributes["url.full"]
    assert submits[0].attributes["http.request.method"] == "POST"
    assert submits[0].attributes["gen_ai.request.model"] == MODEL

    # The notifier: assistant messages, and one client span per webhook attempt, under the
    # consumer span of the event that made the delivery (a retry's: of its delivery command);
    # each receiver continued from its attempt's span.
    assert any(s.name == "assistant message" and s.service == "reelflow-notifier" for s in spans)
    attempts = {s.span_id: s for s in spans if s.kind == CLIENT and s.name == "POST"}
    for attempt in attempts.values():
        assert attempt.service == "reelflow-notifier"
        assert by_id[attempt.parent_id].name in (
            "process notifier.events",
            "process notifier.deliveries",
        )
    hits = run.nextjs.received + run.endpoint.received
    assert len(hits) >= 6  # two targets, several lifecycle events each
    for hit in hits:
        _, hit_trace, hit_parent, _ = hit["headers"]["traceparent"].split("-")
        assert hit_trace == trace_id
        assert hit_parent in attempts
        assert attempts[hit_parent].attributes["url.full"].endswith("/api/webhooks/worker")

    # The operator's command names the same trace.
    assert run.shown["trace_id"] == trace_id
    assert "other_trace_ids" not in run.shown


def test_json_log_lines_carry_the_trace(run: Run) -> None:
    for name, log in run.logs.items():
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert lines, name
        assert all({"timestamp", "level", "service", "event"} <= set(line) for line in lines)
        about = [line for line in lines if line.get("generation_id") == run.generation_id]
        assert about, name
        assert {line["service"] for line in lines} == {name}
        assert any(line.get("trace_id") == run.trace_id and "span_id" in line for line in about)
    api = [json.loads(line) for line in run.logs["api"].splitlines() if line.startswith("{")]
    assert any(line.get("request_id") and line.get("trace_id") for line in api)


def test_each_services_metrics_moved_as_the_generation_ran(run: Run) -> None:
    before, after = run.metrics_before, run.metrics_after

    def grew(service: str, name: str, by: float = 1, **labels: str) -> None:
        was, now = value(before[service], name, **labels), value(after[service], name, **labels)
        assert now - was >= by, (service, name, labels, was, now)

    for service in SERVICES:
        assert value(after[service], "reelflow_up") == 1
        grew(service, "reelflow_outbox_published_total")
        assert ("reelflow_outbox_lag_seconds", ()) in after[service]
    # Generations by status, time in status and spend (counted by whoever made the move).
    grew("api", "reelflow_generation_transitions_total", from_status="new")
    grew(
        "api",
        "reelflow_generation_transitions_total",
        from_status="pending_confirmation",
        status="confirmed",
    )
    cost = value(after["api"], "reelflow_generation_estimated_spend_usd_total", model=MODEL)
    assert cost - value(before["api"], "reelflow_generation_estimated_spend_usd_total") == (
        pytest.approx(float(run.estimated_cost))
    )
    grew("api", "reelflow_http_requests_total", by=4)
    for status in ("pending_confirmation", "processing", "completed"):
        grew("orchestrator", "reelflow_generation_transitions_total", status=status)
    grew("orchestrator", "reelflow_generation_status_seconds_count", status="processing")
    grew("orchestrator", "reelflow_generation_status_seconds_count", status="confirmed")
    # Consumers, queues and dead letters.
    for service, queue in (
        ("orchestrator", "orchestrator.requests"),
        ("orchestrator", "orchestrator.reports"),
        ("worker", "worker.render"),
        ("notifier", "notifier.events"),
        ("notifier", "notifier.deliveries"),
    ):
        if queue in CONSUMED:  # (retries only on notifier.deliveries: none here)
            grew(service, "reelflow_messages_consumed_total", queue=queue, outcome="acked")
            grew(service, "reelflow_message_handling_seconds_count", queue=queue)
        assert value(after[service], "reelflow_queue_consumers", queue=queue) >= 1
        assert ("reelflow_dlq_messages", (("queue", f"{queue}.dlq"),)) in after[service]
        assert value(after[service], "reelflow_dlq_messages", queue=f"{queue}.dlq") == 0
    # The provider.
    grew("worker", "reelflow_provider_submissions_total", provider="veo", outcome="ok")
    grew("worker", "reelflow_provider_request_seconds_count", by=2, operation="poll")
    grew("worker", "reelflow_provider_request_seconds_count", operation="download")
    grew("worker", "reelflow_provider_operation_seconds_count", provider="veo", model=MODEL)
    grew("worker", "reelflow_worker_renders_total", outcome="succeeded")
    # Webhooks.
    # (at least the two `completed` webhooks the scrape waited for)
    grew("notifier", "reelflow_webhook_attempts_total", by=2, result="ok")
    grew("notifier", "reelflow_webhook_deliveries_finished_total", by=2, status="succeeded")
    grew("notifier", "reelflow_webhook_delivery_seconds_count", by=2)
    grew("notifier", "reelflow_webhook_attempt_seconds_count", by=2)


def test_no_key_or_secret_reaches_a_log_line_or_a_span(run: Run) -> None:
    secrets = {
        "admin key": ADMIN_KEY,
        "user API key": run.api_key,
        "WORKER_API_KEY": WORKER_API_KEY,
        "webhook secret": run.whsec,
        "webhook secret's key": run.whsec.removeprefix("whsec_"),
        "Gemini key": GEMINI_KEY,
    }
    exported = b"".join(run.collector.raw)
    assert exported and all(run.logs.values())
    for what, secret in secrets.items():
        for name, log in run.logs.items():
            assert secret not in log, f"the {what} is in the {name} log"
        assert secret.encode() not in exported, f"the {what} is in an exported span"
