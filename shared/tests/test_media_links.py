from __future__ import annotations

import pytest
from shared.media import LinkSigner

SIGNER = LinkSigner(b"secret", ttl_seconds=60)


def test_a_signed_link_verifies_until_it_expires() -> None:
    q = SIGNER.sign("videos/u/g.mp4", now=1000)
    assert q["exp"] == "1060"
    assert SIGNER.verify("videos/u/g.mp4", q["exp"], q["sig"], now=1059)
    assert not SIGNER.verify("videos/u/g.mp4", q["exp"], q["sig"], now=1061)


def test_a_link_for_one_object_does_not_open_another() -> None:
    q = SIGNER.sign("videos/u/g.mp4", now=1000)
    assert not SIGNER.verify("videos/u/other.mp4", q["exp"], q["sig"], now=1001)
    assert not SIGNER.verify("videos/u/g.mp4", str(int(q["exp"]) + 1), q["sig"], now=1001)
    assert not LinkSigner(b"other", 60).verify("videos/u/g.mp4", q["exp"], q["sig"], now=1001)


@pytest.mark.parametrize(
    ("exp", "sig"), [("²", "x"), ("", ""), ("12", "é"), ("-5", "x"), ("1e9", "x"), ("9" * 400, "x")]
)
def test_garbage_is_refused_not_raised(exp: str, sig: str) -> None:
    assert SIGNER.verify("k", exp, sig, now=0) is False
