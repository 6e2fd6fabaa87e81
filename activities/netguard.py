"""Where an outbound fetch of a URL chosen by a client or an agent may go.

Pure functions, no network: :func:`check_url` parses a URL (with the parser that makes the
request) and refuses what can never be fetched; :func:`check_address` decides whether one
resolved address may be connected to. The fetcher resolves a host once, checks every address
it got, then connects to the checked address itself (the Host header and TLS name stay the
host's), so a second, different DNS answer can never be used. Every redirect hop goes through
both checks again.

By default only public (globally routable) unicast addresses on web ports are allowed.
Loopback, private (RFC 1918, CGNAT, IPv6 unique-local) networks are allowed only when
:attr:`FetchPolicy.allow_private_networks` says so (``bizosaas dev`` and the tests), or for the
networks of :attr:`FetchPolicy.allowed_networks`. Link-local (cloud metadata), multicast,
unspecified and reserved addresses are never allowed unless a network lists them explicitly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Ports a public site may be fetched on.
WEB_PORTS = frozenset({80, 443, 8080, 8443})

# Reasons a URL is refused (the ``reason`` of :class:`URLRefused`; stable, for callers and logs).
SCHEME = "scheme"
CREDENTIALS = "credentials"
HOST = "host"
IPV4_SPELLING = "ipv4_spelling"
PORT = "port"
LOOPBACK = "loopback"
PRIVATE = "private"
SHARED = "shared"  # carrier-grade NAT, 100.64.0.0/10
LINK_LOCAL = "link_local"
MULTICAST = "multicast"
UNSPECIFIED = "unspecified"
RESERVED = "reserved"
# Categories a deployment may open with allow_private_networks.
PRIVATE_CATEGORIES = frozenset({LOOPBACK, PRIVATE, SHARED})

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
# IANA special-purpose IPv4 blocks, most specific first (Python's own tables vary by version).
_V4_BLOCKS: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("0.0.0.0/8"), UNSPECIFIED),
    (_V4("127.0.0.0/8"), LOOPBACK),
    (_V4("10.0.0.0/8"), PRIVATE),
    (_V4("172.16.0.0/12"), PRIVATE),
    (_V4("192.168.0.0/16"), PRIVATE),
    (_V4("100.64.0.0/10"), SHARED),
    (_V4("169.254.0.0/16"), LINK_LOCAL),
    (_V4("224.0.0.0/4"), MULTICAST),
    (_V4("192.0.0.0/24"), RESERVED),
    (_V4("192.0.2.0/24"), RESERVED),
    (_V4("192.88.99.0/24"), RESERVED),
    (_V4("198.18.0.0/15"), RESERVED),
    (_V4("198.51.100.0/24"), RESERVED),
    (_V4("203.0.113.0/24"), RESERVED),
    (_V4("240.0.0.0/4"), RESERVED),  # includes 255.255.255.255
)
_V6_BLOCKS: tuple[tuple[IPNetwork, str], ...] = (
    (_V6("::/128"), UNSPECIFIED),
    (_V6("::1/128"), LOOPBACK),
    (_V6("fc00::/7"), PRIVATE),  # unique local
    (_V6("fec0::/10"), PRIVATE),  # site local (deprecated)
    (_V6("fe80::/10"), LINK_LOCAL),
    (_V6("ff00::/8"), MULTICAST),
    (_V6("::/96"), RESERVED),  # IPv4-compatible (deprecated)
    (_V6("64:ff9b:1::/48"), RESERVED),  # local-use NAT64
    (_V6("2001::/32"), RESERVED),  # Teredo: the IPv4 inside is obfuscated
    (_V6("100::/64"), RESERVED),  # discard
    (_V6("2001:db8::/32"), RESERVED),  # documentation
)
# Forms that carry an IPv4 address a packet may end up at: judged by that address.
_NAT64 = _V6("64:ff9b::/96")
_6TO4 = _V6("2002::/16")

# A host whose last label is a number is an IPv4 address in the WHATWG URL standard (and for
# inet_aton): "2130706433", "0x7f.1", "017700000001" all mean 127.0.0.1.
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0[xX][0-9a-fA-F]*)$")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class URLRefused(Exception):
    """The URL (or the address its host resolves to) may not be fetched. Permanent."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class AllowedNetwork:
    """A network the policy opens, on one port or (``port`` None) on every port."""

    network: IPNetwork
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedNetwork:
        """``CIDR`` or ``CIDR:port``, e.g. ``10.1.0.0/16``, ``127.0.0.1/32:8081``, ``fd00::/8:443``."""
        address, slash, rest = text.strip().partition("/")
        if not slash:
            raise ValueError(f"allowed network {text!r}: write it as a CIDR, e.g. 10.0.0.0/8 or 127.0.0.1/32:8080")
        prefix, colon, port = rest.partition(":")
        try:
            network = ipaddress.ip_network(f"{address}/{prefix}", strict=True)
            number = int(port) if colon else None
        except ValueError as exc:
            raise ValueError(f"allowed network {text!r}: {exc}") from None
        if number is not None and not 0 < number < 65536:
            raise ValueError(f"allowed network {text!r}: port out of range")
        return cls(network=network, port=number)

    def admits(self, ip: IPAddress, port: int) -> bool:
        return ip.version == self.network.version and ip in self.network and self.port in (None, port)


