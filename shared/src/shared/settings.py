"""Typed settings read from the environment (and `.env`), with the seed's variable names as aliases.

One `Settings` object is built by each service's wiring function; nothing reads the environment
at import time. Bad values fail at start with one line naming the variable (`SettingsError`).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as _SourceError

DEFAULT_PRICE_PER_SECOND_USD: dict[str, Decimal] = {
    # Gemini API list prices per generated second (with audio), Nov 2026.
    "veo-3.1-generate-preview": Decimal("0.40"),
    "veo-3.1-fast-generate-preview": Decimal("0.15"),
    "veo-3.0-generate-001": Decimal("0.40"),
    "veo-3.0-fast-generate-001": Decimal("0.15"),
    "veo-2.0-generate-001": Decimal("0.35"),
}


ADMIN_KEY_MIN_CHARS = 8
_PLACEHOLDERS = frozenset(
    {"change-me", "changeme", "admin", "password", "secret", "admin-key", "admin-api-key"}
)


class SettingsError(Exception):
    """Raised with one human line naming the offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, case_sensitive=False
    )

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/reelflow", validation_alias="DATABASE_URL"
    )
    amqp_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", validation_alias="AMQP_URL")
    api_host: str = Field("127.0.0.1", validation_alias="API_HOST")
    api_port: int = Field(8000, ge=1, le=65535, validation_alias="API_PORT")
    public_base_url: str | None = Field(None, validation_alias="PUBLIC_BASE_URL")
    admin_api_key: SecretStr | None = Field(None, validation_alias="ADMIN_API_KEY")

    video_provider: Literal["veo", "local"] | None = Field(None, validation_alias="VIDEO_PROVIDER")
    gemini_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("GEMINI_API_KEY", "VEO3_API_KEY")
    )
    google_gemini_base_url: str = Field(
        "https://generativelanguage.googleapis.com", validation_alias="GOOGLE_GEMINI_BASE_URL"
    )
    veo_model: str = Field("veo-3.1-fast-generate-preview", validation_alias="VEO_MODEL")
    price_per_second_usd: Annotated[dict[str, Decimal], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_PRICE_PER_SECOND_USD),
        validation_alias="PRICE_PER_SECOND_USD",
    )

    storage_backend: Literal["local", "s3"] = Field("local", validation_alias="STORAGE_BACKEND")
    local_storage_dir: Path = Field(Path("./var/media"), validation_alias="LOCAL_STORAGE_DIR")
    s3_endpoint_url: str | None = Field(None, validation_alias="S3_ENDPOINT_URL")
    s3_bucket: str | None = Field(
        None, validation_alias=AliasChoices("S3_BUCKET", "R2_BUCKET_NAME")
    )
    s3_region: str | None = Field(None, validation_alias="S3_REGION")
    s3_access_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("S3_ACCESS_KEY_ID", "R2_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("S3_SECRET_ACCESS_KEY", "R2_SECRET_ACCESS_KEY")
    )
    r2_account_id: str | None = Field(None, validation_alias="R2_ACCOUNT_ID")
    media_url_ttl_seconds: int = Field(3600, ge=1, validation_alias="MEDIA_URL_TTL_SECONDS")
    media_signing_key: SecretStr | None = Field(None, validation_alias="MEDIA_SIGNING_KEY")

    nextjs_url: str | None = Field(None, validation_alias="NEXTJS_URL")
    worker_api_key: SecretStr | None = Field(None, validation_alias="WORKER_API_KEY")
    webhook_retry_schedule: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000],
        validation_alias="WEBHOOK_RETRY_SCHEDULE",
    )
    webhook_timeout_seconds: float = Field(15.0, gt=0, validation_alias="WEBHOOK_TIMEOUT_SECONDS")
    webhook_allow_private_networks: bool = Field(
        False, validation_alias="WEBHOOK_ALLOW_PRIVATE_NETWORKS"
    )
    # After a secret rotation the old secret signs alongside the new one for this long.
    webhook_secret_rotation_grace_seconds: int = Field(
        86_400, ge=0, validation_alias="WEBHOOK_SECRET_ROTATION_GRACE_SECONDS"
    )
    # An endpoint whose every attempt failed for this long (no success since) is disabled.
    webhook_disable_after_seconds: float = Field(
        5 * 86_400, gt=0, validation_alias="WEBHOOK_DISABLE_AFTER_SECONDS"
    )
    # Attempts one notifier process makes at once to one endpoint; more wait their turn.
    webhook_max_in_flight_per_endpoint: int = Field(
        8, ge=1, le=64, validation_alias="WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT"
    )

    # OpenTelemetry (shared/telemetry.py). The standard variables; other OTEL_* ones (headers,
    # timeout, sampler, batch sizes, resource attributes) are read by the SDK itself. Unlike the
    # SDK's own default, no exporter unless one is asked for: ids still flow, nothing is sent.
    otel_sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    otel_traces_exporter: str = Field("none", validation_alias="OTEL_TRACES_EXPORTER")
    otel_service_name: str | None = Field(None, validation_alias="OTEL_SERVICE_NAME")
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] = Field(
        "http/protobuf",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
    )

    log_format: Literal["console", "json"] = Field("console", validation_alias="LOG_FORMAT")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    # Server-Sent Events: a comment line this often keeps idle streams (and proxies) open.
    sse_heartbeat_seconds: float = Field(
        15.0, gt=0, le=300, validation_alias="SSE_HEARTBEAT_SECONDS"
    )
    metrics_port_orchestrator: int = Field(9101, validation_alias="ORCHESTRATOR_METRICS_PORT")
    metrics_port_worker: int = Field(9102, validation_alias="WORKER_METRICS_PORT")
    metrics_port_notifier: int = Field(9103, validation_alias="NOTIFIER_METRICS_PORT")
    # Where /healthz, /readyz and /metrics of the consumer services listen: 0.0.0.0 in a
    # container, so probes and Prometheus reach them.
    metrics_host: str = Field("127.0.0.1", validation_alias="METRICS_HOST")
    max_body_bytes: int = Field(64 * 1024, ge=1024, validation_alias="MAX_BODY_BYTES")
    # Abuse limits (0 turns one off). Requests per API key: a token bucket refilled at
    # RATE_LIMIT_PER_SECOND up to RATE_LIMIT_BURST, shared by every API instance (PostgreSQL).
    rate_limit_per_second: float = Field(20.0, ge=0, validation_alias="RATE_LIMIT_PER_SECOND")
    rate_limit_burst: int = Field(100, ge=1, validation_alias="RATE_LIMIT_BURST")
    # Per user, checked when a generation is confirmed (or auto-confirmed): generations
    # confirmed or processing at once, and video seconds confirmed in any 24 hours.
    quota_max_concurrent_generations: int = Field(
        10, ge=0, validation_alias="QUOTA_MAX_CONCURRENT_GENERATIONS"
    )
    quota_video_seconds_per_day: int = Field(
        3600, ge=0, validation_alias="QUOTA_VIDEO_SECONDS_PER_DAY"
    )
    worker_concurrency: int = Field(2, ge=1, validation_alias="WORKER_CONCURRENCY")
    delivery_limit: int = Field(5, ge=1, validation_alias="DELIVERY_LIMIT")
    shutdown_grace_seconds: float = Field(
        30.0, gt=0, le=600, validation_alias="SHUTDOWN_GRACE_SECONDS"
    )
    # Deadlines the orchestrator's sweeper enforces (a live status held this long fails).
    clarification_ttl_seconds: float = Field(
        86400.0, gt=0, validation_alias="CLARIFICATION_TTL_SECONDS"
    )
    confirmation_ttl_seconds: float = Field(
        86400.0, gt=0, validation_alias="CONFIRMATION_TTL_SECONDS"
    )
    dispatch_timeout_seconds: float = Field(
        21600.0, gt=0, validation_alias="DISPATCH_TIMEOUT_SECONDS"
    )
    processing_timeout_seconds: float = Field(
        3600.0, gt=0, validation_alias="PROCESSING_TIMEOUT_SECONDS"
    )
    sweep_interval_seconds: float = Field(30.0, gt=0, validation_alias="SWEEP_INTERVAL_SECONDS")
    outbox_retention_seconds: float = Field(
        7 * 86400.0, gt=0, validation_alias="OUTBOX_RETENTION_SECONDS"
    )
    inbox_retention_seconds: float = Field(
        7 * 86400.0, gt=0, validation_alias="INBOX_RETENTION_SECONDS"
    )

    # The worker's job scheduler and the Veo provider (services/veo-worker/README.md).
    worker_lease_seconds: float = Field(
        30.0, ge=1, le=3600, validation_alias="WORKER_LEASE_SECONDS"
    )
    veo_poll_interval_seconds: float = Field(
        2.0, gt=0, le=300, validation_alias="VEO_POLL_INTERVAL_SECONDS"
    )
    veo_poll_max_interval_seconds: float = Field(
        10.0, gt=0, le=600, validation_alias="VEO_POLL_MAX_INTERVAL_SECONDS"
    )
    veo_operation_deadline_seconds: float = Field(
        1200.0, gt=0, le=7 * 24 * 3600, validation_alias="VEO_OPERATION_DEADLINE_SECONDS"
    )
    veo_max_in_flight: int = Field(1000, ge=1, le=100_000, validation_alias="VEO_MAX_IN_FLIGHT")
    veo_max_concurrent_requests: int = Field(
        32, ge=1, le=1000, validation_alias="VEO_MAX_CONCURRENT_REQUESTS"
    )
    veo_submissions_per_minute: int = Field(
        10, ge=1, le=100_000, validation_alias="VEO_SUBMISSIONS_PER_MINUTE"
    )
    veo_max_retries: int = Field(5, ge=0, le=100, validation_alias="VEO_MAX_RETRIES")

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not parts or not all(p.isdigit() for p in parts):
                raise ValueError("expected comma-separated whole seconds, e.g. 5,300,1800")
            return [int(p) for p in parts]
        return value

    @field_validator("otel_traces_exporter")
    @classmethod
    def _check_exporters(cls, value: str) -> str:
        names = {p.strip().lower() for p in value.split(",") if p.strip()} or {"none"}
        unknown = names - {"otlp", "console", "none"}
        if unknown:
            raise ValueError(f"unknown exporter {sorted(unknown)[0]!r}; use otlp, console or none")
        return ",".join(sorted(names - {"none"})) or "none"

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _check_otlp_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("price_per_second_usd", mode="before")
    @classmethod
    def _parse_prices(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError(
                    'expected JSON such as {"veo-3.1-generate-preview": 0.4}'
                ) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// URL")
        return value

    @field_validator("admin_api_key", mode="before")
    @classmethod
    def _check_admin_key(cls, value: Any) -> Any:
        """No default admin key, and no placeholder standing in for one: blank is off."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if isinstance(raw, str):
            if raw.strip().lower().replace("_", "-") in _PLACEHOLDERS:
                raise ValueError("is a placeholder; set a long random value, or unset it")
            if len(raw) < ADMIN_KEY_MIN_CHARS:
                raise ValueError(f"must be at least {ADMIN_KEY_MIN_CHARS} characters")
        return value

    @field_validator("nextjs_url", "s3_endpoint_url", "public_base_url")
    @classmethod
    def _check_http(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.video_provider == "veo" and self.gemini_api_key is None:
            raise ValueError("VIDEO_PROVIDER=veo needs GEMINI_API_KEY (or VEO3_API_KEY)")
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET (or R2_BUCKET_NAME)")
        if self.veo_poll_max_interval_seconds < self.veo_poll_interval_seconds:
            raise ValueError(
                "VEO_POLL_MAX_INTERVAL_SECONDS must be at least VEO_POLL_INTERVAL_SECONDS"
            )
        return self

    # Derived values: computed, never stored twice.
    @property
    def provider(self) -> Literal["veo", "local"]:
        if self.video_provider:
            return self.video_provider
        return "veo" if self.gemini_api_key else "local"

    @property
    def default_model(self) -> str:
        return self.veo_model if self.provider == "veo" else "local"

    @property
    def s3_endpoint(self) -> str | None:
        if self.s3_endpoint_url:
            return self.s3_endpoint_url
        if self.r2_account_id:
            return f"https://{self.r2_account_id}.r2.cloudflarestorage.com"
        return None

    @property
    def asyncpg_dsn(self) -> str:
        """The DSN for SQLAlchemy's asyncpg dialect."""
        url = self.database_url
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url

    @property
    def public_url(self) -> str:
        return self.public_base_url or f"http://{self.api_host}:{self.api_port}"


_ENV_NAMES = {
    name: (
        field.validation_alias.choices[0]
        if isinstance(field.validation_alias, AliasChoices)
        else field.validation_alias
    )
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's report into one line that names the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"][0] if err["loc"] else None
        var = _ENV_NAMES.get(str(loc), str(loc)) if loc is not None else "configuration"
        msg = err["msg"].removeprefix("Value error, ")
        raise SettingsError(f"invalid configuration: {var}: {msg}") from None
    except _SourceError as exc:  # a value the environment source could not even decode
        field = str(exc).split('"')[1] if '"' in str(exc) else "configuration"
        raise SettingsError(
            f"invalid configuration: {_ENV_NAMES.get(field, field)}: cannot be parsed"
        ) from None
