"""API keys: a visible prefix plus a random secret; only a SHA-256 of the whole key is stored.

New keys read `rf_live_<43 random characters>`; keys made before the prefix changed (`rf_…`)
keep working, since a key is found by the SHA-256 of the whole string whatever its form. The
first `PREFIX_CHARS` characters are kept in clear, so a person can tell their keys apart
(`reelflow keys list`) and revoke one by it, without the rest ever being stored.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "rf_live_"
LEGACY_PREFIX = "rf_"
PREFIX_CHARS = len(KEY_PREFIX) + 8  # "rf_live_" and 8 of the 256 random bits: ~48 bits shown
MAX_KEY_CHARS = 200  # longer bearer tokens are refused before hashing


def new_api_key() -> tuple[str, str, str]:
    """(the key to show once, its visible prefix, its SHA-256 hex to store)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:PREFIX_CHARS], hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def could_be_api_key(token: str) -> bool:
    """Cheap shape check before any lookup: our prefix, printable ASCII, a sane length."""
    return (
        token.startswith(LEGACY_PREFIX)
        and len(token) <= MAX_KEY_CHARS
        and token.isascii()
        and token.isprintable()
    )
