"""Signed audit reports: an in-toto Statement v1 in a DSSE envelope, signed with Ed25519.

Specs implemented:

- DSSE protocol v1.0.0 and its JSON envelope (secure-systems-lab/dsse ``protocol.md``, ``envelope.md``):
  the signature covers ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` where
  LEN is the ASCII decimal byte length with no leading zeros, so the payload type is authenticated too.
  Verifiers must accept standard and URL-safe base64; both are accepted here.
- in-toto Attestation Statement v1 (in-toto/attestation ``spec/v1/statement.md``): ``_type``,
  ``subject`` (each with a ``digest``), ``predicateType``, ``predicate``; the DSSE payload type for
  statements is ``application/vnd.in-toto+json``.
- Ed25519 (RFC 8032) through ``cryptography``; key files are PEM (PKCS#8 private, SubjectPublicKeyInfo
  public). The key id is the SHA-256 of the 32 raw public-key bytes, in hex.

Where we are stricter than DSSE: the spec makes ``keyid`` an unauthenticated hint. We never *trust* it,
but we do *reject* an envelope whose signatures all name another key id, and we reject unknown fields,
duplicate JSON keys and non-canonical base64. That way changing any single byte of an envelope we wrote
makes verification fail instead of silently meaning the same thing, which is what an auditor checking a
report's integrity expects. The payload is canonical JSON (sorted keys, compact separators, UTF-8), so
the same report always signs to the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
OWNERSHIP_AUDIT_PREDICATE = "https://modelcustody.dev/ownership-audit/v1"
COMPLIANCE_PREDICATE = "https://modelcustody.dev/compliance-report/v1"
REGISTRATION_PREDICATE = "https://modelcustody.dev/protected-model-registration/v1"
# What our key signs, and all it signs: the signer service refuses any other predicate type, so a caller
# holding the signer's token still cannot make the key vouch for a statement of another kind.
KNOWN_PREDICATES = frozenset({OWNERSHIP_AUDIT_PREDICATE, COMPLIANCE_PREDICATE, REGISTRATION_PREDICATE})

_ENVELOPE_FIELDS = {"payload", "payloadType", "signatures"}
_SIGNATURE_FIELDS = {"keyid", "sig"}
_ED25519_SIGNATURE_BYTES = 64


class VerificationError(ValueError):
    """A signed report failed verification; the message says which check failed."""


class TooManySignatures(VerificationError):
    """More signatures than the verifier accepts: refused before any is checked (each costs a pass over the
    whole payload, so an unbounded list is a way to make a verifier work for minutes)."""


# --- keys ------------------------------------------------------------------------------------------


def public_key_path(private_key_path: str | Path) -> Path:
    """Where the public key lives beside a private key file: ``signing_ed25519.pem`` → ``signing_ed25519.pub.pem``."""
    path = Path(private_key_path)
    return path.with_name(path.stem + ".pub" + (path.suffix or ".pem"))


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key at ``path`` without creating or writing anything (a read-only mount)."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Warn rather than refuse: secret mounts (Kubernetes, Docker) often come group-readable.
        log.warning("signing key %s is accessible by group/others (mode %o); chmod 600 it", path, mode)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key at ``path``, creating the key pair on first use.

    The private key is written as unencrypted PKCS#8 PEM with mode 0600 (the file's mode is the
    protection, as with SSH host keys); the public key is written beside it (``public_key_path``).
    Creation is atomic: two workers starting at once end up with the same key, never a half-written file.
    """
    path = Path(path)
    if not path.exists():
        _create_key_file(path)
    key = load_signing_key(path)
    pub_path = public_key_path(path)
    pem = public_key_pem(key)
    if not pub_path.exists() or pub_path.read_bytes() != pem:
        # The private key is the source of truth; a missing or stale public file is rewritten.
        if pub_path.exists():
            log.warning("public key %s did not match the private key; rewriting it", pub_path)
        _write_atomic(pub_path, pem, 0o644)
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL + mode 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case a umask or ACL widened it
        try:
            os.link(tmp, path)  # fails if another process created the key first: keep theirs
            log.info("created Ed25519 signing key %s (key id %s)", path, key_id(key))
        except FileExistsError:
            pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the (public half of the) key: what verifiers are given."""
    return _public(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise VerificationError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerificationError(f"public key is a {type(key).__name__}, not Ed25519")
    return key


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey | bytes | str) -> str:
    """SHA-256 (hex) of the raw 32-byte public key. Accepts a key object or a public key PEM."""
    if isinstance(key, bytes | str):
        key = load_public_key(key)
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# --- DSSE ------------------------------------------------------------------------------------------


def pae(payload_type: str | bytes, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of (payload type, body)."""
    type_bytes = payload_type.encode("utf-8") if isinstance(payload_type, str) else payload_type
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(body), body)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity (not JSON): the bytes a report signs to."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sign_envelope(payload: bytes, payload_type: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE JSON envelope (as a dict) with one Ed25519 signature over PAE(payload_type, payload)."""
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": payload_type,
        "signatures": [{"keyid": key_id(private_key), "sig": base64.b64encode(signature).decode("ascii")}],
    }


