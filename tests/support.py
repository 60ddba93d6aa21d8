"""Small helpers shared by the fixtures and tests of every member."""

from __future__ import annotations

import socket

ADMIN_KEY = "test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
