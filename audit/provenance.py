"""What a signed statement says about where it came from: the software's version and file digests.

The version is read from the installed package's metadata (``pyproject.toml`` is its one source), so the
algorithms need nothing of the services to stamp it on a report.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    SOFTWARE_VERSION = version("modelcustody")
except PackageNotFoundError:  # running from a source tree that is not installed
    SOFTWARE_VERSION = "0.0.0+source"


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks (models may be larger than we want in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
