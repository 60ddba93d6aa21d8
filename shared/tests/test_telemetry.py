"""Tracing set-up, context through the outbox, log lines with trace ids, and secrets kept out of
both logs and spans. No broker or database: the end-to-end proof across the four services is
tests/e2e/test_telemetry.py."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import shared.telemetry as telemetry
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from shared.logging import configure_logging, get_logger, log_context
from shared.settings import SettingsError, load_settings

API_KEY = "rf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GOOGLE_KEY = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
CONFIGURED = "an-operator-chosen-worker-key"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    settings = load_settings(WORKER_API_KEY=CONFIGURED, ADMIN_API_KEY="admin-key-for-telemetry")
    telemetry.setup_telemetry("tests", settings, exporter=exporter)
    try:
        yield exporter
    finally:
        telemetry.shutdown_telemetry()


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Everything logged through our formatter, as text."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    yield out
    root.handlers[:], level = saved
    root.setLevel(level)


def _capture(out: io.StringIO, log_format: str) -> None:
    configure_logging(log_format)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)


def test_json_lines_carry_the_trace_and_the_context(
    spans: InMemorySpanExporter, lines: io.StringIO
) -> None:
    _capture(lines, "json")
    with (
        telemetry.tracer().start_as_current_span("work") as span,
        log_context(request_id="req-1", generation_id="gen-1"),
    ):
        get_logger("TEST").info("Something happened", event="generation.completed", count=2)
    line = json.loads(lines.getvalue().strip())
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["generation_id"] == "gen-1" and line["request_id"] == "req-1"
    assert line["service"] == "tests" and line["event"] == "Something happened"
    assert line["ctx_event"] == "generation.completed"  # a context key never hides a field
    assert line["count"] == 2 and line["component"] == "TEST"


def test_console_lines_keep_the_seed_form_with_the_trace_id(
    spans: InMemorySpanExporter, lines: io.StringIO
) -> None:
    _capture(lines, "console")
    with telemetry.tracer().start_as_current_span("work") as span:
        get_logger("WORKER").info("Render started", attempt=1)
    line = lines.getvalue().strip()
    assert line.startswith("[WORKER] Render started {")
    ctx = json.loads(line.split(" ", 3)[3])
    assert ctx["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert ctx["attempt"] == 1


def test_secrets_are_masked_anywhere_in_a_line(
    spans: InMemorySpanExporter, lines: io.StringIO
) -> None:
    _capture(lines, "json")
    log = get_logger("TEST")
    log.info(f"Called with {API_KEY}", note=f"secret {WHSEC} and Bearer {CONFIGURED}")
    log.info("Veo", url=f"https://example.test/v1?key={GOOGLE_KEY}", header=f"bearer {API_KEY}")
    log.info("Configured", value=CONFIGURED, admin="admin-key-for-telemetry")
    try:
        raise ValueError(f"refused {WHSEC}")
    except ValueError:
        log.exception("Failed")
    text = lines.getvalue()
    for secret in (API_KEY, WHSEC, GOOGLE_KEY, CONFIGURED, "admin-key-for-telemetry"):
        assert secret not in text
    assert text.count("***") >= 7
    assert "rf_" not in text.replace("rf_" + "***", "")  # no partial key left either


def test_span_attributes_events_and_status_are_masked(spans: InMemorySpanExporter) -> None:
    with telemetry.tracer().start_as_current_span(
        "call", attributes={"note": f"key {API_KEY}", "size": 3}
    ) as span:
        span.add_event("retry", {"detail": f"signed with {WHSEC}"})
        span.set_attribute("url.full", f"https://example.test/?key={GOOGLE_KEY}")
    with (
        pytest.raises(RuntimeError),
        telemetry.tracer().start_as_current_span("failing"),
    ):
        raise RuntimeError(f"the worker key {CONFIGURED} was refused")
    exported = json.dumps([json.loads(s.to_json()) for s in spans.get_finished_spans()])
    for secret in (API_KEY, WHSEC, GOOGLE_KEY, CONFIGURED):
        assert secret not in exported
    call = next(s for s in spans.get_finished_spans() if s.name == "call")
    assert call.attributes is not None and call.attributes["size"] == 3


def test_a_span_without_secrets_is_exported_as_it_is(spans: InMemorySpanExporter) -> None:
    with telemetry.tracer().start_as_current_span("plain", attributes={"a": "b"}):
        pass
    (span,) = spans.get_finished_spans()
    assert telemetry.redacted(span) is span


def test_the_outbox_context_round_trip_and_the_generation_span(
    spans: InMemorySpanExporter,
) -> None:
    with telemetry.tracer().start_as_current_span("request") as request:
        stored = telemetry.carrier()
    assert stored is not None
    assert telemetry.trace_id_of(stored["traceparent"]) == format(
        request.get_span_context().trace_id, "032x"
    )
    # A consumer in the generation's trace: no extra span.
    with (
        telemetry.tracer().start_as_current_span("consume", context=telemetry.extract(stored)),
        telemetry.generation_span("generation confirm", stored) as extra,
    ):
        assert extra is None
    # A move made in another trace (a confirm request): a span in the generation's trace,
    # linked to the request that made it; what it writes carries the generation's trace.
    with (
        telemetry.tracer().start_as_current_span("confirm request") as other,
        telemetry.generation_span("generation confirm", stored) as joined,
    ):
        assert joined is not None
        written = telemetry.inject({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert telemetry.trace_id_of(written["traceparent"]) == telemetry.trace_id_of(
        stored["traceparent"]
    )
    confirm = next(s for s in spans.get_finished_spans() if s.name == "generation confirm")
    assert confirm.parent is not None
    assert confirm.parent.span_id == request.get_span_context().span_id
    assert [link.context.span_id for link in confirm.links] == [other.get_span_context().span_id]


def test_amqp_headers_as_bytes_are_read(spans: InMemorySpanExporter) -> None:
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    with telemetry.tracer().start_as_current_span(
        "process", context=telemetry.extract({"traceparent": traceparent.encode()})
    ) as span:
        assert format(span.get_span_context().trace_id, "032x") == "a" * 32


def test_client_spans_follow_the_http_conventions(spans: InMemorySpanExporter) -> None:
    with telemetry.client_span(
        "POST", "https://user:pw@hooks.example.test:8443/in?token=abc&x", template="/in"
    ) as span:
        telemetry.http_status(span, 503)
    (done,) = spans.get_finished_spans()
    attributes: dict[str, Any] = dict(done.attributes or {})
    assert done.name == "POST /in" and done.kind == SpanKind.CLIENT
    assert attributes["url.full"] == "https://hooks.example.test:8443/in?token=REDACTED&x"
    assert attributes["server.address"] == "hooks.example.test"
    assert attributes["server.port"] == 8443
    assert attributes["http.response.status_code"] == 503
    assert attributes["error.type"] == "503"


def test_without_an_exporter_ids_flow_but_nothing_is_recorded() -> None:
    telemetry.setup_telemetry("tests", load_settings())
    try:
        with telemetry.tracer().start_as_current_span("cheap") as span:
            assert not span.is_recording()
            headers = telemetry.carrier()
        assert headers is not None
        flags = int(headers["traceparent"].rsplit("-", 1)[1], 16)
        assert flags & 1 == 0  # not sampled: nothing was recorded
    finally:
        telemetry.shutdown_telemetry()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ],
)
def test_bad_otel_settings_fail_with_one_line_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(**{variable: value})


def test_exporter_lists_are_normalised() -> None:
    assert load_settings(OTEL_TRACES_EXPORTER="otlp, console").otel_traces_exporter == (
        "console,otlp"
    )
    assert load_settings(OTEL_TRACES_EXPORTER="none").otel_traces_exporter == "none"


def test_an_unreachable_collector_costs_nothing_but_a_lost_batch(
    monkeypatch: pytest.MonkeyPatch, lines: io.StringIO
) -> None:
    _capture(lines, "console")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(
        OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}"
    )
    telemetry.setup_telemetry("tests", settings)
    try:
        with telemetry.tracer().start_as_current_span("lost") as span:
            assert span.is_recording()
        telemetry.flush(1.0)  # returns; the batch is dropped
    finally:
        telemetry.shutdown_telemetry()
    assert "Transient error" not in lines.getvalue()  # no line per retry
