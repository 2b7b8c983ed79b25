"""The one codec of the three prediction protocols: the gateway reads requests and answers with it, the
model client (``services.core.model_client``), the red team and the tests write requests with it.

- Open Inference Protocol v2 (Triton, MLServer, KServe v2): tensors in ``inputs[]`` / ``outputs[]``,
  each ``{"name", "shape", "datatype", "data"}`` with ``data`` flat or nested in row-major order.
- KServe v1: ``{"instances": [...]}`` → ``{"predictions": [...]}``.
- Generic JSON: two dotted paths (settings) locate the input rows and the output rows.

Each adapter turns a parsed request body into an ``[n, d]`` float array of rows (validated: numeric,
finite, consistent shape) and a parsed response into ``[n, k]`` output rows plus their kind, and can
write transformed outputs back into the response in the protocol's own shape.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

OutputKind = Literal["probabilities", "label", "raw", "none"]  # "none": no answer rows (upstream error)
# One spelling everywhere: settings, records, audit specs, CLI options.
Protocol = Literal["oip-v2", "kserve-v1", "generic"]
PROTOCOLS: tuple[Protocol, ...] = ("oip-v2", "kserve-v1", "generic")


# The largest float32. Models run in float32 (Triton, MLServer, ONNX): a larger value becomes infinity in
# the model and in the detector's float32 state, so the gateway refuses it instead of logging it.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class BadRequest(ValueError):
    """The client's request cannot be forwarded; the message is returned to the client as the reason."""


# Tensors of images or sequences have 2-5 dimensions; 16 leaves room for anything real while a shape list of
# thousands of ones is refused before any arithmetic is done on it.
MAX_SHAPE_DIMS = 16
# A declared element count above this cannot match the data of a body the gateway accepts (every JSON number
# takes at least two bytes with its separator, and bodies are capped far below 2**31 bytes).
MAX_ELEMENTS = 2**31


def _as_rows(data: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(f"{what} must be numbers in rows of equal length") from None
    if arr.ndim == 0 or arr.size == 0:
        raise BadRequest(f"{what} is empty")
    if arr.ndim == 1:
        arr = arr[None, :]
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if not np.isfinite(arr).all():
        raise BadRequest(f"{what} contains NaN, infinity or null")
    if float(np.abs(arr).max()) > FLOAT32_MAX:
        raise BadRequest(f"{what} has values outside the float32 range (|x| <= {FLOAT32_MAX:.6g})")
    return arr


def check_range(rows: np.ndarray, low: float, high: float, model: str) -> None:
    """``BadRequest`` when a value lies outside the range declared for ``model`` (settings)."""
    lo, hi = float(rows.min()), float(rows.max())
    if lo < low or hi > high:
        bad = lo if lo < low else hi
        raise BadRequest(f"inputs of model '{model}' must lie in [{low:g}, {high:g}]; got {bad:g}")


def _check_dim(rows: np.ndarray, input_dim: int | None) -> None:
    if input_dim is not None and rows.shape[1] != input_dim:
        raise BadRequest(f"each row must have {input_dim} features, got {rows.shape[1]}")


def oip_rows(body: Any, input_dim: int | None) -> np.ndarray:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequest("OIP v2 request needs a non-empty 'inputs' list")
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict) or "data" not in tensor or "shape" not in tensor:
        raise BadRequest("OIP v2 input tensor needs 'shape' and 'data'")
    shape = tensor["shape"]
    # type() rather than isinstance(): JSON true is a Python bool, which is an int.
    if not isinstance(shape, list) or not shape or not all(type(s) is int and s > 0 for s in shape):
        raise BadRequest("OIP v2 'shape' must be a list of positive integers")
    if len(shape) > MAX_SHAPE_DIMS:
        raise BadRequest(f"OIP v2 'shape' has {len(shape)} dimensions; at most {MAX_SHAPE_DIMS} are accepted")
    # Python ints, never np.prod: int64 arithmetic wraps (3 * 6148914691236517206 is 2 in int64).
    expected = math.prod(shape)
    if expected > MAX_ELEMENTS:
        raise BadRequest(f"OIP v2 'shape' {shape} declares {expected} values, more than any accepted body holds")
    arr = _as_rows(tensor["data"], "OIP v2 input 'data'")
    if arr.size != expected:
        raise BadRequest(f"OIP v2 input has {arr.size} values but shape {shape} needs {expected}")
    rows = arr.reshape(shape[0], -1)
    _check_dim(rows, input_dim)
    return rows


