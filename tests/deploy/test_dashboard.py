"""deploy/grafana/reelflow.json against the code: every metric a panel queries is exported by
some service (its registry as the service's wiring builds it, nothing started), and every panel
reads the dashboard's Prometheus datasource variable."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from shared.settings import load_settings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "reelflow.json"
METRIC = re.compile(r"\breelflow_[a-z0-9_]+\b")
# The sample names a family of each type exposes (prometheus_client's text format names a
# counter's family with its `_total` already; its `_created` comes as a gauge family).
SUFFIXES = {
    "counter": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # a collapsed row holds its panels
    return found


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


def exported_samples() -> set[str]:
    """Every sample name the four services expose, from their registries as wired."""
    from api.metrics import install_runtime_metrics
    from notifier.main import build as notifier
    from orchestrator.main import build as orchestrator
    from shared.runtime import ServiceRuntime
    from veo_worker.main import build as worker

    settings = load_settings(VIDEO_PROVIDER="local")
    api = ServiceRuntime.build("api", settings)
    install_runtime_metrics(api)
    registries = [api.registry] + [
        b(settings).runtime.registry for b in (orchestrator, worker, notifier)
    ]
    names: set[str] = set()
    for registry in registries:
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("# TYPE "):
                _, _, family, kind = line.split(" ", 3)
                names.update(family + suffix for suffix in SUFFIXES[kind])
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_queried_metric_is_exported_by_a_service(dashboard: dict[str, Any]) -> None:
    exported = exported_samples()
    queried = {name for expr in _exprs(dashboard) for name in METRIC.findall(expr)}
    assert queried, "the dashboard queries no reelflow metric"
    missing = sorted(queried - exported)
    assert not missing, f"queried but exported by no service: {missing}"


def test_the_dashboard_covers_what_an_operator_looks_at(dashboard: dict[str, Any]) -> None:
    queried = {name for expr in _exprs(dashboard) for name in METRIC.findall(expr)}
    for needed in (
        "reelflow_generation_transitions_total",  # volume, success rate, failures
        "reelflow_generation_estimated_spend_usd_total",  # spend
        "reelflow_generation_status_seconds_bucket",  # time in status
        "reelflow_provider_request_seconds_bucket",  # provider latency
        "reelflow_provider_submissions_total",
        "reelflow_webhook_attempts_total",  # webhook health
        "reelflow_webhook_delivery_seconds_bucket",
        "reelflow_outbox_lag_seconds",
        "reelflow_dlq_messages",
        "reelflow_queue_consumers",
    ):
        assert needed in queried, needed


def test_panels_read_the_prometheus_datasource_variable(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == reference, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
