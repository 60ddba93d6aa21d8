"""Logging in the seed's `[COMPONENT] Action {context}` form, or JSON lines.

Request and generation ids travel in context variables, so every line a handler writes carries
them without passing them around. Values whose key looks secret are masked.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "reelflow_log_context", default=None
)
_SECRET_WORDS = ("key", "secret", "token", "password", "authorization")


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ids (request_id, generation_id, message_id…) to every line logged inside."""
    current = _context.get() or {}
    token = _context.set({**current, **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def _clean(ctx: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in ctx.items()}


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        ctx = _clean({**(_context.get() or {}), **getattr(record, "ctx", {})})
        ctx["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat()
        if record.exc_info:
            ctx["error"] = self.formatException(record.exc_info)
        component = getattr(record, "component", record.name.upper())
        if self.json_lines:
            return json.dumps(
                {
                    "level": record.levelname.lower(),
                    "component": component,
                    "action": record.getMessage(),
                    **ctx,
                },
                default=str,
            )
        return f"[{component}] {record.getMessage()} {json.dumps(ctx, default=str)}"


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
