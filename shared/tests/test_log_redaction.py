"""Secrets never reach a log line, whether they look like one or were configured as one."""

from __future__ import annotations

from shared.logging import MASK, redact, register_secrets


def test_secret_looking_and_configured_values_are_masked_and_the_rest_kept() -> None:
    register_secrets(["my-db-password-42"])
    line = (
        "key rf_AbCdEfGhIjKlMnOpQrSt secret whsec_c2VjcmV0c2VjcmV0 google "
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz012 auth Bearer tok.en-123456 dsn my-db-password-42"
    )
    assert redact(line) == (f"key {MASK} secret {MASK} google {MASK} auth Bearer {MASK} dsn {MASK}")
    plain = '[API] Request handled {"path": "/v1/generations/1", "status": 200}'
    assert redact(plain) is plain  # no trigger in it: not even scanned
