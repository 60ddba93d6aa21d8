"""API keys: a visible prefix plus a random secret; only a SHA-256 of the whole key is stored."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "rf_"


def new_api_key() -> tuple[str, str, str]:
    """(the key to show once, its visible prefix, its SHA-256 hex to store)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:10], hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
