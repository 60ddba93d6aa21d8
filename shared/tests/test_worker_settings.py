"""The worker's scheduler and Veo settings: defaults, and bad values named at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared.settings import SettingsError, load_settings

NAMES = (
    "WORKER_LEASE_SECONDS",
    "VEO_POLL_INTERVAL_SECONDS",
    "VEO_POLL_MAX_INTERVAL_SECONDS",
    "VEO_OPERATION_DEADLINE_SECONDS",
    "VEO_MAX_IN_FLIGHT",
    "VEO_MAX_CONCURRENT_REQUESTS",
    "VEO_SUBMISSIONS_PER_MINUTE",
    "VEO_MAX_RETRIES",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = load_settings()
    assert s.worker_lease_seconds == 30
    assert (s.veo_poll_interval_seconds, s.veo_poll_max_interval_seconds) == (2, 10)
    assert s.veo_operation_deadline_seconds == 1200
    assert (s.veo_max_in_flight, s.veo_max_concurrent_requests) == (1000, 32)
    assert (s.veo_submissions_per_minute, s.veo_max_retries) == (10, 5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_LEASE_SECONDS", "0.5"),
        ("VEO_POLL_INTERVAL_SECONDS", "0"),
        ("VEO_OPERATION_DEADLINE_SECONDS", "-1"),
        ("VEO_MAX_IN_FLIGHT", "0"),
        ("VEO_MAX_CONCURRENT_REQUESTS", "lots"),
        ("VEO_SUBMISSIONS_PER_MINUTE", "0"),
        ("VEO_MAX_RETRIES", "-1"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_the_backoff_cap_cannot_be_below_the_first_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VEO_POLL_INTERVAL_SECONDS", "20")
    with pytest.raises(SettingsError, match="VEO_POLL_MAX_INTERVAL_SECONDS"):
        load_settings()
