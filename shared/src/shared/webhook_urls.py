"""Which webhook URLs and addresses a user may point Reelflow at (SSRF rules, shared by the API,
which refuses obviously internal URLs at registration, and the notifier, which checks the
address it actually connects to).

Registration looks only at the URL itself (no DNS: a name can change what it resolves to after
we look, so the connect-time check in the notifier is the one that counts).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

# Names that only ever mean something inside a network: RFC 6761/6762/8375 special-use names
# and the usual private suffixes (cloud metadata lives under .internal).
INTERNAL_NAMES = ("localhost",)
INTERNAL_SUFFIXES = (
    ".localhost",
    ".local",
    ".internal",
    ".localdomain",
    ".home.arpa",
    ".lan",
    ".intranet",
    ".corp",
)


def is_forbidden(host: str) -> bool:
    """An IP address we refuse to call: loopback, private, link-local (cloud metadata), CGNAT,
    reserved, multicast, unspecified, and IPv4-mapped IPv6 forms of them. ValueError if `host`
    is not an IP address."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not addr.is_global or addr.is_multicast


def legacy_ipv4(host: str) -> str | None:
    """`127.1`, `0x7f.1`, `2130706433`, `0177.0.0.1`: forms a resolver reads as IPv4 addresses."""
    if not host or not all(c in "0123456789abcdefx." for c in host):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


class BadWebhookUrl(ValueError):
    """Why a URL cannot be registered (the message is shown to the user)."""


def normalised_host(url: str) -> str:
    """The URL's host as a resolver would see it (IDNA, lower case, no trailing dot, IPv6
    without brackets); BadWebhookUrl if the URL is not an absolute http(s) URL."""
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        raise BadWebhookUrl("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a port that is not a number in range)
    except ValueError as exc:
        raise BadWebhookUrl(f"not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise BadWebhookUrl("must be an http:// or https:// URL")
    host = parts.hostname or ""
    if not host:
        raise BadWebhookUrl("must name a host")
    if "%" in host and ":" not in host:
        raise BadWebhookUrl("the host must not be percent-encoded")
    if ":" in host:  # IPv6 literal
        return host
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise BadWebhookUrl("the host is not a valid domain name") from None
    return host.lower().rstrip(".")


def internal_reason(host: str) -> str | None:
    """Why `host` (from `normalised_host`) is obviously internal, or None."""
    literal = legacy_ipv4(host) or host
    try:
        if is_forbidden(literal):
            return f"{host} is not a public address"
        return None
    except ValueError:
        pass  # a name
    if host in INTERNAL_NAMES or host.endswith(INTERNAL_SUFFIXES):
        return f"{host} is an internal name"
    if "." not in host:
        return f"{host} is a single-label name, resolved only inside a private network"
    return None
