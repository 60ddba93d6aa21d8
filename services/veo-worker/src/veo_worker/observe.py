"""The worker's provider metrics (on the service's registry) and the spans of a job's steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram
from shared.telemetry import extract, tracer

if TYPE_CHECKING:
    from veo_worker.jobs import Job

_REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OPERATION_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600)


class ProviderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Histogram(
            "reelflow_provider_request_seconds",
            "Calls to the video provider (veo: submit, poll, download; local: render), by "
            "outcome (ok, transient, error, unknown)",
            ["provider", "operation", "outcome"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.submissions = Counter(
            "reelflow_provider_submissions",
            "Submissions sent to the provider, by outcome (ok: accepted)",
            ["provider", "outcome"],
            registry=registry,
        )
        self.operations = Histogram(
            "reelflow_provider_operation_seconds",
            "From a submission to the provider's finished video (or a local render's end), "
            "by model",
            ["provider", "model"],
            buckets=_OPERATION_BUCKETS,
            registry=registry,
        )

    @contextmanager
    def call(self, provider: str, operation: str) -> Iterator[None]:
        """Time one call; its outcome from what it raised (by the exception's class name)."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = _OUTCOMES.get(type(exc).__name__, "error")
            raise
        finally:
            self.requests.labels(provider, operation, outcome).observe(
                time.perf_counter() - started
            )
            if operation == "submit":
                self.submissions.labels(provider, outcome).inc()


# Named, not imported: the provider modules import this one.
_OUTCOMES = {"TransientError": "transient", "SubmitOutcomeUnknown": "unknown"}


@contextmanager
def job_span(job: Job) -> Iterator[Span]:
    """The job's run in this process, under the render command's consumer span (stored with
    the job), however much later and in whichever worker process it runs: its submit, polls,
    download and upload are this span's children."""
    with tracer().start_as_current_span(
        f"render {job.provider}",
        context=extract(job.trace_context),
        kind=SpanKind.INTERNAL,
        attributes={
            "reelflow.provider": job.provider,
            "reelflow.job.status": job.status,
            "reelflow.job.attempts": job.attempts,
            "reelflow.job.resumed": job.resumed,
        },
    ) as span:
        yield span


@contextmanager
def storage_span(storage: Any, key: str, content_type: str) -> Iterator[Span]:
    """One stored file: `S3.PutObject` (a CLIENT span, AWS SDK conventions) or a local write."""
    bucket = getattr(storage, "bucket", None)
    attributes: dict[str, Any] = {
        "reelflow.storage.key": key,
        "reelflow.content_type": content_type,
    }
    if bucket is not None:
        name, kind = "S3.PutObject", SpanKind.CLIENT
        attributes.update(
            {
                "rpc.system": "aws-api",
                "rpc.service": "S3",
                "rpc.method": "PutObject",
                "aws.s3.bucket": bucket,
                "aws.s3.key": key,
            }
        )
    else:
        name, kind = "storage put", SpanKind.INTERNAL
    with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span
