"""The signer service: signs in-toto statements of our three predicate types, and nothing else.

Why a separate process: audit workers parse and run untrusted model files (ONNX, skops, pickle when allowed);
whatever they can read, a malicious model can read too. The signing key therefore lives only here, mounted
read-only into this container, and workers send the statement they want signed (docs/operations.md).

Why HTTP with a bearer token (and not a Unix socket or Redis request/response): the signer runs in its own
container, and a Unix socket would need a volume shared with every caller (a filesystem view again); Redis
is reachable by the gateway and the detector, which must not be able to sign. HTTP reuses the stack every
component already has (uvicorn, FastAPI, httpx), works the same on one host and across containers, and the
token is checked in constant time before the body is read. The port is published to no one outside the
compose network.

What the token buys a caller: a signature over a statement it wrote, of one of ``KNOWN_PREDICATES``. It
cannot read the key, sign arbitrary bytes, or make the key vouch for another kind of statement; each signing
is logged (predicate type, subject count, key id) for the audit trail.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from audit.signing import (
    KNOWN_PREDICATES,
    key_id,
    load_or_create_signing_key,
    load_signing_key,
    public_key_pem,
    sign_statement,
)
from services.core.settings import PLACEHOLDER_SECRETS, Settings, get_settings
from services.core.version import __version__

log = logging.getLogger(__name__)


def load_key(settings: Settings) -> Ed25519PrivateKey:
    """Prod: the key must exist (a read-only secret mount; the operator creates it). Elsewhere: created on first use."""
    if settings.env == "prod":
        return load_signing_key(settings.signing_key_file)
    return load_or_create_signing_key(settings.signing_key_file)


def _refuse(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(settings: Settings | None = None, key: Ed25519PrivateKey | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.signer_token in PLACEHOLDER_SECRETS:
        raise ValueError("the signer needs MODELCUSTODY_SIGNER_TOKEN (or _FILE) set to a real secret")
    key = key or load_key(settings)
    token = settings.signer_token.encode()
    pem = public_key_pem(key)
    kid = key_id(key)
    app = FastAPI(title="Model Custody signer", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    log.info("signer ready: key id %s, predicate types %s", kid, sorted(KNOWN_PREDICATES))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "keyid": kid}

    @app.get("/v1/public-key")
    def public_key() -> Response:
        return Response(pem, media_type="application/x-pem-file")  # public: no token

    @app.post("/v1/sign")
    async def sign(request: Request) -> Response:
        # The token before the body: an unauthenticated caller costs us one header comparison.
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            return _refuse(401, "missing or wrong bearer token")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > settings.signer_max_body_bytes):
            return _refuse(413, f"body over {settings.signer_max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.signer_max_body_bytes:
                return _refuse(413, f"body over {settings.signer_max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            body: Any = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            return _refuse(400, "body is not JSON")
        if not isinstance(body, dict) or set(body) != {"predicate_type", "predicate", "subjects"}:
            return _refuse(422, "body must be an object with exactly predicate_type, predicate and subjects")
        predicate_type, predicate, subjects = body["predicate_type"], body["predicate"], body["subjects"]
        if predicate_type not in KNOWN_PREDICATES:
            log.warning("refused to sign predicate type %r", str(predicate_type)[:200])
            return _refuse(422, f"unknown predicate type {str(predicate_type)[:200]!r}; this signer signs only "
                                f"{sorted(KNOWN_PREDICATES)}")
        if not isinstance(predicate, dict) or not isinstance(subjects, list) \
                or not all(isinstance(s, dict) for s in subjects):
            return _refuse(422, "predicate must be an object and subjects a list of objects")
        try:
            envelope = sign_statement(predicate, subjects, key, predicate_type=predicate_type)
        except (ValueError, TypeError, AttributeError) as exc:  # make_statement's checks, NaN in the predicate
            return _refuse(422, f"not a valid statement: {exc}")
        log.info("signed %s with %d subject(s), key id %s", predicate_type, len(subjects), kid)
        return Response(envelope, media_type="application/json")

    return app
