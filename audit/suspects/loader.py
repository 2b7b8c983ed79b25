"""One entry point for suspect model files: hash first, check the content, then hand to the format's loader.

Policy from docs/design.md "Suspect models" and docs/research.md "Ecosystem: model file formats": ONNX (no external
data, CPU only),
safetensors (with a registered architecture) and skops (explicit trusted types) load in process; pickle,
joblib, ``torch.save`` files and TorchScript are refused unless the operator allows unsafe formats, and
then load only in the network-less sandbox (``pickle_sandbox``). The SHA-256 of the exact bytes is taken
before anything else and becomes the suspect's identity (the report's in-toto subject).

Whatever the declared format, the content is sniffed for pickle first: a pickle declared as ONNX is
refused as a pickle, not handed to the ONNX parser. Every failure is a ``SuspectError`` with a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from audit.suspects.base import Suspect, SuspectError
from audit.suspects.pickle_sandbox import UNSAFE_FORMATS, detect_unsafe_format, load_unsafe

SAFE_FORMATS = ("onnx", "safetensors", "skops")
FORMATS = SAFE_FORMATS + UNSAFE_FORMATS
_ALIASES = {
    "pkl": "pickle",
    "pt": "torch",
    "pth": "torch",
    "jit": "torchscript",
    "skl": "skops",
    "st": "safetensors",
}
# ONNX's protobuf cannot exceed 2 GiB anyway; audits here are of models far smaller.
MAX_FILE_BYTES = 2 * 1024**3
REFUSAL_SHORT = "pickle-based content can execute code when loaded and is never passed to another loader"


def normalise_format(declared_format: str) -> str:
    fmt = declared_format.strip().lower().lstrip(".")
    fmt = _ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise SuspectError(f"unknown model format {declared_format!r}; supported: {', '.join(FORMATS)}")
    return fmt


def load_suspect_file(
    path_or_bytes: str | Path | bytes,
    declared_format: str,
    *,
    architecture: str | None = None,
    config: Mapping[str, Any] | None = None,
    trusted_types: Iterable[str] | None = None,
    allow_unsafe: bool = False,
    budget: int | None = None,
    require_network_isolation: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
) -> Suspect:
    """Load a suspect model file of ``declared_format`` (one of ``FORMATS`` or an alias such as ``pt``).

    ``architecture``/``config`` name the registered architecture for safetensors files without metadata;
    ``trusted_types`` replaces skops's default allow-list (pass ``[*DEFAULT_TRUSTED_TYPES, *extra]`` to
    extend it); ``allow_unsafe`` is the operator's MODELCUSTODY_ALLOW_UNSAFE_FORMATS.
    """
    fmt = normalise_format(declared_format)
    data = _read(path_or_bytes, max_bytes)
    identity = {
        "kind": "file",
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": fmt,
        "size": str(len(data)),
    }
    if not data:
        raise SuspectError("the model file is empty")

    unsafe = detect_unsafe_format(data)
    if unsafe is not None:
        if fmt in SAFE_FORMATS:
            # Never hand a pickle to another loader, even with unsafe formats allowed: the mismatch
            # itself is suspicious, and the operator allowed pickles they declared as such.
            raise SuspectError(f"declared {fmt} but the content is a {unsafe} file; {REFUSAL_SHORT}")
        return load_unsafe(
            data,
            unsafe,
            declared_format=fmt,
            allow_unsafe=allow_unsafe,
            budget=budget,
            identity=identity,
            require_network_isolation=require_network_isolation,
        )
    if fmt in UNSAFE_FORMATS:
        raise SuspectError(f"declared {fmt} but the content is not a {fmt} file (no pickle stream found)")

    if fmt == "onnx":
        from audit.suspects.onnx import OnnxSuspect

        return OnnxSuspect.from_bytes(data, budget=budget, identity=identity)
    if fmt == "safetensors":
        from audit.suspects.safetensors_loader import load_safetensors_suspect

        return load_safetensors_suspect(
            data, architecture=architecture, config=config, budget=budget, identity=identity
        )
    from audit.suspects.skops_loader import load_skops_suspect

    return load_skops_suspect(data, trusted_types=trusted_types, budget=budget, identity=identity)


def _read(path_or_bytes: str | Path | bytes, max_bytes: int) -> bytes:
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise SuspectError(f"the model file is {size} bytes, above the {max_bytes}-byte limit")
            data = path.read_bytes()
        except OSError as exc:
            raise SuspectError(f"cannot read the model file: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise SuspectError(f"the model file is {len(data)} bytes, above the {max_bytes}-byte limit")
    return data
