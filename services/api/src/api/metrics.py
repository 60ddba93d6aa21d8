"""Prometheus metrics of the HTTP API, on the runtime's registry (one per app, never global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from shared.runtime import ServiceRuntime

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "reelflow_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "reelflow_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


def install_runtime_metrics(runtime: ServiceRuntime) -> HttpMetrics:
    """The HTTP metrics, beside those every runtime has (`shared.metrics.ServiceMetrics`)."""
    return HttpMetrics(runtime.registry)
