"""``POST /v1/reports/verify`` against hostile input, through a real admin API (uvicorn over loopback).

The endpoint needs no token, so it must not be a way to stall the API: bodies over 1 MiB get 413, more than
four signatures 422, the work runs off the event loop, each source address has a token bucket, and an
envelope is checked against the predicate type its route names (an ownership audit by default), so a signed
registration or compliance record is never reported as a valid audit report.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit.signing import COMPLIANCE_PREDICATE, load_or_create_signing_key, sign_statement
from tests.utils.stack import Server, start_server

SUBJECT = [{"name": "suspect", "digest": {"sha256": "ab" * 32}}]
REGISTRATION = "https://modelcustody.dev/protected-model-registration/v1"


def start_api(tmp_path: Path, redis_url: str, **overrides: str) -> tuple[Server, Path]:
    data = tmp_path / "data"
    key_path = data / "keys" / "signing_ed25519.pem"
    load_or_create_signing_key(key_path)
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": redis_url,
        "MODELCUSTODY_DATA_DIR": str(data),
        "MODELCUSTODY_ADMIN_TOKEN": "verify-test-token-0123456789",
        **overrides,
    }
    return start_server("services.api.main:create_app", env, tmp_path / "logs", "api"), key_path


@pytest.fixture()
def api(tmp_path: Path, redis_url: str) -> Iterator[tuple[Server, Path]]:
    server, key_path = start_api(tmp_path, redis_url)
    yield server, key_path
    server.stop()


def envelope(key_path: Path, predicate_type: str = "https://modelcustody.dev/ownership-audit/v1") -> bytes:
    key = load_or_create_signing_key(key_path)
    return sign_statement({"decision": "claim", "method": "ewe"}, SUBJECT, key, predicate_type=predicate_type)


def test_a_valid_audit_report_verifies_and_other_predicates_only_on_their_route(api: tuple[Server, Path]) -> None:
    server, key_path = api
    with httpx.Client(base_url=server.url, timeout=10) as http:
        ok = http.post("/v1/reports/verify", content=envelope(key_path)).json()
        assert ok["valid"] is True and ok["decision"] == "claim"
        assert ok["predicate_type"] == "https://modelcustody.dev/ownership-audit/v1"
        for predicate, kind in ((COMPLIANCE_PREDICATE, "compliance"), (REGISTRATION, "registration")):
            body = envelope(key_path, predicate)
            wrong = http.post("/v1/reports/verify", content=body).json()
            assert wrong["valid"] is False and "predicateType" in wrong["error"], wrong
            right = http.post("/v1/reports/verify", params={"kind": kind}, content=body).json()
            assert right["valid"] is True and right["predicate_type"] == predicate, right
        # An audit report is not a compliance report either.
        swapped = http.post("/v1/reports/verify", params={"kind": "compliance"}, content=envelope(key_path)).json()
        assert swapped["valid"] is False
        assert http.post("/v1/reports/verify", params={"kind": "other"}, content=envelope(key_path)).status_code == 422


def test_oversized_bodies_get_413_and_many_signatures_422(api: tuple[Server, Path]) -> None:
    server, key_path = api
    doc = json.loads(envelope(key_path))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        big = http.post("/v1/reports/verify", content=b" " * (1024 * 1024 + 1))
        assert big.status_code == 413, big.text

        # Chunked (no Content-Length): the cap counts the bytes that arrive.
        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b" " * 65536

        assert http.post("/v1/reports/verify", content=chunks()).status_code == 413

        # Four signatures (one good among copies by unknown key ids) still verify; five are refused unread.
        other = {"keyid": "0" * 64, "sig": doc["signatures"][0]["sig"]}
        four = {**doc, "signatures": [other, other, other, doc["signatures"][0]]}
        assert http.post("/v1/reports/verify", content=json.dumps(four)).json()["valid"] is True
        forged = {"keyid": doc["signatures"][0]["keyid"], "sig": base64.b64encode(b"\0" * 64).decode()}
        many = {**doc, "signatures": [forged] * 5000}
        answer = http.post("/v1/reports/verify", content=json.dumps(many))
        assert answer.status_code == 422 and "signatures" in answer.json()["detail"], answer.text
        # Garbage is an invalid envelope (200, valid false), never a 500.
        garbage = http.post("/v1/reports/verify", content=b"[" * 100_000)
        assert garbage.status_code == 200 and garbage.json()["valid"] is False


def test_the_verify_endpoint_is_rate_limited_per_source(tmp_path: Path, redis_url: str) -> None:
    # A burst of 3 and a refill far slower than the test: the fourth request must be refused.
    server, key_path = start_api(
        tmp_path, redis_url, MODELCUSTODY_API_VERIFY_BURST="3", MODELCUSTODY_API_VERIFY_RATE_PER_S="0.01"
    )
    try:
        body = envelope(key_path)
        with httpx.Client(base_url=server.url, timeout=10) as http:
            codes = [http.post("/v1/reports/verify", content=body).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            refused = http.post("/v1/reports/verify", content=body)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            # The rest of the API is not affected.
            assert http.get("/v1/keys/public").status_code == 200
    finally:
        server.stop()