def make_statement(
    subjects: Sequence[Mapping[str, Any]], predicate: Mapping[str, Any], predicate_type: str = OWNERSHIP_AUDIT_PREDICATE
) -> dict[str, Any]:
    """An in-toto Statement v1; every subject must carry a name and a sha256 digest (64 hex chars)."""
    if not subjects:
        raise ValueError("an in-toto statement needs at least one subject")
    out = []
    for subject in subjects:
        name = subject.get("name")
        digest = subject.get("digest")
        if not isinstance(name, str) or not name:
            raise ValueError(f"subject needs a non-empty name: {subject!r}")
        if not isinstance(digest, Mapping) or not digest:
            raise ValueError(f"subject {name!r} needs a digest")
        sha = digest.get("sha256")
        if sha is not None and not _is_hex_digest(sha):
            raise ValueError(f"subject {name!r} has a malformed sha256 digest")
        out.append({"name": name, "digest": {str(k): str(v) for k, v in digest.items()}})
    return {"_type": STATEMENT_TYPE, "subject": out, "predicateType": predicate_type, "predicate": dict(predicate)}


def sign_statement(
    predicate: Mapping[str, Any],
    subjects: Sequence[Mapping[str, Any]],
    private_key: Ed25519PrivateKey,
    predicate_type: str = OWNERSHIP_AUDIT_PREDICATE,
) -> bytes:
    """Wrap ``predicate`` (the report) in a Statement, sign it, and return the envelope's JSON bytes."""
    statement = make_statement(subjects, predicate, predicate_type)
    envelope = sign_envelope(canonical_json(statement), IN_TOTO_PAYLOAD_TYPE, private_key)
    # Compact: no insignificant whitespace in which a changed byte could go unnoticed.
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


class Signer(Protocol):
    """Whatever signs our statements: the key in this process (``LocalSigner``, dev/demo/test) or the signer
    service (``services.core.signer_client.RemoteSigner``, production). Algorithms take a ``Signer``, never a
    key, so code that parses untrusted models need not hold the key."""

    def sign(
        self, predicate: Mapping[str, Any], subjects: Sequence[Mapping[str, Any]], predicate_type: str
    ) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


