"""The public half of the report-signing key: what anyone verifying a report needs.

Unauthenticated on purpose: verifiers (a court's expert, the suspect's owner) do not hold the admin token.
With a signer service (``MODELCUSTODY_SIGNER_URL``) the API asks it for the public key and never sees the
private one; without (dev, demo, tests) the key pair is created on first use beside the data directory.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response

from services.api.deps import SettingsDep
from services.api.schemas import PublicKey
from services.core.settings import Settings

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def public_key_bytes(settings: Settings) -> bytes:
    from services.core.signer_client import public_key_for

    return public_key_for(settings)


@router.get("/public", response_model=PublicKey,
            responses={200: {"content": {"application/x-pem-file": {"schema": {"type": "string"}}},
                             "description": "the key as JSON, or as PEM with format=pem"}})
def read_public_key(settings: SettingsDep, format: Literal["json", "pem"] = "json") -> PublicKey | Response:
    from audit.signing import key_id

    pem = public_key_bytes(settings)
    if format == "pem":
        return Response(pem, media_type="application/x-pem-file")
    return PublicKey(algorithm="ed25519", keyid=key_id(pem), public_key_pem=pem.decode("ascii"))
