"""`Idempotency-Key`: the same key and body within 24 h is the same request.

The body is compared by a SHA-256 of its canonical JSON after validation and defaults, so
`{"prompt": "x"}` and `{"params": {}, "prompt": "x", "auto_confirm": false}` are one request.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any

from api.problems import invalid

WINDOW = timedelta(hours=24)
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces: what fits a header


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not _KEY.match(key):
        raise invalid(
            [
                {
                    "field": "Idempotency-Key",
                    "location": "header",
                    "message": "must be 1-255 printable ASCII characters without spaces",
                }
            ]
        )
    return key


def request_hash(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
