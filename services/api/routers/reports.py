"""Signed audit reports: the DSSE envelope (exact bytes, so a downloaded copy verifies), its HTML page, and
verification of an envelope against this service's key."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from services.api.deps import AdminDep, RedisDep, SettingsDep
from services.api.ratelimit import TokenBucket
from services.api.routers.audits import get_record
from services.api.routers.keys import public_key_bytes
from services.api.schemas import Verification
from services.api.uploads import read_body
from services.core.settings import Settings
from services.core.storage import reports_dir

router = APIRouter(tags=["reports"])



def _predicate_type(kind: str) -> str:
    """The one predicate type ``kind`` verifies as: a signed registration or compliance record is never
    taken for an ownership audit's report (the CLI pins the type too)."""
    from audit.protected import REGISTRATION_PREDICATE
    from audit.signing import COMPLIANCE_PREDICATE, OWNERSHIP_AUDIT_PREDICATE

    return {"audit": OWNERSHIP_AUDIT_PREDICATE, "compliance": COMPLIANCE_PREDICATE,
            "registration": REGISTRATION_PREDICATE}[kind]


@router.get("/v1/audits/{audit_id}/report")
def read_report(
    audit_id: str, r: RedisDep, settings: SettingsDep, _: AdminDep, format: Literal["json", "html"] = "json"
) -> Response:
    """The signed report: the DSSE envelope as stored (``format=json``) or the HTML page (``format=html``)."""
    record = get_record(r, audit_id)
    if record.status != "done" or not record.report_path:
        raise HTTPException(409, f"audit '{audit_id}' is {record.status}; the report exists once it is done")
    # Named by the record's id under this API's reports directory (the worker may mount data_dir elsewhere).
    path = reports_dir(settings) / (f"{record.id}.dsse.json" if format == "json" else f"{record.id}.html")
    if not path.is_file():
        raise HTTPException(404, f"report file of audit '{audit_id}' is missing")
    media = "application/json" if format == "json" else "text/html; charset=utf-8"
    if format == "json":
        headers = {"Content-Disposition": f'attachment; filename="{path.name}"'}
    else:  # the page is self-contained: nothing may be fetched or run, whatever a report string holds
        headers = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
    return Response(path.read_bytes(), media_type=media, headers=headers)


def _verify_limiter(request: Request, settings: Settings) -> TokenBucket:
    limiter: TokenBucket | None = getattr(request.app.state, "verify_limiter", None)
    if limiter is None:  # built on first use from this app's settings (no state at import: docs/design.md, habit 6)
        limiter = TokenBucket(settings.api_verify_rate_per_s, settings.api_verify_burst)
        request.app.state.verify_limiter = limiter
    return limiter


@router.post("/v1/reports/verify", response_model=Verification, response_model_exclude_none=True)
async def verify_report(
    request: Request, settings: SettingsDep, kind: Literal["audit", "compliance", "registration"] = "audit"
) -> dict[str, Any]:
    """Verify a signed statement (the request body, a DSSE envelope) against this service's public key.

    ``kind`` pins the predicate type: ``audit`` (default) answers valid only for an ownership audit's report,
    ``compliance`` for a compliance report, ``registration`` for a protected-model registration record.
    Unauthenticated like ``/v1/keys/public``: it reveals nothing a holder of the public key could not
    compute. So it is bounded: rate-limited per source address (429), body ≤
    ``api_verify_max_body_bytes`` (413), at most ``api_verify_max_signatures`` signatures (422), and the
    verification runs in the threadpool, never on the event loop.
    """
    from audit.signing import TooManySignatures, VerificationError, key_id, verify_envelope

    source = request.client.host if request.client else "unknown"
    wait = _verify_limiter(request, settings).take(source)
    if wait > 0:
        raise HTTPException(429, "too many verification requests from this address; retry later",
                            headers={"Retry-After": TokenBucket.retry_after(wait)})
    body = await read_body(request, settings.api_verify_max_body_bytes)
    pem = await run_in_threadpool(public_key_bytes, settings)
    try:
        statement = await run_in_threadpool(
            verify_envelope, body, pem, predicate_type=_predicate_type(kind),
            max_signatures=settings.api_verify_max_signatures,
        )
    except TooManySignatures as exc:
        raise HTTPException(422, str(exc)) from None
    except VerificationError as exc:
        return {"valid": False, "error": str(exc), "keyid": key_id(pem), "kind": kind}
    predicate = statement.get("predicate") or {}
    return {
        "valid": True,
        "kind": kind,
        "keyid": key_id(pem),
        "predicate_type": statement["predicateType"],
        "subject": statement["subject"],
        "decision": predicate.get("decision"),
        "method": predicate.get("method"),
    }


COMPLIANCE_NAME = re.compile(r"^compliance-\d{8}T\d{6}Z\.dsse\.json$")


@router.get("/v1/reports/compliance")
def list_compliance_reports(settings: SettingsDep, _: AdminDep, limit: int = Query(30, ge=1, le=1000)) -> list[str]:
    """The signed compliance reports (``workers.compliance_report``), newest first, by file name."""
    directory = reports_dir(settings)
    names = (
        sorted((p.name for p in directory.glob("compliance-*.dsse.json")), reverse=True) if directory.is_dir() else []
    )
    return [n for n in names if COMPLIANCE_NAME.match(n)][:limit]


@router.get("/v1/reports/compliance/{name}")
def read_compliance_report(name: str, settings: SettingsDep, _: AdminDep) -> Response:
    """One compliance report's DSSE envelope, exact bytes (verify it with ``modelcustody report verify``)."""
    if not COMPLIANCE_NAME.match(name):  # a file name, never a path: nothing outside the reports directory
        raise HTTPException(422, "not a compliance report name (compliance-YYYYmmddTHHMMSSZ.dsse.json)")
    path = reports_dir(settings) / name
    if not path.is_file():
        raise HTTPException(404, f"no compliance report '{name}'")
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(path.read_bytes(), media_type="application/json", headers=headers)
