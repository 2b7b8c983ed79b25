"""Audits: submit (a model file upload or an endpoint), list, status with progress.

``POST /v1/audits`` takes either ``multipart/form-data`` (``file`` plus the fields ``method``,
``protected_model``, ``format``, optional ``params``/``config`` JSON and ``architecture``) or JSON naming an
endpoint (``{"method", "protected_model", "params", "suspect": {"url", "protocol", "model", ...}}``).
A new audit answers 202; the same suspect + method + parameters + protected model again answers 200 with
the existing audit (unless that one failed or was cancelled), and a 202 carries ``Location`` (the audit's URL,
to poll). ``dataset_inference_mingd`` (white-box) takes only a safetensors
file: any other format or an endpoint answers 422 before anything is stored.

``POST /v1/audits/{id}/cancel`` (auditor or operator): a queued audit ends cancelled at once and its task is
revoked; a running one is asked to stop and ends cancelled at its next progress update (``workers.tasks``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from services.api.deps import AuditorDep, CeleryDep, ReaderDep, RedisDep, SettingsDep
from services.api.problems import Problem, errors, found
from services.api.schemas import Audit
from services.api.uploads import (
    StoredFile,
    discard_refused,
    form_file,
    form_json,
    form_text,
    read_body,
    read_form,
    store_upload,
    validate_suspect_file,
)
from services.core.audits import FINISHED, AuditRecord, AuditStore
from services.core.protected import ProtectedIndex
from services.core.storage import uploads_dir
from services.core.tasks import RUN_AUDIT_TASK

router = APIRouter(prefix="/v1/audits", tags=["audits"])

MAX_JSON_BYTES = 64 * 1024  # an endpoint audit request is a few hundred bytes of JSON


class EndpointSuspect(BaseModel):
    url: str = Field(max_length=2000)
    protocol: Literal["oip-v2", "kserve-v1", "generic"] = "oip-v2"
    model: str = Field(default="", max_length=200)
    token: str | None = Field(default=None, max_length=4000)
    batch_size: int | None = Field(default=None, ge=1, le=100_000)
    input_name: str | None = None
    output_name: str | None = None
    input_path: str | None = None
    output_path: str | None = None
    output: Literal["auto", "probabilities", "labels"] | None = None


class EndpointAudit(BaseModel):
    method: str
    protected_model: str
    params: dict[str, Any] = Field(default_factory=dict)
    suspect: EndpointSuspect


def _normalise(method: str | None, params: Any) -> dict[str, Any]:
    from audit.methods import normalise_params

    if not method:
        raise HTTPException(
            422, "missing 'method' (watermark, dataset_inference, dataset_inference_mingd or api_watermark)"
        )
    if params is not None and not isinstance(params, dict):
        raise HTTPException(422, "'params' must be a JSON object")
    try:
        return normalise_params(method, params)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _check_protected(r: Any, protected_id: str | None, method: str) -> None:
    if not protected_id:
        raise HTTPException(422, "missing 'protected_model' (the id of a registered protected model)")
    record = found(ProtectedIndex(r).get(protected_id), "protected model", protected_id)
    if record.status != "ready":
        raise Problem(409, "protected-model-not-ready",
                      f"protected model '{protected_id}' is {record.status}, not ready")
    from audit.methods import REGISTRATION_FREE_METHODS

    if method not in record.methods and method not in REGISTRATION_FREE_METHODS:
        raise Problem(409, "method-not-supported",
                      f"protected model '{protected_id}' supports {record.methods}, not {method}")


def _check_white_box(method: str, declared_format: str | None) -> None:
    """422 when the method needs the suspect's gradients and the suspect cannot give them (None: an endpoint)."""
    from audit.methods import white_box_refusal
    from audit.suspects.loader import normalise_format

    fmt = declared_format
    if declared_format is not None:
        with contextlib.suppress(ValueError):  # an unknown format is refused, with its reason, by the file check
            fmt = normalise_format(declared_format)
    refusal = white_box_refusal(method, fmt)
    if refusal:
        raise HTTPException(422, refusal)


async def _file_submission(request: Request, settings: Any, r: Any) -> tuple[str, str, dict[str, Any],
                                                                            dict[str, Any], dict[str, Any]]:
    form = await read_form(request, settings.audit_max_upload_bytes, max_files=1)
    method = form_text(form, "method")
    protected_id = form_text(form, "protected_model")
    params = _normalise(method, form_json(form, "params"))
    _check_protected(r, protected_id, str(method))
    upload = form_file(form, "file")
    if upload is None:
        raise HTTPException(422, "missing the model 'file'")
    declared = form_text(form, "format")
    if not declared:
        raise HTTPException(422, "missing 'format' (onnx, safetensors, skops, ...)")
    _check_white_box(str(method), declared)
    architecture = form_text(form, "architecture")
    config = form_json(form, "config")
    if config is not None and not isinstance(config, dict):
        raise HTTPException(422, "'config' must be a JSON object")
    stored: StoredFile = await run_in_threadpool(store_upload, upload, uploads_dir(settings))
    from audit.suspects.base import SuspectError

    try:
        fmt = await run_in_threadpool(validate_suspect_file, stored, declared, architecture, config, settings)
    except SuspectError as exc:
        await run_in_threadpool(discard_refused, stored, r)  # unless an audit or registration still needs it
        raise Problem(422, "suspect-refused", f"model file refused: {exc}") from None
    identity = {"kind": "file", "sha256": stored.sha256, "format": fmt, "architecture": architecture,
                "config": config}
    suspect = {"path": str(stored.path), "size": stored.size}
    return str(method), str(protected_id), params, suspect, identity