def kserve_rows(body: Any, input_dim: int | None) -> np.ndarray:
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequest("KServe v1 request needs an 'instances' list")
    if not isinstance(body["instances"], list):
        raise BadRequest("KServe v1 'instances' must be a list")
    rows = _as_rows(body["instances"], "KServe v1 'instances'")
    _check_dim(rows, input_dim)
    return rows


def _segments(path: str) -> list[str]:
    parts = path.split(".")
    if not all(parts):
        raise ValueError(f"malformed JSON path {path!r}")
    return parts


def get_path(body: Any, path: str) -> Any:
    """The value at a dotted path; integer segments index lists. ``KeyError(path)`` when absent."""
    node = body
    for part in _segments(path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(path)
    return node


def set_path(body: Any, path: str, value: Any) -> Any:
    """Place ``value`` at a dotted path: existing lists are indexed, missing objects created. Returns ``body``."""
    parts = _segments(path)
    node = body
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


def generic_rows(body: Any, input_path: str, input_dim: int | None) -> np.ndarray:
    try:
        data = get_path(body, input_path)
    except KeyError:
        raise BadRequest(f"request has no input rows at JSON path '{input_path}'") from None
    rows = _as_rows(data, f"'{input_path}'")
    _check_dim(rows, input_dim)
    return rows


def classify_output(out: np.ndarray) -> OutputKind:
    """Probabilities when rows are non-negative and sum to 1; a label when one integer per row."""
    if out.shape[1] == 1:
        return "label" if np.all(out == np.round(out)) else "raw"
    # Plain reductions, not np.allclose: this runs on every answer and allclose costs ~20 µs.
    if out.min() >= 0.0 and float(np.abs(out.sum(axis=1) - 1.0).max()) <= 1e-3:
        return "probabilities"
    return "raw"


def _output_rows(data: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        return None
    if arr.size == 0 or arr.size % n:
        return None
    return arr.reshape(n, -1)


def oip_outputs(body: Any, n: int) -> tuple[np.ndarray | None, int]:
    """The first output tensor with one entry per row, and its index in ``outputs``."""
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        return None, -1
    for i, tensor in enumerate(body["outputs"]):
        if isinstance(tensor, dict):
            shape = tensor.get("shape")
            if isinstance(shape, list) and shape and shape[0] == n:
                rows = _output_rows(tensor.get("data"), n)
                if rows is not None:
                    return rows, i
    return None, -1


def kserve_outputs(body: Any, n: int) -> np.ndarray | None:
    if not isinstance(body, dict) or "predictions" not in body:
        return None
    return _output_rows(body["predictions"], n)


def generic_outputs(body: Any, output_path: str, n: int) -> np.ndarray | None:
    try:
        return _output_rows(get_path(body, output_path), n)
    except KeyError:
        return None


def oip_write_outputs(body: dict[str, Any], index: int, new: np.ndarray) -> None:
    tensor = body["outputs"][index]
    tensor["shape"] = list(new.shape)
    tensor["datatype"] = "INT64" if new.dtype.kind == "i" else "FP64"
    tensor["data"] = new.reshape(-1).tolist()


def rows_for_protocol(new: np.ndarray) -> list[Any]:
    """KServe v1 / generic rows: a label-only answer is one integer per row, probabilities a list."""
    if new.dtype.kind == "i":
        return new[:, 0].tolist()
    return new.tolist()


# --- the client side: what a caller of a model API sends ------------------------------------------------


def request_path(protocol: Protocol, model: str) -> str:
    """The inference route of ``model`` (empty for generic JSON: the configured URL is the route)."""
    if protocol == "oip-v2":
        return f"/v2/models/{model}/infer"
    if protocol == "kserve-v1":
        return f"/v1/models/{model}:predict"
    return ""


def oip_request(x: np.ndarray, datatype: str = "FP64", name: str = "input-0") -> dict[str, Any]:
    """An OIP v2 request with one ``[n, d]`` tensor."""
    x = np.asarray(x)
    x2 = x.reshape(len(x), -1) if x.ndim != 1 else x[None, :]
    tensor = {"name": name, "shape": list(x2.shape), "datatype": datatype, "data": x2.reshape(-1).tolist()}
    return {"inputs": [tensor]}


def encode_request(
    protocol: Protocol,
    x: np.ndarray,
    *,
    datatype: str = "FP64",
    input_name: str = "input-0",
    input_path: str = "inputs",
) -> dict[str, Any]:
    """The request body that asks for predictions on the rows ``x`` in ``protocol``."""
    if protocol == "oip-v2":
        return oip_request(x, datatype, input_name)
    rows = np.asarray(x).tolist()
    if protocol == "kserve-v1":
        return {"instances": rows}
    return set_path({}, input_path, rows)
