from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.signing import (
    IN_TOTO_PAYLOAD_TYPE,
    OWNERSHIP_AUDIT_PREDICATE,
    STATEMENT_TYPE,
    VerificationError,
    canonical_json,
    key_id,
    load_or_create_signing_key,
    pae,
    public_key_path,
    public_key_pem,
    sign_envelope,
    sign_statement,
    verify_envelope,
)

SUBJECTS = [{"name": "suspect:onnx", "digest": {"sha256": "ab" * 32}}]
PREDICATE = {"method": "ewe-watermark", "p_value": 1.5e-7, "decision": "claim", "note": "ünïcode ✓"}


@pytest.fixture()
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return load_or_create_signing_key(tmp_path / "keys" / "signing_ed25519.pem")


def test_pae_matches_the_dsse_spec_test_vector() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    # LEN counts bytes, not characters.
    assert pae("é", b"\x00") == b"DSSEv1 2 \xc3\xa9 1 \x00"


def test_key_created_on_first_use_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "keys" / "signing_ed25519.pem"
    first = load_or_create_signing_key(path)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    pub = public_key_path(path)
    assert pub.name == "signing_ed25519.pub.pem"
    assert pub.read_bytes() == public_key_pem(first)
    assert not list(path.parent.glob(".*tmp"))  # no temp files left behind

    second = load_or_create_signing_key(path)
    assert key_id(second) == key_id(first)
    assert len(key_id(first)) == 64
    assert key_id(public_key_pem(first)) == key_id(first)

    pub.unlink()  # a lost public key is rewritten from the private key
    load_or_create_signing_key(path)
    assert pub.read_bytes() == public_key_pem(first)


def test_round_trip(key: Ed25519PrivateKey) -> None:
    envelope = sign_statement(PREDICATE, SUBJECTS, key)
    statement = verify_envelope(envelope, public_key_pem(key), predicate_type=OWNERSHIP_AUDIT_PREDICATE)
    assert statement == {
        "_type": STATEMENT_TYPE,
        "subject": SUBJECTS,
        "predicateType": OWNERSHIP_AUDIT_PREDICATE,
        "predicate": PREDICATE,
    }
    parsed = json.loads(envelope)
    assert parsed["payloadType"] == IN_TOTO_PAYLOAD_TYPE
    assert parsed["signatures"][0]["keyid"] == key_id(key)
    # The payload is the canonical JSON of the statement: deterministic bytes.
    assert base64.b64decode(parsed["payload"]) == canonical_json(statement)
    assert sign_statement(dict(reversed(PREDICATE.items())), SUBJECTS, key) == envelope


def test_every_single_byte_change_fails_verification(key: Ed25519PrivateKey) -> None:
    envelope = sign_statement(PREDICATE, SUBJECTS, key)
    pem = public_key_pem(key)
    failures = 0
    for position in range(len(envelope)):
        for replacement in {envelope[position] ^ 0x01, envelope[position] ^ 0x20, ord("A"), ord(" ")}:
            if replacement == envelope[position]:
                continue
            tampered = envelope[:position] + bytes([replacement]) + envelope[position + 1 :]
            with pytest.raises(VerificationError):
                verify_envelope(tampered, pem)
            failures += 1
    assert failures > 3 * len(envelope)


def test_wrong_key_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    envelope = sign_statement(PREDICATE, SUBJECTS, key)
    other = load_or_create_signing_key(tmp_path / "other.pem")
    with pytest.raises(VerificationError, match="unknown keyid"):
        verify_envelope(envelope, public_key_pem(other))

    # Same signature relabelled with the other key's id: now the signature itself fails.
    parsed = json.loads(envelope)
    parsed["signatures"][0]["keyid"] = key_id(other)
    with pytest.raises(VerificationError, match="bad signature"):
        verify_envelope(json.dumps(parsed), public_key_pem(other))


def test_wrong_payload_type_and_malformed_input(key: Ed25519PrivateKey) -> None:
    pem = public_key_pem(key)
    signed_as_json = json.dumps(sign_envelope(canonical_json({"a": 1}), "application/json", key))
    with pytest.raises(VerificationError, match="wrong payloadType"):
        verify_envelope(signed_as_json, pem)
    for bad in (b"", b"not json", b"[]", b'{"payload": "", "payloadType": "x"}', b"\xff\xfe"):
        with pytest.raises(VerificationError, match="malformed"):
            verify_envelope(bad, pem)
    # A validly signed payload that is not an in-toto statement.
    not_a_statement = json.dumps(sign_envelope(b'{"hello": 1}', IN_TOTO_PAYLOAD_TYPE, key))
    with pytest.raises(VerificationError, match="malformed statement"):
        verify_envelope(not_a_statement, pem)
    with pytest.raises(VerificationError, match="predicateType"):
        verify_envelope(sign_statement(PREDICATE, SUBJECTS, key), pem, predicate_type="https://other/v1")
    with pytest.raises(VerificationError, match="not a PEM public key"):
        verify_envelope(sign_statement(PREDICATE, SUBJECTS, key), b"garbage")


def test_url_safe_unpadded_base64_is_accepted(key: Ed25519PrivateKey) -> None:
    parsed = json.loads(sign_statement(PREDICATE, SUBJECTS, key))

    def urlsafe(s: str) -> str:
        return base64.urlsafe_b64encode(base64.b64decode(s)).decode().rstrip("=")

    parsed["payload"] = urlsafe(parsed["payload"])
    parsed["signatures"][0]["sig"] = urlsafe(parsed["signatures"][0]["sig"])
    assert verify_envelope(json.dumps(parsed), public_key_pem(key))["predicate"] == PREDICATE


def test_statement_requires_subject_digests(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError):
        sign_statement(PREDICATE, [], key)
    with pytest.raises(ValueError):
        sign_statement(PREDICATE, [{"name": "x", "digest": {}}], key)
    with pytest.raises(ValueError):
        sign_statement(PREDICATE, [{"name": "x", "digest": {"sha256": "not-hex"}}], key)
    with pytest.raises(ValueError):
        canonical_json({"p": float("nan")})


def test_multi_signature_envelope_verifies_with_each_key(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    other = load_or_create_signing_key(tmp_path / "other.pem")
    parsed = json.loads(sign_statement(PREDICATE, SUBJECTS, key))
    second = json.loads(sign_statement(PREDICATE, SUBJECTS, other))
    parsed["signatures"] = second["signatures"] + parsed["signatures"]
    envelope = json.dumps(parsed)
    for k in (key, other):
        assert verify_envelope(envelope, public_key_pem(k))["predicate"] == PREDICATE
    third = load_or_create_signing_key(tmp_path / "third.pem")
    with pytest.raises(VerificationError, match="unknown keyid"):
        verify_envelope(envelope, public_key_pem(third))
