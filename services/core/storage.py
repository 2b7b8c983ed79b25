"""Where audits keep their files under ``settings.data_dir`` (one place, so API, workers and CLI agree)::

    <data_dir>/keys/signing_ed25519.pem, signing_ed25519.pub.pem   the Ed25519 signing key pair
    <data_dir>/uploads/<sha256>                                       uploaded files, content-addressed
    <data_dir>/protected/<id>/                                        registrations (audit.protected)
    <data_dir>/reports/<audit id>.dsse.json, <audit id>.html          signed reports and their pages
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.core.settings import Settings


def uploads_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


def protected_root(settings: Settings) -> Path:
    return settings.data_dir / "protected"


def reports_dir(settings: Settings) -> Path:
    return settings.data_dir / "reports"


def write_atomic(path: Path, data: bytes) -> Path:
    """Write via a temporary file and rename: readers never see half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_synced(path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp"), path, data)
    return path


def replace_synced(tmp: Path, path: Path, data: bytes) -> None:
    """Write ``data`` to ``tmp``, fsync it, then rename it onto ``path``: the rename never exposes a file
    whose bytes are not on disk yet."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def store_content_addressed(tmp: Path, directory: Path, sha256: str) -> Path:
    """Move a fully written temporary file to ``directory/<sha256>`` (keeping an identical existing copy)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / sha256
    if final.exists():
        tmp.unlink()
    else:
        os.replace(tmp, final)
    return final


