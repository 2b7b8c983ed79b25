"""Who signs: the signer service over HTTP (production) or the key in this process (dev, demo, tests).

Workers parse and run untrusted models; the signing key must not be readable there (docs/operations.md,
"Who holds the signing key"). With ``MODELCUSTODY_SIGNER_URL`` set, every signature is asked of the signer
service (``services.signer``), which alone mounts the key; the caller holds only a bearer token that lets it
sign our three predicate types, never read the key. Without it, ``env=prod`` refuses (``signer_for``) and the
other environments sign in process, so the demo and the tests need no extra server.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from audit.signing import LocalSigner, Signer, load_or_create_signing_key
from services.core.settings import PLACEHOLDER_SECRETS, Settings

SIGN_PATH = "/v1/sign"
PUBLIC_KEY_PATH = "/v1/public-key"
# The API serves the public key on every verify: one fetch a minute bounds both the load on the signer and
# how long a rotated key takes to show (a restart of the API shows it at once).
PUBLIC_KEY_CACHE_S = 60.0


class SignerUnavailable(RuntimeError):
    """The signer refused or could not be reached; the message says which (never the token)."""


class SignerNotConfigured(RuntimeError):
    """env=prod without MODELCUSTODY_SIGNER_URL: signing in process would put the key beside untrusted models."""


class RemoteSigner:
    """``audit.signing.Signer`` backed by the signer service."""

    def __init__(self, url: str, token: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"}
        self._timeout = timeout_s

    def sign(self, predicate: Mapping[str, Any], subjects: Sequence[Mapping[str, Any]], predicate_type: str) -> bytes:
        body = {"predicate_type": predicate_type, "predicate": dict(predicate), "subjects": [dict(s) for s in subjects]}
        try:
            response = httpx.post(self.url + SIGN_PATH, json=body, headers=self._headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise SignerUnavailable(f"signer at {self.url} unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SignerUnavailable(f"signer at {self.url} refused ({response.status_code}): {_detail(response)}")
        return response.content

    def public_key_pem(self) -> bytes:
        return fetch_public_key(self.url, self._timeout)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))[:300]
    except ValueError:
        return response.text[:300]


def fetch_public_key(url: str, timeout_s: float = 10.0) -> bytes:
    try:
        response = httpx.get(url.rstrip("/") + PUBLIC_KEY_PATH, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise SignerUnavailable(f"signer at {url} unreachable: {type(exc).__name__}") from None
    if response.status_code != 200 or not response.content.startswith(b"-----BEGIN PUBLIC KEY-----"):
        raise SignerUnavailable(f"signer at {url} gave no public key ({response.status_code})")
    return response.content


_public_cache: dict[str, tuple[float, bytes]] = {}


def cached_public_key(url: str, timeout_s: float = 10.0) -> bytes:
    now = time.monotonic()
    hit = _public_cache.get(url)
    if hit is not None and now - hit[0] < PUBLIC_KEY_CACHE_S:
        return hit[1]
    pem = fetch_public_key(url, timeout_s)
    _public_cache[url] = (now, pem)
    return pem


def require_signer(settings: Settings) -> None:
    """Raise ``SignerNotConfigured`` in prod without a signer, or with a signer but no token: what workers
    check before taking any task."""
    if settings.signer_url and settings.signer_token in PLACEHOLDER_SECRETS:
        raise SignerNotConfigured("MODELCUSTODY_SIGNER_TOKEN (or _FILE) must be set to the signer's token")
    if settings.env == "prod" and not settings.signer_url:
        raise SignerNotConfigured(
            "MODELCUSTODY_SIGNER_URL is not set: in env=prod signatures come from the signer service "
            "(`modelcustody serve signer`), never from a key in the process that parses untrusted models"
        )


def signer_for(settings: Settings) -> Signer:
    """The remote signer when configured; else, outside prod, the key at ``signing_key_file`` (created on first use)."""
    require_signer(settings)
    if settings.signer_url:
        if settings.signer_token in PLACEHOLDER_SECRETS:
            raise SignerNotConfigured("MODELCUSTODY_SIGNER_TOKEN (or _FILE) must be set to the signer's token")
        return RemoteSigner(settings.signer_url, settings.signer_token, settings.signer_timeout_s)
    return LocalSigner(load_or_create_signing_key(settings.signing_key_file))


def public_key_for(settings: Settings) -> bytes:
    """The public key reports verify against: asked of the signer when there is one, else read beside the key."""
    if settings.signer_url:
        return cached_public_key(settings.signer_url, settings.signer_timeout_s)
    from audit.signing import public_key_path

    path = public_key_path(settings.signing_key_file)
    if not path.exists():
        load_or_create_signing_key(settings.signing_key_file)  # writes the public key beside the private one
    return path.read_bytes()
