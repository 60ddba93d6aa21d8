"""Load definitions.json into a running RabbitMQ and give the service users their passwords.

Used by deploy/compose.yaml's `rabbitmq-setup` (python:3.11-slim, standard library only).
Loading the file at boot instead would replace RabbitMQ's default user, and the committed file
carries no passwords (its users cannot log in until given one), so for local development it is
imported through the management API after boot, keeping `guest`, and each
`RABBITMQ_PASSWORD_REELFLOW_<SERVICE>` set in the environment becomes that user's password.

Environment: RABBITMQ_MANAGEMENT_URL (http://rabbitmq:15672), RABBITMQ_ADMIN_USER / _PASSWORD
(guest / guest), DEFINITIONS (/definitions.json), SETUP_TIMEOUT_SECONDS (120).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

PASSWORD_ENV_PREFIX = "RABBITMQ_PASSWORD_"  # as shared.topology.password_env


def _request(method: str, url: str, auth: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def setup(base: str, auth: str, definitions: dict[str, Any], timeout: float) -> list[str]:
    """Import `definitions`, then set passwords from the environment; the users given one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _request("GET", f"{base}/api/overview", auth)
            break
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"rabbitmq-setup: management API not reachable: {exc}") from None
            time.sleep(1)
    _request("POST", f"{base}/api/definitions", auth, definitions)
    given = []
    for user in definitions.get("users", []):
        name = user["name"]
        password = os.environ.get(PASSWORD_ENV_PREFIX + name.upper().replace("-", "_"))
        if password:
            quoted = urllib.parse.quote(name, safe="")
            _request("PUT", f"{base}/api/users/{quoted}", auth, {"password": password, "tags": ""})
            given.append(name)
    return given


def main() -> int:
    base = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://rabbitmq:15672").rstrip("/")
    auth = "{}:{}".format(
        os.environ.get("RABBITMQ_ADMIN_USER", "guest"),
        os.environ.get("RABBITMQ_ADMIN_PASSWORD", "guest"),
    )
    with open(os.environ.get("DEFINITIONS", "/definitions.json")) as f:
        definitions = json.load(f)
    given = setup(base, auth, definitions, float(os.environ.get("SETUP_TIMEOUT_SECONDS", "120")))
    print(f"rabbitmq-setup: definitions loaded; passwords set for {', '.join(given) or 'nobody'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
