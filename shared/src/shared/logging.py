"""Logging in the seed's `[COMPONENT] Action {context}` form, or JSON lines.

Request and generation ids travel in context variables, so every line a handler writes carries
them without passing them around; the current span's trace and span ids are added to each line.
Secrets never reach a line: values whose key looks secret are masked, and so is anything that
looks like an API key (`rf_…`), a webhook secret (`whsec_…`), a Google API key or a bearer token,
and any secret the configuration holds (`register_secrets`), wherever it appears in the line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "reelflow_log_context", default=None
)
_SECRET_WORDS = ("key", "secret", "token", "password", "authorization")
# Ids that also label the current span (`reelflow.generation_id`, `reelflow.user_id`).
_SPAN_IDS = ("generation_id", "user_id")
# Secrets by their look: our API keys, Standard Webhooks secrets, Google API keys, bearer tokens.
_PATTERNS = (
    r"\brf_[A-Za-z0-9_-]{16,}",
    r"\bwhsec_[A-Za-z0-9+/=_-]{8,}",
    r"\bAIza[0-9A-Za-z_-]{30,}",
    r"(?<=[Bb]earer )[A-Za-z0-9._~+/=-]{6,}",
)
MASK = "***"
_MIN_SECRET_CHARS = 6  # shorter configured "secrets" would mask ordinary words
# Every pattern needs one of these in the text: most lines have none and skip the regex, which
# cost a fifth of a status read's CPU when run on every access-log line.
_TRIGGERS = ("rf_", "whsec_", "AIza", "earer ")
_secrets: set[str] = set()
_triggers: tuple[str, ...] = _TRIGGERS
_redactor = re.compile("|".join(_PATTERNS))
_service = "reelflow"


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values (the configuration's keys and passwords) wherever they appear."""
    global _redactor, _triggers
    _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_CHARS)
    literal = [re.escape(v) for v in sorted(_secrets, key=len, reverse=True)]
    _redactor = re.compile("|".join([*literal, *_PATTERNS]))
    _triggers = (*_TRIGGERS, *_secrets)


def redact(text: str) -> str:
    """`text` with every secret-looking or configured secret value replaced by `***`."""
    if not any(trigger in text for trigger in _triggers):
        return text
    return _redactor.sub(MASK, text)


def set_service(name: str) -> None:
    """The `service` field of JSON lines (the process's service)."""
    global _service
    _service = name


def current_context() -> dict[str, Any]:
    return _context.get() or {}


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ids (request_id, generation_id, message_id…) to every line logged inside; the
    generation and user ids also label the current span."""
    current = _context.get() or {}
    added = {k: v for k, v in values.items() if v is not None}
    token = _context.set({**current, **added})
    span = trace.get_current_span()
    if span.is_recording():
        for key in _SPAN_IDS:
            if key in added:
                span.set_attribute(f"reelflow.{key}", str(added[key]))
    try:
        yield
    finally:
        _context.reset(token)


def _clean(ctx: dict[str, Any]) -> dict[str, Any]:
    return {k: (MASK if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in ctx.items()}


def _trace_ids() -> dict[str, str]:
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        ctx = _clean({**(_context.get() or {}), **getattr(record, "ctx", {})})
        # Formatting runs in the logging call's own context: the current span is the caller's.
        ids = _trace_ids()
        timestamp = datetime.fromtimestamp(record.created, UTC).isoformat()
        if record.exc_info:
            ctx["error"] = self.formatException(record.exc_info)
        component = getattr(record, "component", record.name.upper())
        if self.json_lines:
            line = {
                "timestamp": timestamp,
                "level": record.levelname.lower(),
                "service": _service,
                "component": component,
                "event": record.getMessage(),
                **ids,
            }
            # A context key that names one of the line's own fields keeps its value aside.
            line.update({(f"ctx_{k}" if k in line else k): v for k, v in ctx.items()})
            return redact(json.dumps(line, default=str))
        if "trace_id" in ids:
            ctx["trace_id"] = ids["trace_id"]
        ctx["timestamp"] = timestamp
        return redact(f"[{component}] {record.getMessage()} {json.dumps(ctx, default=str)}")


class EventLogger:
    """`log.info("Created", generation_id=…)` writes `[COMPONENT] Created {"generation_id": …}`."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._logger = logging.getLogger(f"reelflow.{component.lower()}")

    def _log(self, level: int, action: str, exc: bool, ctx: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, action, exc_info=exc, extra={"component": self.component, "ctx": ctx}
            )

    def debug(self, action: str, **ctx: Any) -> None:
        self._log(logging.DEBUG, action, False, ctx)

    def info(self, action: str, **ctx: Any) -> None:
        self._log(logging.INFO, action, False, ctx)

    def warning(self, action: str, **ctx: Any) -> None:
        self._log(logging.WARNING, action, False, ctx)

    def error(self, action: str, **ctx: Any) -> None:
        self._log(logging.ERROR, action, False, ctx)

    def exception(self, action: str, **ctx: Any) -> None:
        self._log(logging.ERROR, action, True, ctx)


def get_logger(component: str) -> EventLogger:
    return EventLogger(component)


def configure_logging(log_format: str = "console", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(json_lines=log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "httpx", "httpcore", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
