"""The egress policy: which addresses audits and webhooks may reach, and pinning to the checked address."""

from __future__ import annotations

import ipaddress

import pytest

from services.core.egress import EgressPolicy, EgressRefused, refusal_reason
from services.core.settings import Settings


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: the same host
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "private"),  # Python counts 0.0.0.0/8 as private; refused either way
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_internal_addresses_are_named(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


def test_names_resolving_inward_are_refused_unless_allow_listed() -> None:
    strict = EgressPolicy(())
    with pytest.raises(EgressRefused, match="loopback"):
        strict.resolve("http://localhost:6379/")
    with pytest.raises(EgressRefused, match="link-local"):
        strict.resolve("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(EgressRefused, match="http"):
        strict.resolve("file:///etc/passwd")
    assert EgressPolicy(["127.0.0.0/8", "::1/128"]).resolve("http://localhost:8080/") != []


def test_pinning_keeps_the_name_for_the_host_header_and_tls() -> None:
    policy = EgressPolicy(["127.0.0.0/8"])
    pinned = policy.pin("http://127.0.0.1:8081/v2/models/m/infer?x=1")
    assert pinned.url == "http://127.0.0.1:8081/v2/models/m/infer?x=1" and pinned.host_header == "127.0.0.1:8081"
    secure = EgressPolicy(["127.0.0.0/8", "::1/128"]).pin("https://localhost/predict")
    assert secure.host_header == "localhost" and secure.extensions == {"sni_hostname": "localhost"}
    assert secure.url.startswith(("https://127.0.0.1/predict", "https://[::1]/predict"))


def test_loopback_is_allowed_by_default_only_outside_prod() -> None:
    dev = EgressPolicy.from_settings(Settings(env="test"))
    prod = EgressPolicy.from_settings(
        Settings(env="prod", admin_token="a-real-admin-token-0123456789", answer_watermark_mode="off")
    )
    assert dev.allowed(ipaddress.ip_address("127.0.0.1"))
    assert not prod.allowed(ipaddress.ip_address("127.0.0.1"))
    listed = Settings(
        env="prod", admin_token="a-real-admin-token-0123456789", answer_watermark_mode="off",
        egress_allow_networks=["10.0.0.0/8"],
    )
    assert EgressPolicy.from_settings(listed).allowed(ipaddress.ip_address("10.9.9.9"))
    with pytest.raises(ValueError, match="EGRESS_ALLOW_NETWORKS"):
        Settings(egress_allow_networks=["not-a-network"])
