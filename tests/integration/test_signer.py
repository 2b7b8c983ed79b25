"""The signer service over real HTTP on loopback (``services.signer.app`` under uvicorn): it signs our three
predicate types for holders of its token, and refuses a wrong token, an unknown predicate type and an
oversized body, each with a 4xx and a reason. The key file is read by the signer only."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit.signing import (
    COMPLIANCE_PREDICATE,
    OWNERSHIP_AUDIT_PREDICATE,
    REGISTRATION_PREDICATE,
    key_id,
    verify_envelope,
)
from services.core.signer_client import RemoteSigner, SignerUnavailable
from tests.utils.stack import REPO, Server, start_server

SUBJECTS = [{"name": "model.safetensors", "digest": {"sha256": "ab" * 32}}]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, Path]]:
    base = tmp_path_factory.mktemp("signer")
    token = secrets.token_urlsafe(24)
    key_path = base / "keys" / "signing_ed25519.pem"
    env = {"MODELCUSTODY_ENV": "test", "MODELCUSTODY_SIGNER_TOKEN": token,
           "MODELCUSTODY_SIGNING_KEY_PATH": str(key_path), "MODELCUSTODY_SIGNER_MAX_BODY_BYTES": "65536"}
    server = start_server("services.signer.app:create_app", env, base / "logs", "signer")
    yield server, token, key_path
    server.stop()


def test_signs_each_known_predicate_and_the_envelope_verifies(signer: tuple[Server, str, Path]) -> None:
    server, token, key_path = signer
    remote = RemoteSigner(server.url, token)
    pem = remote.public_key_pem()
    assert key_path.exists() and key_id(pem) == httpx.get(f"{server.url}/healthz").json()["keyid"]
    for predicate_type in (OWNERSHIP_AUDIT_PREDICATE, COMPLIANCE_PREDICATE, REGISTRATION_PREDICATE):
        envelope = remote.sign({"decision": "claim", "p_value": 0.001}, SUBJECTS, predicate_type)
        statement = verify_envelope(envelope, pem, predicate_type=predicate_type)
        assert statement["predicate"] == {"decision": "claim", "p_value": 0.001}
        assert statement["subject"] == SUBJECTS


def test_refuses_a_wrong_or_missing_token_before_anything_else(signer: tuple[Server, str, Path]) -> None:
    server, token, _ = signer
    body = {"predicate_type": OWNERSHIP_AUDIT_PREDICATE, "predicate": {}, "subjects": SUBJECTS}
    for headers in ({}, {"authorization": f"Bearer {token}x"}, {"authorization": f"Basic {token}"},
                    {"authorization": "Bearer"}):
        got = httpx.post(f"{server.url}/v1/sign", json=body, headers=headers)
        assert got.status_code == 401, (headers, got.text)
        assert "token" in got.json()["detail"]
    with pytest.raises(SignerUnavailable, match="refused \\(401\\)") as caught:
        RemoteSigner(server.url, "wrong-token").sign({}, SUBJECTS, OWNERSHIP_AUDIT_PREDICATE)
    assert "wrong-token" not in str(caught.value) and token not in str(caught.value)


def test_refuses_unknown_predicate_types_and_malformed_statements(signer: tuple[Server, str, Path]) -> None:
    server, token, _ = signer
    auth = {"authorization": f"Bearer {token}"}

    def post(body: object) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/sign", json=body, headers=auth)

    unknown = post({"predicate_type": "https://slsa.dev/provenance/v1", "predicate": {}, "subjects": SUBJECTS})
    assert unknown.status_code == 422 and "unknown predicate type" in unknown.json()["detail"]
    # Near misses of ours are unknown too: the check is equality, not a prefix.
    near = post({"predicate_type": OWNERSHIP_AUDIT_PREDICATE + "x", "predicate": {}, "subjects": SUBJECTS})
    assert near.status_code == 422
    assert post({"predicate_type": OWNERSHIP_AUDIT_PREDICATE, "predicate": {}, "subjects": []}).status_code == 422
    bad_digest = [{"name": "m", "digest": {"sha256": "not-hex"}}]
    malformed = post({"predicate_type": OWNERSHIP_AUDIT_PREDICATE, "predicate": {}, "subjects": bad_digest})
    assert malformed.status_code == 422 and "malformed sha256" in malformed.json()["detail"]
    assert post({"predicate_type": OWNERSHIP_AUDIT_PREDICATE, "predicate": {}}).status_code == 422
    assert post([1, 2]).status_code == 422
    raw = httpx.post(f"{server.url}/v1/sign", content=b"{not json", headers=auth)
    assert raw.status_code == 400
    big = httpx.post(f"{server.url}/v1/sign", headers=auth, json={
        "predicate_type": OWNERSHIP_AUDIT_PREDICATE, "predicate": {"pad": "x" * 70_000}, "subjects": SUBJECTS})
    assert big.status_code == 413


def test_signer_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {**os.environ, "MODELCUSTODY_ENV": "test", "MODELCUSTODY_SIGNING_KEY_PATH": str(tmp_path / "k.pem")}
    env.pop("MODELCUSTODY_SIGNER_TOKEN", None)
    done = subprocess.run([sys.executable, "-c", "from services.signer.app import create_app; create_app()"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "MODELCUSTODY_SIGNER_TOKEN" in done.stderr
    assert not (tmp_path / "k.pem").exists()


def test_a_worker_refuses_to_start_in_prod_without_a_signer(tmp_path: Path) -> None:
    env = {**os.environ, "MODELCUSTODY_ENV": "prod", "MODELCUSTODY_ADMIN_TOKEN": secrets.token_urlsafe(24),
           "MODELCUSTODY_ANSWER_WATERMARK_SECRET": secrets.token_urlsafe(24),
           "MODELCUSTODY_DATA_DIR": str(tmp_path), "MODELCUSTODY_REDIS_URL": "redis://127.0.0.1:1/0"}
    env.pop("MODELCUSTODY_SIGNER_URL", None)
    done = subprocess.run([sys.executable, "-m", "services.cli", "serve", "worker"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "MODELCUSTODY_SIGNER_URL is not set" in done.stderr
    assert not (tmp_path / "keys").exists()
