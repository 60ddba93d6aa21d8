"""Tables. Each is written by one owner (named in the docstring); others only read it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_column=sa.Column(sa.DateTime(timezone=True), **kw))


def _json(nullable: bool = True, default: Any = None) -> Any:
    return Field(
        default=default,
        sa_column=sa.Column(JSONB, nullable=nullable),
    )


class User(SQLModel, table=True):
    """Owner: API (admin routes, `reelflow users create`)."""

    __tablename__ = "users"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=200)
    # Legacy, read by nothing: keys live in `api_keys` (0005 moved them there and cleared these).
    api_key_prefix: str | None = Field(default=None, max_length=32)
    api_key_sha256: str | None = Field(default=None, max_length=64, unique=True, index=True)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class ApiKey(SQLModel, table=True):
    """Owner: API (`/v1/api-keys`, admin routes) and `reelflow users|keys`. Only the SHA-256
    of a key is kept, with its visible prefix; a revoked key stays listed, and never works."""

    __tablename__ = "api_keys"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_column=sa.Column(
            sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    prefix: str = Field(max_length=32, index=True)
    sha256: str = Field(max_length=64, unique=True)
    name: str | None = Field(default=None, max_length=200)
    created_at: datetime = _ts(nullable=False, default=utcnow)
    last_used_at: datetime | None = _ts(nullable=True)  # refreshed at most once a minute
    revoked_at: datetime | None = _ts(nullable=True)


class RateBucket(SQLModel, table=True):
    """Owner: API. One token bucket per API key, shared by every API instance (UNLOGGED: losing
    it in a crash only refills the buckets)."""

    __tablename__ = "rate_buckets"
    __table_args__ = {"prefixes": ["UNLOGGED"]}
    key_id: uuid.UUID = Field(
        sa_column=sa.Column(
            sa.Uuid, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
        )
    )
    tokens: float
    updated_at: datetime = _ts(nullable=False, default=utcnow)


class Conversation(SQLModel, table=True):
    """Owner: API."""

    __tablename__ = "conversations"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True)
    title: str | None = Field(default=None, max_length=200)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class ChatMessage(SQLModel, table=True):
    """Owner: API (user messages) and notifier (assistant messages, one per source event)."""

    __tablename__ = "messages"
    __table_args__ = (
        sa.Index("ix_messages_conversation_created", "conversation_id", "created_at"),
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    conversation_id: uuid.UUID = Field(foreign_key="conversations.id")
    role: str = Field(max_length=16)
    content: str
    generation_id: uuid.UUID | None = Field(default=None, foreign_key="generations.id")
    attachments: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=sa.Column(JSONB, nullable=False, server_default="[]")
    )
    # The lifecycle event an assistant message answers: a second delivery cannot add another.
    source_event_id: str | None = Field(default=None, max_length=64, unique=True)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class Generation(SQLModel, table=True):
    """Owner: API (creation and the user's moves) and orchestrator (the system's moves).

    Every status change goes through `shared.state_machine.decide` with a compare-and-set on
    `version`.
    """

    __tablename__ = "generations"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_generations_idempotency"),
        sa.Index("ix_generations_user_created", "user_id", "created_at", "id"),
        sa.Index("ix_generations_user_confirmed", "user_id", "confirmed_at"),
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id")
    conversation_id: uuid.UUID | None = Field(default=None, foreign_key="conversations.id")
    status: str = Field(max_length=32, index=True)
    version: int = Field(default=1)
    prompt: str
    auto_confirm: bool = False
    params: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(JSONB, nullable=False))
    spec: dict[str, Any] | None = _json()
    questions: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=sa.Column(JSONB, nullable=False, server_default="[]")
    )
    answers: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(JSONB, nullable=False, server_default="{}")
    )
    estimated_cost_usd: Decimal | None = Field(
        default=None, sa_column=sa.Column(sa.Numeric(10, 4), nullable=True)
    )
    # When it moved to `confirmed` (set by `apply_transition`): the daily video-seconds quota.
    confirmed_at: datetime | None = _ts(nullable=True)
    progress: dict[str, Any] | None = _json()
    result: dict[str, Any] | None = _json()
    error: dict[str, Any] | None = _json()
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    # The W3C context the generation was created in (`shared.telemetry.generation_span`), and
    # when its current status began (None: at created_at; progress moves only updated_at).
    trace_context: dict[str, Any] | None = _json()
    status_changed_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(nullable=False, default=utcnow)
    updated_at: datetime = _ts(nullable=False, default=utcnow)


class OutboxMessage(SQLModel, table=True):
    """Owner: whoever commits a state change; the relay in the same process publishes it."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index("ix_outbox_unpublished", "id", postgresql_where=sa.text("published_at IS NULL")),
        # A generation's events in order: its timeline, and the replay behind SSE resumption.
        sa.Index("ix_outbox_correlation", "correlation_id", "id"),
    )
    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=True)
    )
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    exchange: str = Field(max_length=100)
    routing_key: str = Field(max_length=200)
    type: str = Field(max_length=100)
    correlation_id: str = Field(max_length=64)
    body: str
    headers: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(JSONB, nullable=False, server_default="{}")
    )
    created_at: datetime = _ts(nullable=False, default=utcnow)
    published_at: datetime | None = _ts(nullable=True)


