"""ADMIN_API_KEY: never a default; blank is off; placeholders and short values stop the start."""

from __future__ import annotations

import pytest
from shared.settings import Settings, SettingsError, load_settings


def test_there_is_no_default_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADMIN_API_KEY", raising=False)
    assert Settings.model_fields["admin_api_key"].default is None
    assert load_settings(_env_file=None).admin_api_key is None


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_admin_key_turns_the_admin_routes_off(blank: str) -> None:
    assert load_settings(ADMIN_API_KEY=blank).admin_api_key is None


@pytest.mark.parametrize("value", ["CHANGE-ME", "changeme", "Admin", "change_me", "secret"])
def test_placeholders_are_refused_in_one_line(value: str) -> None:
    with pytest.raises(
        SettingsError, match=r"^invalid configuration: ADMIN_API_KEY: .*placeholder"
    ):
        load_settings(ADMIN_API_KEY=value)


def test_short_admin_keys_are_refused() -> None:
    with pytest.raises(SettingsError, match="ADMIN_API_KEY: must be at least 8 characters"):
        load_settings(ADMIN_API_KEY="abc123")
    key = load_settings(ADMIN_API_KEY="a-long-random-admin-key").admin_api_key
    assert key is not None and key.get_secret_value() == "a-long-random-admin-key"
    assert "a-long-random" not in repr(load_settings(ADMIN_API_KEY="a-long-random-admin-key"))
