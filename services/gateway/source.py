"""A request's source network, for the detector's cross-client (colluding keys) test.

The source address is the TCP peer's, unless the peer is one of the operator's own proxies
(``MODELCUSTODY_GATEWAY_TRUSTED_PROXIES``): then it is the right-most address of the client-address header
(``X-Forwarded-For`` by default) that is not itself a trusted proxy. Each proxy appends the address it
received the request from, so everything left of that hop was written by the client and proves nothing;
a peer that is not a trusted proxy may send any header it likes and it is ignored. The address is widened
to its network (IPv4 /24, IPv6 /48 by default): one tenant's addresses usually share it, and a stable
key for a client whose address rotates inside its block.

The result is a string ("203.0.113.0/24"); "" when the address is unknown (no peer, e.g. a Unix socket).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SourceNetworks:
    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        header: str = "x-forwarded-for",
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 48,
    ) -> None:
        if not 0 <= ipv4_prefix <= 32 or not 0 <= ipv6_prefix <= 128:
            raise ValueError(f"prefix lengths out of range: /{ipv4_prefix}, /{ipv6_prefix}")
        self.trusted: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.header = header.strip().lower().encode("latin-1")
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        # Per distinct peer: parsing and widening an address costs a few microseconds; clients reuse theirs.
        self.network_of = lru_cache(maxsize=65_536)(self._network_of)

    def _network_of(self, address: str) -> str:
        ip = _parse(address)
        if ip is None:
            return ""
        prefix = self.ipv4_prefix if ip.version == 4 else self.ipv6_prefix
        return str(ipaddress.ip_network((ip, prefix), strict=False))

    def is_trusted(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.trusted)

    def source(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The source network of a request from ``peer`` with these (lower-case) header lines."""
        if not peer:
            return ""
        if not self.trusted:
            return self.network_of(peer)
        peer_ip = _parse(peer)
        if peer_ip is None or not self.is_trusted(peer_ip):
            return self.network_of(peer)
        # Several header lines are one list, in order (RFC 9110 §5.3).
        hops = [h.strip() for name, value in headers if name == self.header for h in value.split(b",")]
        client = peer
        for raw in reversed(hops):
            ip = _parse(raw.decode("latin-1"))
            if ip is None:
                break  # a hop our proxy did not write: the last trusted hop's peer stays the source
            client = str(ip)
            if not self.is_trusted(ip):
                break
        return self.network_of(client)


def _parse(address: str) -> IPAddress | None:
    """An address as a peer or proxy writes it: "1.2.3.4", "1.2.3.4:80", "::1", "[2001:db8::1]:443"."""
    text = address.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return ip
