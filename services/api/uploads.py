"""Uploads for the admin API: a size-capped multipart parser, content-addressed storage, format validation.

The cap applies to the bytes actually received (a lying or absent Content-Length does not get around it):
past ``limit`` the request is answered 413 while it is still being read. Files are hashed while they are
written, then stored as ``<data_dir>/uploads/<sha256>``. A suspect model is validated before any audit is
queued: pickle-based content is recognised by ``audit.suspects.pickle_sandbox.detect_unsafe_format`` (which
parses opcodes and never executes them) and refused unless the operator allowed unsafe formats; every other
file goes through its safe loader (no code runs) so a malformed model is a 422 now, not a failed audit later.
The loader runs in a child process with memory and CPU limits (``audit.suspects.isolated``): hostile bytes
can make a loader allocate gigabytes, and that must cost a child, not the API. A refused file is deleted
only when this upload created it and no audit or registration refers to it: the store is content-addressed,
so the same bytes re-sent under a wrong format are the very file an earlier audit still needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData, UploadFile

from services.core.settings import Settings
from services.core.storage import store_content_addressed

_CHUNK = 1 << 20
EVERY_RECORD = 10**9  # a list limit above any count of audits or registrations: all of them


async def read_form(request: Request, limit: int, max_files: int = 16) -> FormData:
    """The multipart form, refusing with 413 once more than ``limit`` body bytes have arrived."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {declared} bytes exceeds the {limit}-byte upload limit")
    received = 0

    async def receive() -> Any:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body exceeds the {limit}-byte upload limit")
        return message

    limited = Request(request.scope, receive)
    try:
        return await limited.form(max_files=max_files, max_fields=32, max_part_size=1024 * 1024)
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart bodies of every kind are the client's error
        raise HTTPException(400, f"malformed multipart body: {exc}") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (non-multipart) body, refusing with 413 past ``limit`` bytes (declared or received)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class StoredFile:
    path: Path
    sha256: str
    size: int
    created: bool = False  # this upload wrote the file (it did not exist before)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "size": self.size}


def store_upload(upload: UploadFile, directory: Path) -> StoredFile:
    """Copy an uploaded file to ``directory/<sha256>`` (synchronous: run it in the threadpool)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".upload-{os.getpid()}-{secrets.token_hex(6)}.tmp"
    digest = hashlib.sha256()
    size = 0
    upload.file.seek(0)
    with open(tmp, "wb") as out:
        for chunk in iter(lambda: upload.file.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    sha = digest.hexdigest()
    existed = (directory / sha).exists()
    return StoredFile(store_content_addressed(tmp, directory, sha), sha, size, created=not existed)


def discard_refused(stored: StoredFile, r: Any) -> bool:
    """Delete a refused upload unless it existed before or an audit or registration refers to it.

    Synchronous (reads Redis): run it in the threadpool. True when the file was deleted.
    """
    from services.core.audits import AuditStore
    from services.core.protected import ProtectedIndex

    if not stored.created:
        return False
    if any(a.suspect.get("sha256") == stored.sha256 or a.suspect.get("path") == str(stored.path)
           for a in AuditStore(r).list(limit=EVERY_RECORD)):
        return False
    for record in ProtectedIndex(r).list(limit=EVERY_RECORD):
        files = record.spec.get("files", {})
        if any(isinstance(f, dict) and f.get("sha256") == stored.sha256 for f in files.values()):
            return False
    with contextlib.suppress(FileNotFoundError):
        stored.path.unlink()
    return True


def form_text(form: FormData, name: str, default: str | None = None) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise HTTPException(422, f"form field '{name}' must be text, not a file")
    return value


def form_json(form: FormData, name: str) -> Any:
    text = form_text(form, name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"form field '{name}' is not JSON: {exc}") from None


def form_file(form: FormData, name: str) -> UploadFile | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        raise HTTPException(422, f"form field '{name}' must be a file upload")
    return value


def validate_suspect_file(
    stored: StoredFile, declared_format: str, architecture: str | None, config: Mapping[str, Any] | None,
    settings: Settings,
) -> str:
    """The normalised format of an acceptable suspect file; ``SuspectError`` with the reason otherwise."""
    from audit.suspects.isolated import check_in_child
    from audit.suspects.loader import SAFE_FORMATS, normalise_format
    from audit.suspects.pickle_sandbox import detect_unsafe_format

    fmt = normalise_format(declared_format)
    if settings.allow_unsafe_formats and fmt not in SAFE_FORMATS:
        if detect_unsafe_format(stored.path.read_bytes()) is not None:
            return fmt  # allowed by the operator; only ever loaded in the worker's sandbox
    trusted = None
    if settings.extra_trusted_types:
        from audit.suspects.skops_loader import DEFAULT_TRUSTED_TYPES

        trusted = [*DEFAULT_TRUSTED_TYPES, *settings.extra_trusted_types]
    # In a resource-limited child (pickle content is refused there however it was declared, and never loaded).
    check_in_child(
        stored.path, fmt, architecture=architecture, config=config, trusted_types=trusted,
        max_bytes=settings.audit_max_upload_bytes, memory_bytes=settings.audit_validate_memory_bytes,
        cpu_s=settings.audit_validate_cpu_s,
    )
    return fmt