@dataclass(frozen=True)
class FetchPolicy:
    # Loopback, RFC 1918, CGNAT and IPv6 unique-local addresses on any port (dev and tests).
    allow_private_networks: bool = False
    # Networks opened explicitly (any category, link-local included), optionally per port.
    allowed_networks: tuple[AllowedNetwork, ...] = ()
    # Ports a public address may be fetched on.
    public_ports: frozenset[int] = field(default=WEB_PORTS)

    @classmethod
    def from_settings(cls, allow_private_networks: bool, allowed_networks: Iterable[str],
                      public_ports: Iterable[int] = WEB_PORTS) -> FetchPolicy:
        return cls(allow_private_networks=allow_private_networks,
                   allowed_networks=tuple(AllowedNetwork.parse(n) for n in allowed_networks),
                   public_ports=frozenset(public_ports))


@dataclass(frozen=True)
class Target:
    """A URL that passed :func:`check_url`: what to resolve and how to address the server."""

    url: httpx.URL
    host: str  # lower-case ASCII (IDNA), no trailing dot; an IP literal without brackets
    port: int
    literal: IPAddress | None  # the host is an IP address: nothing to resolve

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if DEFAULT_PORTS[self.url.scheme] == self.port else f"{name}:{self.port}"

    def pinned(self, ip: IPAddress) -> httpx.URL:
        """The same request addressed to ``ip`` (the caller sends Host and the TLS name)."""
        return self.url.copy_with(host=str(ip), fragment=None)


def check_url(url: str | httpx.URL) -> Target:
    """Parse ``url`` and refuse what no address check could make safe: another scheme,
    credentials, an unusable host, an IPv4 address spelled in decimal, octal or hex."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise URLRefused(HOST, f"not a valid URL: {exc}") from None
    if parsed.scheme not in SCHEMES:
        raise URLRefused(SCHEME, f"scheme {parsed.scheme or '(none)'!r} is not http or https")
    if parsed.userinfo:
        raise URLRefused(CREDENTIALS, "a URL with credentials (user@host) is not fetched")
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[parsed.scheme]
    if not 0 < port < 65536:
        raise URLRefused(PORT, f"port {port} is out of range")
    raw = parsed.host
    if not raw:
        raise URLRefused(HOST, "the URL has no host")
    if "%" in raw:
        raise URLRefused(HOST, f"host {raw!r}: percent-encoded hosts and IPv6 zones are not fetched")
    if ":" in raw:  # an IPv6 literal (the parser took off the brackets)
        try:
            return Target(url=parsed, host=raw.lower(), port=port, literal=ipaddress.IPv6Address(raw))
        except ValueError:
            raise URLRefused(HOST, f"host {raw!r} is not a valid IPv6 address") from None
    try:
        host = parsed.raw_host.decode("ascii").lower().removesuffix(".")
    except UnicodeDecodeError:
        raise URLRefused(HOST, f"host {raw!r} is not a valid host name") from None
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        ip = parse_ipv4(host)
        if ip is None:
            raise URLRefused(HOST, f"host {raw!r} ends in a number but is not an IPv4 address")
        if str(ip) != host:
            raise URLRefused(IPV4_SPELLING, f"host {raw!r} spells the IPv4 address {ip} in a non-standard form")
        return Target(url=parsed, host=host, port=port, literal=ip)
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise URLRefused(HOST, f"host {raw!r} is not a valid host name")
    return Target(url=parsed, host=host, port=port, literal=None)


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host means (WHATWG URL / inet_aton: 1 to 4 parts, each
    decimal, octal with a leading 0, or hex with 0x; the last part fills the rest), or None."""
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if part[:2].lower() == "0x":
            digits, base = part[2:] or "0", 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        try:
            numbers.append(int(digits, base))
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def embedded_ipv4(ip: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries to (IPv4-mapped, NAT64, 6to4), with its form."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    return None


def category(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is (a reason constant), or None if it is public.
    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by that address."""
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        return category(embedded[1])
    for network, kind in _V6_BLOCKS if ip.version == 6 else _V4_BLOCKS:
        if ip in network:
            return kind
    return None if ip.is_global else RESERVED


_NAMES = {
    LOOPBACK: "a loopback address", PRIVATE: "a private address", SHARED: "a carrier-grade NAT address",
    LINK_LOCAL: "a link-local address (cloud metadata lives there)", MULTICAST: "a multicast address",
    UNSPECIFIED: "an unspecified address", RESERVED: "a reserved address",
}


def check_address(ip: IPAddress, port: int, policy: FetchPolicy) -> IPAddress:
    """The address to connect to if ``ip`` on ``port`` is allowed (an IPv4-mapped IPv6 address
    becomes its IPv4 address), else :class:`URLRefused`."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise URLRefused(HOST, f"{ip} has a zone; scoped addresses are not fetched")
    target = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if any(n.admits(target, port) for n in policy.allowed_networks):
        return target
    kind = category(ip)
    if kind is None:
        if port not in policy.public_ports:
            raise URLRefused(PORT, f"port {port} is not a web port ({', '.join(map(str, sorted(policy.public_ports)))})")
        return target
    if kind in PRIVATE_CATEGORIES and policy.allow_private_networks:
        return target
    embedded = embedded_ipv4(ip)
    shown = f"{ip} ({embedded[0]} {embedded[1]})" if embedded else str(ip)
    raise URLRefused(kind, f"{shown} is {_NAMES[kind]}")


def check_addresses(target: Target, addresses: Iterable[str], policy: FetchPolicy) -> IPAddress:
    """Every address a host resolved to must be allowed (a name that also points inside is
    refused); answers the first, the one to connect to."""
    chosen: IPAddress | None = None
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise URLRefused(HOST, f"{target.host} resolved to {text!r}, not an IP address") from None
        try:
            allowed = check_address(ip, target.port, policy)
        except URLRefused as exc:
            raise URLRefused(exc.reason, f"{target.host} resolves to {text}: {exc.message}") from None
        chosen = chosen or allowed
    if chosen is None:
        raise URLRefused(HOST, f"{target.host} resolved to no address")
    return chosen