async def _endpoint_submission(request: Request, r: Any) -> tuple[str, str, dict[str, Any],
                                                                 dict[str, Any], dict[str, Any]]:
    try:
        body = EndpointAudit.model_validate_json(await read_body(request, MAX_JSON_BYTES))
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from None
    params = _normalise(body.method, body.params)
    _check_protected(r, body.protected_model, body.method)
    _check_white_box(body.method, None)
    spec = body.suspect.model_dump(exclude_none=True)
    from services.core.model_client import HttpSuspect

    try:
        suspect = HttpSuspect(**spec)  # validates url, protocol and options; no request is sent
        with suspect:
            await run_in_threadpool(suspect.check_destination)  # egress policy (resolves: off the event loop)
    except ValueError as exc:
        raise Problem(422, "suspect-refused", f"endpoint refused: {exc}") from None
    token = spec.pop("token", None)
    identity = {"kind": "endpoint", **spec}
    return body.method, body.protected_model, params, ({"token": token} if token else {}), identity


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its local ``$ref``s replaced by their definitions (valid anywhere in a document)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_ENDPOINT_SCHEMA = EndpointAudit.model_json_schema()
# The request body is read by hand (multipart or JSON), so the OpenAPI description states both shapes here.
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline(_ENDPOINT_SCHEMA, _ENDPOINT_SCHEMA.get("$defs", {}))},
            "multipart/form-data": {"schema": {
                "type": "object",
                "required": ["file", "method", "protected_model", "format"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "method": {"type": "string"},
                    "protected_model": {"type": "string"},
                    "format": {"type": "string", "description": "onnx, safetensors, skops, ..."},
                    "params": {"type": "string", "description": "JSON object"},
                    "config": {"type": "string", "description": "JSON object"},
                    "architecture": {"type": "string"},
                },
            }},
        },
    }
}


@router.post("", status_code=202, response_model=Audit, openapi_extra=_SUBMIT_BODY,
             responses={200: {"model": Audit, "description": "the existing audit of the same request"},
                        **errors(404, 409, 413, 415, 422, 503)})
async def submit_audit(
    request: Request, response: Response, r: RedisDep, settings: SettingsDep, celery: CeleryDep, _: AuditorDep
) -> dict[str, Any]:
    """Queue an audit (202), or return the existing one for the same request (200)."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        method, protected_id, params, suspect, identity = await _file_submission(request, settings, r)
    elif ctype.startswith("application/json"):
        method, protected_id, params, suspect, identity = await _endpoint_submission(request, r)
    else:
        raise HTTPException(415, "send multipart/form-data with a model file, or JSON naming an endpoint")
    store = AuditStore(r)
    record, created = store.create_or_get(
        method=method, protected_model=protected_id, suspect=suspect, identity=identity, params=params
    )
    if not created:
        response.status_code = 200
        return record.public()
    try:
        result = await run_in_threadpool(celery.send_task, RUN_AUDIT_TASK, args=[record.id])
    except Exception as exc:  # noqa: BLE001 - the broker is down: fail the record so a retry creates a new one
        store.update(record.id, status="failed", error=f"could not queue: {exc}", message="could not queue")
        raise Problem(503, "broker-unavailable", "the task broker is unavailable; try again") from None
    record = store.update(record.id, task_id=result.id)
    response.headers["Location"] = f"/v1/audits/{record.id}"
    return record.public()


@router.get("", response_model=list[Audit], responses=errors())
def list_audits(
    r: RedisDep,
    _: ReaderDep,
    status: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Audits, newest first (the newest ``limit``, then filtered by ``status``)."""
    return [a.public() for a in AuditStore(r).list(limit) if status is None or a.status == status]


def get_record(r: Any, audit_id: str) -> AuditRecord:
    return found(AuditStore(r).get(audit_id), "audit", audit_id)


@router.get("/{audit_id}", response_model=Audit, responses=errors(404))
def read_audit(audit_id: str, r: RedisDep, _: ReaderDep) -> dict[str, Any]:
    """Status (queued, running, done, failed, cancelled), progress in [0, 1], attempts, decision when done."""
    return get_record(r, audit_id).public()


@router.post("/{audit_id}/cancel", response_model=Audit, responses=errors(404, 409))
async def cancel_audit(audit_id: str, r: RedisDep, celery: CeleryDep, who: AuditorDep) -> dict[str, Any]:
    """Cancel a queued audit now, or ask a running one to stop at its next progress update."""
    record = get_record(r, audit_id)
    store = AuditStore(r)
    if record.status in FINISHED:
        raise Problem(409, "audit-finished", f"audit '{audit_id}' is {record.status}; nothing to cancel")
    if record.status == "queued":
        record = store.update(audit_id, status="cancelled", cancel_requested_by=who.name,
                              message=f"cancelled by {who.name}", finished_at=time.time())
        if record.task_id:
            with contextlib.suppress(Exception):  # best effort: the worker also skips a cancelled record
                await run_in_threadpool(celery.control.revoke, record.task_id)
    else:
        record = store.update(audit_id, cancel_requested_by=who.name, message=f"cancel requested by {who.name}")
    return record.public()
