"""Protected models: register (multipart upload, registered by a worker), list, status, signed record.

``POST /v1/protected-models`` (``multipart/form-data``): ``name``; the model as a ``model`` file (with
``model_format``, optional ``architecture`` and ``config`` JSON) or an ``endpoint`` JSON field (HttpSuspect
keywords); ``watermark_key`` (the key JSON file); ``reference_data`` (npz with ``x, y``: data the model was
not trained on) and/or ``null_models`` (safetensors files, repeatable); ``di_data`` (npz with ``x_private,
y_private, x_public, y_public``); optional ``params`` JSON (``audit.protected.RegistrationConfig``).
Every file is validated here (no pickles, npz without object arrays); the heavy part (training reference
models, precomputing the nulls) runs on a worker: 202 with the record, then poll ``GET .../{id}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from services.api.deps import AdminDep, CeleryDep, RedisDep, SettingsDep
from services.api.problems import errors, found
from services.api.schemas import ProtectedModel
from services.api.uploads import StoredFile, form_file, form_json, form_text, read_form, store_upload
from services.core.protected import ProtectedIndex, ProtectedRecord, new_protected_id
from services.core.settings import Settings
from services.core.storage import protected_root, uploads_dir
from services.core.tasks import REGISTER_PROTECTED_TASK

router = APIRouter(prefix="/v1/protected-models", tags=["protected-models"])

MAX_NULL_MODELS = 64  # WRT calibrates on 20-30 null models; twice that is plenty


def _check_model(
    path: Path, fmt: str, architecture: str | None, config: dict[str, Any] | None, settings: Settings
) -> None:
    from audit.suspects.isolated import check_in_child
    from audit.suspects.loader import SAFE_FORMATS

    if fmt not in SAFE_FORMATS:
        raise ValueError(f"a protected model must be one of {SAFE_FORMATS}")
    # In a resource-limited child, like suspect uploads (services/api/uploads.py): the API keeps its memory.
    check_in_child(path, fmt, architecture=architecture, config=config, max_bytes=settings.audit_max_upload_bytes,
                   memory_bytes=settings.audit_validate_memory_bytes, cpu_s=settings.audit_validate_cpu_s)


def _check_key(path: Path) -> None:
    from audit.boundary_watermark import key_from_dict

    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError("the key file must hold a JSON object")
        key_from_dict(data)  # EWE's WatermarkKey or a BoundaryKey, by its format field
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a watermark key file: {exc}") from None


def _check_reference(path: Path) -> None:
    from audit.protected import load_reference_data

    load_reference_data(path)


def _check_di(path: Path) -> None:
    from audit.protected import load_di_data

    load_di_data(path)


async def _store_checked(upload: Any, settings: Settings, check: Callable[[Path], None], what: str) -> StoredFile:
    stored: StoredFile = await run_in_threadpool(store_upload, upload, uploads_dir(settings))
    try:
        await run_in_threadpool(check, stored.path)
    except (ValueError, OSError) as exc:  # SuspectError is a ValueError; np.load raises ValueError/OSError
        raise HTTPException(422, f"{what} refused: {exc}") from None
    return stored


_REGISTER_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "model": {"type": "string", "format": "binary"},
        "model_format": {"type": "string", "default": "safetensors"},
        "architecture": {"type": "string"},
        "config": {"type": "string", "description": "JSON object"},
        "endpoint": {"type": "string", "description": "JSON object: url, protocol, model, ..."},
        "params": {"type": "string", "description": "JSON object: registration parameters"},
        "watermark_key": {"type": "string", "format": "binary"},
        "reference_data": {"type": "string", "format": "binary"},
        "di_data": {"type": "string", "format": "binary"},
        "null_models": {"type": "array", "items": {"type": "string", "format": "binary"}},
    },
}}}}}


@router.post("", status_code=202, response_model=ProtectedModel, openapi_extra=_REGISTER_BODY,
             responses=errors(413, 415, 422, 503))
async def register_protected_model(
    request: Request, response: Response, r: RedisDep, settings: SettingsDep, celery: CeleryDep, _: AdminDep
) -> dict[str, Any]:
    from audit.protected import RegistrationConfig, RegistrationInputs

    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data (the model, key and data files)")
    form = await read_form(request, settings.audit_max_upload_bytes, max_files=MAX_NULL_MODELS + 4)
    name = form_text(form, "name") or ""
    fmt = form_text(form, "model_format", "safetensors") or "safetensors"
    architecture = form_text(form, "architecture")
    config = form_json(form, "config")
    endpoint = form_json(form, "endpoint")
    params = form_json(form, "params") or {}
    for field_name, value in (("config", config), ("endpoint", endpoint), ("params", params)):
        if value is not None and not isinstance(value, dict):
            raise HTTPException(422, f"'{field_name}' must be a JSON object")
    try:
        parameters = RegistrationConfig.from_dict(params)
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, str(exc)) from None
    files: dict[str, dict[str, Any]] = {}
    model = form_file(form, "model")
    if model is not None:
        stored = await _store_checked(
            model, settings, lambda p: _check_model(p, fmt, architecture, config, settings), "model"
        )
        files["model"] = stored.to_dict()
    if endpoint is not None:
        from services.core.model_client import HttpSuspect

        try:
            with HttpSuspect(**endpoint) as suspect:
                await run_in_threadpool(suspect.check_destination)  # egress policy, as audits
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, f"endpoint refused: {exc}") from None
    checks = {"watermark_key": _check_key, "reference_data": _check_reference, "di_data": _check_di}
    for field_name, check in checks.items():
        upload = form_file(form, field_name)
        if upload is not None:
            stored = await _store_checked(upload, settings, check, field_name.replace("_", " "))
            files[field_name] = stored.to_dict()
    nulls: list[Any] = [v for v in form.getlist("null_models") if not isinstance(v, str)]
    if len(nulls) > MAX_NULL_MODELS:
        raise HTTPException(422, f"at most {MAX_NULL_MODELS} null models")
    for i, upload in enumerate(nulls):
        stored = await _store_checked(
            upload, settings, lambda p: _check_model(p, "safetensors", None, None, settings), f"null model {i}"
        )
        files[f"null_model_{i}"] = stored.to_dict()
    spec = {"model_format": fmt, "architecture": architecture, "config": config, "endpoint": endpoint,
            "files": files, "parameters": parameters.__dict__}
    record = ProtectedRecord(id=new_protected_id(), name=name, spec=spec)
    inputs = RegistrationInputs.from_spec(record.name, spec)
    try:
        inputs.validate()
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    index = ProtectedIndex(r)
    index.create(record)
    try:
        result = await run_in_threadpool(celery.send_task, REGISTER_PROTECTED_TASK, args=[record.id])
    except Exception:  # noqa: BLE001 - the broker is down
        index.update(record.id, status="failed", error="could not queue the registration")
        raise HTTPException(503, "the task broker is unavailable; try again") from None
    response.headers["Location"] = f"/v1/protected-models/{record.id}"
    return index.update(record.id, task_id=result.id).public()


@router.get("", response_model=list[ProtectedModel], responses=errors())
def list_protected_models(r: RedisDep, _: AdminDep, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    return [p.public() for p in ProtectedIndex(r).list(limit)]


def _get(r: Any, protected_id: str) -> ProtectedRecord:
    return found(ProtectedIndex(r).get(protected_id), "protected model", protected_id)


@router.get("/{protected_id}", response_model=ProtectedModel, responses=errors(404))
def read_protected_model(protected_id: str, r: RedisDep, _: AdminDep) -> dict[str, Any]:
    return _get(r, protected_id).public()


@router.get("/{protected_id}/registration")
def read_registration(protected_id: str, r: RedisDep, settings: SettingsDep, _: AdminDep) -> Response:
    """The signed registration record (DSSE envelope, exact bytes)."""
    from audit.protected import ENVELOPE_FILE

    record = _get(r, protected_id)
    path = protected_root(settings) / record.id / ENVELOPE_FILE
    if record.status != "ready" or not path.is_file():
        raise HTTPException(409, f"protected model '{protected_id}' is {record.status}")
    return Response(path.read_bytes(), media_type="application/json")