class LocalSigner:
    """Signs with a key held in this process."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    def sign(self, predicate: Mapping[str, Any], subjects: Sequence[Mapping[str, Any]], predicate_type: str) -> bytes:
        if predicate_type not in KNOWN_PREDICATES:
            raise ValueError(f"refusing to sign predicate type {predicate_type!r}: not one of ours")
        return sign_statement(predicate, subjects, self._key, predicate_type=predicate_type)

    def public_key_pem(self) -> bytes:
        return public_key_pem(self._key)


def as_signer(signer: Signer | Ed25519PrivateKey) -> Signer:
    """A key object is wrapped in a ``LocalSigner`` (tests and notebooks pass keys); a signer passes through."""
    return LocalSigner(signer) if isinstance(signer, Ed25519PrivateKey) else signer


def verify_envelope(
    envelope_bytes: bytes | str,
    public_key_pem: bytes | str,
    *,
    predicate_type: str | None = None,
    max_signatures: int | None = None,
) -> dict[str, Any]:
    """Verify a DSSE envelope holding an in-toto Statement and return the statement.

    Raises ``VerificationError`` naming the failed check: malformed envelope, unexpected payload type,
    no signature by this key, bad signature, malformed statement, or (when ``predicate_type`` is given)
    another predicate type. ``TooManySignatures`` (a ``VerificationError``) when ``max_signatures`` is given
    and the envelope carries more.
    """
    public_key = load_public_key(public_key_pem)
    expected_keyid = key_id(public_key)
    envelope = _parse_json(envelope_bytes, "envelope")
    if not isinstance(envelope, dict):
        raise VerificationError("malformed envelope: not a JSON object")
    _check_fields(envelope, _ENVELOPE_FIELDS, _ENVELOPE_FIELDS, "envelope")
    payload_type = envelope["payloadType"]
    if not isinstance(payload_type, str):
        raise VerificationError("malformed envelope: payloadType is not a string")
    payload = _b64decode(envelope["payload"], "payload")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise VerificationError("malformed envelope: no signatures")
    if max_signatures is not None and len(signatures) > max_signatures:
        raise TooManySignatures(f"envelope carries {len(signatures)} signatures; at most {max_signatures} are checked")

    message = pae(payload_type, payload)
    candidates = 0
    for entry in signatures:
        if not isinstance(entry, dict):
            raise VerificationError("malformed envelope: a signature is not an object")
        _check_fields(entry, {"sig"}, _SIGNATURE_FIELDS, "signature")
        keyid = entry.get("keyid")
        if keyid is not None and not isinstance(keyid, str):
            raise VerificationError("malformed envelope: keyid is not a string")
        sig = _b64decode(entry["sig"], "signature")
        if keyid not in (None, "", expected_keyid):
            continue  # another signer's signature: the hint only narrows which key to try
        candidates += 1
        if len(sig) != _ED25519_SIGNATURE_BYTES:
            continue
        try:
            public_key.verify(sig, message)
        except InvalidSignature:
            continue
        break
    else:
        if candidates == 0:
            raise VerificationError(f"no signature by key id {expected_keyid} (unknown keyid)")
        raise VerificationError("bad signature: the envelope was not signed by this key or was altered")

    # DSSE order: signature first, then the type, then parsing the body.
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationError(f"wrong payloadType {payload_type!r}, expected {IN_TOTO_PAYLOAD_TYPE!r}")
    statement = _parse_json(payload, "statement")
    _check_statement(statement)
    if predicate_type is not None and statement["predicateType"] != predicate_type:
        raise VerificationError(f"predicateType {statement['predicateType']!r}, expected {predicate_type!r}")
    return statement


def _check_statement(statement: Any) -> None:
    if not isinstance(statement, dict):
        raise VerificationError("malformed statement: not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise VerificationError(f"malformed statement: _type is {statement.get('_type')!r}, not {STATEMENT_TYPE}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise VerificationError("malformed statement: no subject")
    for subject in subjects:
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), dict) or not subject["digest"]:
            raise VerificationError("malformed statement: every subject needs a digest")
    if not isinstance(statement.get("predicateType"), str):
        raise VerificationError("malformed statement: predicateType is not a string")
    if not isinstance(statement.get("predicate", {}), dict):
        raise VerificationError("malformed statement: predicate is not an object")


def _parse_json(data: bytes | str, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise VerificationError(f"malformed {what}: duplicate key {key!r}")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise VerificationError(f"malformed {what}: {name} is not JSON")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise VerificationError(f"malformed {what}: {exc}") from None


def _check_fields(obj: dict[str, Any], required: set[str], allowed: set[str], what: str) -> None:
    missing = required - obj.keys()
    if missing:
        raise VerificationError(f"malformed {what}: missing {sorted(missing)}")
    unknown = obj.keys() - allowed
    if unknown:
        raise VerificationError(f"malformed {what}: unknown fields {sorted(unknown)}")


def _b64decode(value: Any, what: str) -> bytes:
    """Standard or URL-safe base64 (padded or not), refusing non-canonical encodings.

    Canonical means re-encoding gives the same text; otherwise the unused low bits of the last
    character could be changed without changing the decoded bytes.
    """
    if not isinstance(value, str) or not value.isascii():
        raise VerificationError(f"malformed {what}: not a base64 string")
    urlsafe = "-" in value or "_" in value
    if urlsafe and ("+" in value or "/" in value):
        raise VerificationError(f"malformed {what}: mixes standard and URL-safe base64")
    text = value.replace("-", "+").replace("_", "/") if urlsafe else value
    stripped = text.rstrip("=")
    try:
        data = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"malformed {what}: {exc}") from None
    canonical = base64.b64encode(data).decode("ascii")
    if text not in (canonical, canonical.rstrip("=")):
        raise VerificationError(f"malformed {what}: non-canonical base64")
    return data


def _is_hex_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
