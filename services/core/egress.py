"""Where audits and webhooks may connect: resolve the host, refuse internal addresses, pin the connection.

An audit's suspect URL and the webhook URL are chosen by people who hold the admin token, but the
requests leave from inside the deployment: pointed at ``127.0.0.1:6379``, ``169.254.169.254`` (cloud
metadata) or a private service, they would turn the worker into a proxy into the internal network
(server-side request forgery). So every request resolves its host first and is refused when any
address is not globally routable (loopback, link-local, private, shared, reserved, unspecified) or is
multicast, unless it lies in a network the operator allow-listed (``MODELCUSTODY_EGRESS_ALLOW_NETWORKS``;
outside ``prod`` loopback is allowed too, because the demo and the tests run everything on one host).

The request then goes to the address that was checked, not to a second lookup (a DNS answer that changes
between check and connect, "DNS rebinding", would otherwise slip through): the URL's host is replaced by
the IP, the ``Host`` header keeps the name, and for HTTPS the name is still what TLS verifies (httpx's
``sni_hostname`` extension).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class EgressRefused(ValueError):
    """The destination is not one this deployment may connect to; the message says which address and why."""


@dataclass(frozen=True)
class Pinned:
    """A request target bound to one checked address."""

    url: str  # the URL with the host replaced by the checked IP
    host_header: str  # the original host[:port], for the Host header
    extensions: dict[str, Any]  # sni_hostname for HTTPS, so TLS still verifies the name


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is internal, or None for a public unicast address."""
    ip = _unmapped(ip)
    for name in ("loopback", "link_local", "multicast", "private", "reserved", "unspecified"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:
        return "not globally routable"
    return None


class EgressPolicy:
    def __init__(self, allow: Iterable[str | IPNetwork] = ()) -> None:
        self.allow: tuple[IPNetwork, ...] = tuple(
            n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) else ipaddress.ip_network(n, strict=False)
            for n in allow
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        networks: list[str | IPNetwork] = list(settings.egress_allow_networks)
        if settings.env != "prod":
            networks.extend(LOOPBACK)  # demo and tests run the suspect and the webhook receiver on this host
        return cls(networks)

    def allowed(self, ip: IPAddress) -> bool:
        ip = _unmapped(ip)
        return refusal_reason(ip) is None or any(ip in net for net in self.allow if net.version == ip.version)

    def resolve(self, url: str) -> list[IPAddress]:
        """Every address ``url``'s host resolves to, each checked; EgressRefused on the first refused one."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise EgressRefused(f"not an http(s) URL with a host: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise EgressRefused(f"malformed port in {url!r}") from None
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise EgressRefused(f"cannot resolve {host!r}: {exc}") from None
        addresses: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # drop an IPv6 zone id
            if not self.allowed(ip):
                # Any refused address refuses the name: a host that also resolves inward is not trusted.
                raise EgressRefused(
                    f"{host!r} resolves to {ip} ({refusal_reason(ip)}); egress to internal addresses is refused "
                    "unless the operator allow-lists the network (MODELCUSTODY_EGRESS_ALLOW_NETWORKS)"
                )
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise EgressRefused(f"{host!r} resolves to no address")
        return addresses

    def pin(self, url: str) -> Pinned:
        """``url`` bound to its first checked address (see the module docstring)."""
        ip = self.resolve(url)[0]
        parts = urlsplit(url)
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = literal + (f":{parts.port}" if parts.port else "")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        return Pinned(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), host_header, extensions)
