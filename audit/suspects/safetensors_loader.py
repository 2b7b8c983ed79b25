"""A suspect PyTorch model given as safetensors weights for an architecture the owner registered by name.

safetensors (huggingface/safetensors format: an 8-byte little-endian header length, a JSON header, raw
tensor buffers) holds only tensors and strings, so loading runs no code; the module itself is built by a
factory registered in ``audit.architectures``, never by anything in the file. The architecture and its
config come from the file's ``modelcustody.architecture`` / ``modelcustody.config`` metadata, or are
passed explicitly for a file somebody else exported. The state dict must match the architecture exactly
(``strict=True``): a missing, extra or misshapen tensor is a refusal with the reason, since a partially
loaded model would answer with random weights and make the audit meaningless.

The module is named ``safetensors_loader`` so that ``import safetensors`` still means the library.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import nn

from audit.architectures import ARCH_KEY, CONFIG_KEY, build_model, predict_logits
from audit.suspects._outputs import Answer, softmax
from audit.suspects.base import Suspect, SuspectError

# The safetensors library's own cap on the JSON header (a DoS guard); we apply it before parsing too.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors byte string; SuspectError when the framing is wrong."""
    if len(data) < 8:
        raise SuspectError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise SuspectError(f"not a safetensors file: header length {n} does not fit a {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuspectError(f"not a safetensors file: the header is not JSON ({exc})") from None
    except RecursionError:  # a header of nested arrays: no safetensors header nests deeper than two levels
        raise SuspectError("not a safetensors file: the header is nested too deeply") from None
    if not isinstance(header, dict):
        raise SuspectError("not a safetensors file: the header is not a JSON object")
    return header


def header_shapes(header: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as the header declares it (nothing is read or allocated)."""
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise SuspectError(f"not a safetensors file: tensor {name!r} has no valid shape")
        shapes[name] = tuple(shape)
    return shapes


def architecture_shapes(name: str, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes architecture ``name`` expects, built on the meta device (no memory allocated)."""
    try:
        with torch.device("meta"):
            module = build_model(name, config)
    except (ValueError, TypeError) as exc:
        raise SuspectError(f"cannot build architecture {name!r}: {exc}") from None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}  # what a strict load expects


def check_weights_fit(name: str, config: Mapping[str, Any], header: Mapping[str, Any]) -> None:
    """SuspectError unless the file declares exactly the tensors the architecture needs.

    Runs before anything is allocated: a few hundred bytes of metadata can name an architecture of gigabytes,
    while the file's own tensors are bounded by its size. The reasons read like torch's strict load.
    """
    found = header_shapes(header)
    needed = architecture_shapes(name, config)
    if found == needed:
        return
    problems = []
    if missing := sorted(needed.keys() - found.keys()):
        problems.append("Missing key(s): " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if unexpected := sorted(found.keys() - needed.keys()):
        problems.append("Unexpected key(s): " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
    for key in sorted(needed.keys() & found.keys()):
        if needed[key] != found[key]:
            problems.append(f"size mismatch for {key}: the file has {list(found[key])}, the architecture "
                            f"{list(needed[key])}")
    n_needed = sum(math.prod(s) for s in needed.values())
    n_found = sum(math.prod(s) for s in found.values())
    raise SuspectError(
        f"the weights do not match architecture {name!r} ({n_needed} parameters needed, the file holds {n_found}): "
        + "; ".join(problems[:10])
    )


def read_metadata(data: bytes) -> dict[str, str]:
    metadata = read_header(data).get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise SuspectError("safetensors metadata is not an object")
    return {str(k): str(v) for k, v in metadata.items()}


class TorchModuleSuspect(Suspect):
    """An in-process ``nn.Module`` returning logits ``[n, k]``; probabilities are their softmax.

    ``module`` (in eval mode) is the white-box handle: MinGD dataset inference (``audit.mingd``) takes gradients
    through it. Only suspects of this class expose one; ONNX, skops, sandboxed and HTTP suspects answer queries only.
    """

    def __init__(self, module: nn.Module, *, budget: int | None = None, identity: dict[str, str] | None = None) -> None:
        super().__init__(budget=budget, identity=identity)
        self.module = module.eval()

    @property
    def has_probabilities(self) -> bool:
        return True

    def _answer(self, x: np.ndarray) -> Answer:
        try:
            logits = predict_logits(self.module, x)
        except (RuntimeError, ValueError) as exc:  # e.g. a feature width the first layer does not take
            raise SuspectError(f"the model failed on the query: {exc}") from None
        if logits.ndim != 2 or logits.shape[0] != len(x) or logits.shape[1] < 2:
            raise SuspectError(f"the model returned shape {logits.shape}, expected [n, classes]")
        proba = softmax(logits)
        return Answer(proba.argmax(axis=1).astype(np.int64), proba, "logits")

    def _labels(self, x: np.ndarray) -> np.ndarray:
        return self._answer(x).labels

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        proba = self._answer(x).probabilities
        assert proba is not None
        return proba


def load_safetensors_suspect(
    data: bytes,
    *,
    architecture: str | None = None,
    config: Mapping[str, Any] | None = None,
    budget: int | None = None,
    identity: dict[str, str] | None = None,
) -> TorchModuleSuspect:
    """Build the named architecture and load the weights strictly. Explicit arguments override metadata."""
    metadata = read_metadata(data)
    name = architecture or metadata.get(ARCH_KEY)
    if not name:
        raise SuspectError(f"the safetensors file names no architecture ('{ARCH_KEY}' metadata); pass one")
    if config is None:
        if CONFIG_KEY not in metadata:
            raise SuspectError(f"the safetensors file carries no '{CONFIG_KEY}' metadata; pass the config")
        try:
            config = json.loads(metadata[CONFIG_KEY])
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SuspectError(f"the safetensors config metadata is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise SuspectError("the safetensors config metadata is not a JSON object")
    check_weights_fit(name, config, read_header(data))
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as exc:
        raise SuspectError(f"not a valid safetensors file: {exc}") from None
    try:
        module = build_model(name, config)
    except (ValueError, TypeError) as exc:
        raise SuspectError(f"cannot build architecture {name!r}: {exc}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # torch lists missing/unexpected keys and shape mismatches; that list is the useful reason.
        reason = " ".join(str(exc).split())  # torch's message is multi-line and tab-indented
        raise SuspectError(f"the weights do not match architecture {name!r}: {reason}") from None
    for tensor in state.values():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SuspectError("the weights hold NaN or infinite values")
    return TorchModuleSuspect(module, budget=budget, identity=identity)
