"""Small helpers shared by the fixtures and tests of every member."""

from __future__ import annotations

import socket

ADMIN_KEY = "test-admin-key"

# The abuse limits off (0), for suites and harnesses that drive many requests and generations
# from one key; the tests of the limits themselves turn them on (services/api/tests).
NO_LIMITS = {
    "RATE_LIMIT_PER_SECOND": "0",
    "QUOTA_MAX_CONCURRENT_GENERATIONS": "0",
    "QUOTA_VIDEO_SECONDS_PER_DAY": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
