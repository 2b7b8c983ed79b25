"""Signed audit reports: the DSSE envelope (exact bytes, so a downloaded copy verifies), its HTML page, and
verification of an envelope against this service's key."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from services.api.deps import AdminDep, RedisDep, SettingsDep
from services.api.routers.audits import get_record
from services.api.routers.keys import public_key_bytes
from services.api.uploads import read_body
from services.core.storage import reports_dir

router = APIRouter(tags=["reports"])

MAX_ENVELOPE_BYTES = 16 * 1024 * 1024  # reports are kilobytes; trajectories of long audits stay far below


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


@router.post("/v1/reports/verify")
async def verify_report(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Verify a report envelope (the request body) against this service's public key.

    Unauthenticated like ``/v1/keys/public``: it reveals nothing a holder of the public key could not compute.
    """
    from audit.signing import VerificationError, key_id, verify_envelope

    body = await read_body(request, MAX_ENVELOPE_BYTES)
    pem = await run_in_threadpool(public_key_bytes, settings)
    try:
        statement = verify_envelope(body, pem)
    except VerificationError as exc:
        return {"valid": False, "error": str(exc), "keyid": key_id(pem)}
    predicate = statement.get("predicate") or {}
    return {
        "valid": True,
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
