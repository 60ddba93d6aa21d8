from __future__ import annotations

import pytest
from shared.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _no_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    for name in (
        "GEMINI_API_KEY",
        "VEO3_API_KEY",
        "VIDEO_PROVIDER",
        "R2_BUCKET_NAME",
        "S3_BUCKET",
        "NEXTJS_URL",
        "WEBHOOK_RETRY_SCHEDULE",
        "API_PORT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_contract() -> None:
    s = load_settings()
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/reelflow"
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert (s.api_host, s.api_port) == ("127.0.0.1", 8000)
    assert s.provider == "local"
    assert s.veo_model == "veo-3.1-fast-generate-preview"
    assert s.webhook_retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert s.media_url_ttl_seconds == 3600
    assert s.webhook_allow_private_networks is False


def test_seed_names_are_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEO3_API_KEY", "k")
    monkeypatch.setenv("R2_ACCOUNT_ID", "acct")
    monkeypatch.setenv("R2_BUCKET_NAME", "videos")
    monkeypatch.setenv("R2_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "secret")
    s = load_settings()
    assert s.provider == "veo"
    assert s.gemini_api_key is not None and s.gemini_api_key.get_secret_value() == "k"
    assert s.s3_bucket == "videos"
    assert s.s3_endpoint == "https://acct.r2.cloudflarestorage.com"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_PORT", "eighty"),
        ("WEBHOOK_RETRY_SCHEDULE", "5,soon"),
        ("NEXTJS_URL", "ftp://example.com"),
        ("DATABASE_URL", "mysql://x"),
        ("MEDIA_URL_TTL_SECONDS", "0"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_bad_value_fails_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert name in message and "\n" not in message


def test_a_secret_never_appears_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEO_PROVIDER", "veo")  # without a key: invalid
    monkeypatch.setenv("WORKER_API_KEY", "super-secret-value")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "super-secret-value" not in str(err.value)
    assert "GEMINI_API_KEY" in str(err.value)
