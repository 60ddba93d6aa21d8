"""Standard Webhooks headers: `webhook-id`, `webhook-timestamp`, `webhook-signature`.

The signature is `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, made by the
`standardwebhooks` library itself so receivers using it verify exactly what we sign. Each
attempt is signed afresh (a new timestamp), so a retry hours later still passes a receiver's
five-minute freshness check. Several keys give several signatures (secret rotation).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

USER_AGENT = "Reelflow-Webhooks/0.1"


# A key is a registered endpoint's `whsec_…` secret, or raw key bytes.
Key = str | bytes


def bearer_key(token: str) -> bytes:
    """`NEXTJS_URL`'s key: the UTF-8 bytes of `WORKER_API_KEY` (verifiable as
    `whsec_` + base64 of it)."""
    return token.encode()


_SIGNERS: dict[Key, Webhook] = {}
_MAX_SIGNERS = 10_000


def _signer(key: Key) -> Webhook:
    """One `Webhook` per key (it decodes the secret once), for every attempt signed with it."""
    found = _SIGNERS.get(key)
    if found is None:
        if len(_SIGNERS) >= _MAX_SIGNERS:
            _SIGNERS.clear()
        found = _SIGNERS[key] = Webhook(key)
    return found


def sign(webhook_id: str, body: str, keys: Sequence[Key], now: datetime) -> dict[str, str]:
    moment = now.astimezone(UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
    }
    signatures = [_signer(key).sign(webhook_id, moment, body) for key in keys]
    if signatures:
        headers["webhook-signature"] = " ".join(signatures)
    return headers


def request_headers(
    webhook_id: str,
    body: str,
    keys: Sequence[Key],
    now: datetime,
    *,
    bearer: str | None = None,
    traceparent: str | None = None,
) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **sign(webhook_id, body, keys, now),
    }
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    if traceparent:
        headers["traceparent"] = traceparent
    return headers