class InboxEntry(SQLModel, table=True):
    """Owner: each consumer, for its own `consumer` name: the messages it has applied."""

    __tablename__ = "inbox"
    consumer: str = Field(primary_key=True, max_length=100)
    message_id: str = Field(primary_key=True, max_length=100)
    handled_at: datetime = _ts(nullable=False, default=utcnow)


class RenderJob(SQLModel, table=True):
    """Owner: veo-worker. One per generation: the provider job and where it stands.

    status: queued, submitting (the Veo submit may be on the wire), running, succeeded, failed,
    cancelled. A worker process works on a job only while it holds the lease (`lease_owner`,
    `lease_until`, renewed by heartbeat); an expired lease lets another process take it over.
    """

    __tablename__ = "render_jobs"
    __table_args__ = (
        sa.Index(
            "ix_render_jobs_active",
            "provider",
            "status",
            "created_at",
            postgresql_where=sa.text("status IN ('queued', 'submitting', 'running')"),
        ),
    )
    generation_id: uuid.UUID = Field(foreign_key="generations.id", primary_key=True)
    user_id: uuid.UUID
    provider: str = Field(max_length=32)
    status: str = Field(max_length=32)
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(JSONB, nullable=False))
    operation_name: str | None = Field(default=None, max_length=500)
    attempts: int = 0  # times a worker process took the job up (1 + takeovers)
    error: dict[str, Any] | None = _json()
    due_at: datetime | None = _ts(nullable=True)  # a queued job waits for this (retry backoff)
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _ts(nullable=True)
    submitted_at: datetime | None = _ts(nullable=True)  # when the operation name was stored
    deadline_at: datetime | None = _ts(nullable=True)
    next_poll_at: datetime | None = _ts(nullable=True)
    poll_count: int = 0
    transient_errors: int = 0  # in a row, in the current step; reset by a success
    queue_position: int | None = None  # a queued job's place, as last reported (1 = next)
    # The render command's consumer context: the job's spans join the generation's trace.
    trace_context: dict[str, Any] | None = _json()
    created_at: datetime = _ts(nullable=False, default=utcnow)
    updated_at: datetime = _ts(nullable=False, default=utcnow)


class SubmitWindow(SQLModel, table=True):
    """Owner: veo-worker. The global cap on provider submissions, shared by every worker
    process: the times of the submissions of the last minute (a sliding window), taken under
    the row's lock, and a pause set when the provider answers 429."""

    __tablename__ = "submit_windows"
    name: str = Field(primary_key=True, max_length=64)
    stamps: list[datetime] = Field(
        default_factory=list,
        sa_column=sa.Column(
            sa.ARRAY(sa.DateTime(timezone=True)), nullable=False, server_default="{}"
        ),
    )
    paused_until: datetime | None = _ts(nullable=True)


class WebhookEndpoint(SQLModel, table=True):
    """Owner: API (registration, rotation, deletion), notifier (failure tracking, disabling).

    `status`: active, disabled, or deleted (kept for the delivery log; the API hides it)."""

    __tablename__ = "webhook_endpoints"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", index=True)
    url: str = Field(max_length=2000)
    events: list[str] | None = _json()
    description: str | None = Field(default=None, max_length=500)
    secret: str = Field(max_length=200)
    # The secret before the last rotation: it still signs, beside `secret`, until it expires.
    previous_secret: str | None = Field(default=None, max_length=200)
    previous_secret_expires_at: datetime | None = _ts(nullable=True)
    status: str = Field(default="active", max_length=16)
    disabled_reason: str | None = Field(default=None, max_length=500)
    # The first failed attempt with no successful one since (None while it works).
    failing_since: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """Owner: notifier. One lifecycle event to one endpoint (or to `NEXTJS_URL`). The API only
    re-opens a finished one (status → pending) when asked to redeliver it."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("webhook_id", "target", name="uq_webhook_deliveries_target"),
        sa.Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at", "id"),
        # The notifier's sweeper: pending deliveries by due time (a retry's, or a lease's end).
        sa.Index(
            "ix_webhook_deliveries_pending_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    webhook_id: str = Field(max_length=64, index=True)  # stable across retries
    target: str = Field(max_length=64)  # endpoint id, or "nextjs"
    endpoint_id: uuid.UUID | None = Field(default=None, foreign_key="webhook_endpoints.id")
    url: str = Field(max_length=2000)
    event: str = Field(max_length=64)
    generation_id: uuid.UUID = Field(index=True)
    payload: str
    status: str = Field(default="pending", max_length=16)
    next_attempt_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class WebhookAttempt(SQLModel, table=True):
    """Owner: notifier. One row per HTTP attempt of a delivery."""

    __tablename__ = "webhook_attempts"
    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=True)
    )
    delivery_id: uuid.UUID = Field(foreign_key="webhook_deliveries.id", index=True)
    at: datetime = _ts(nullable=False, default=utcnow)
    status_code: int | None = None
    latency_ms: int | None = None
    response_excerpt: str | None = Field(default=None, max_length=1000)
    error: str | None = Field(default=None, max_length=1000)
    # Made on request (redeliver, resend-failed), not by the retry schedule.
    manual: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )


class AppSecret(SQLModel, table=True):
    """Owner: `reelflow migrate`. Secrets the services share without configuration."""

    __tablename__ = "app_secrets"
    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=200)
