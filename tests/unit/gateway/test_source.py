"""The source network a request is recorded with: a trusted proxy's header, or the TCP peer."""

from __future__ import annotations

import pytest

from services.core.settings import Settings
from services.gateway.source import SourceNetworks

XFF = b"x-forwarded-for"


def test_without_trusted_proxies_the_peer_is_the_source_and_headers_are_ignored() -> None:
    sources = SourceNetworks()
    assert sources.source("198.51.100.7", [(XFF, b"203.0.113.9")]) == "198.51.100.0/24"
    assert sources.source("2001:db8:1:2::5", []) == "2001:db8:1::/48"
    assert sources.source(None, [(XFF, b"203.0.113.9")]) == ""


def test_a_trusted_proxy_names_the_right_most_untrusted_hop() -> None:
    sources = SourceNetworks(["10.0.0.0/8"])
    # The client wrote "192.0.2.1" itself; the proxy appended the address it saw (203.0.113.9).
    assert sources.source("10.1.2.3", [(XFF, b"192.0.2.1, 203.0.113.9")]) == "203.0.113.0/24"
    # Two proxies of ours in a row: the one nearer the client appended the client, the next one it.
    assert sources.source("10.1.2.3", [(XFF, b"192.0.2.1, 203.0.113.9, 10.9.9.9")]) == "203.0.113.0/24"
    # Several header lines are one list, in order.
    assert sources.source("10.1.2.3", [(XFF, b"192.0.2.1"), (XFF, b"203.0.113.9")]) == "203.0.113.0/24"
    # Ports and brackets as proxies write them; an IPv4-mapped IPv6 address is the IPv4 client.
    assert sources.source("10.1.2.3", [(XFF, b"203.0.113.9:5555")]) == "203.0.113.0/24"
    assert sources.source("10.1.2.3", [(XFF, b"[2001:db8:7::1]:443")]) == "2001:db8:7::/48"
    assert sources.source("::ffff:10.1.2.3", [(XFF, b"::ffff:203.0.113.9")]) == "203.0.113.0/24"


def test_an_untrusted_peer_cannot_choose_its_network() -> None:
    sources = SourceNetworks(["10.0.0.0/8"])
    assert sources.source("198.51.100.7", [(XFF, b"203.0.113.9")]) == "198.51.100.0/24"


def test_garbage_or_a_missing_header_falls_back_to_the_last_trusted_hop() -> None:
    sources = SourceNetworks(["10.0.0.0/8"])
    assert sources.source("10.1.2.3", []) == "10.1.2.0/24"
    assert sources.source("10.1.2.3", [(XFF, b"203.0.113.9, not-an-ip")]) == "10.1.2.0/24"
    assert sources.source("10.1.2.3", [(XFF, b"not-an-ip, 10.7.7.7")]) == "10.7.7.0/24"


def test_prefixes_and_header_are_settings() -> None:
    sources = SourceNetworks(["127.0.0.1/32"], header="X-Real-IP", ipv4_prefix=16, ipv6_prefix=64)
    assert sources.source("127.0.0.1", [(b"x-real-ip", b"203.0.113.9"), (XFF, b"192.0.2.1")]) == "203.0.0.0/16"
    assert sources.source("2001:db8:1:2:3::1", []) == "2001:db8:1:2::/64"
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings(gateway_trusted_proxies=["10.0.0.0/33"])
