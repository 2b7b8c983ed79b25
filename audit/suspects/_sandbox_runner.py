"""The child side of ``pickle_sandbox``: loads one pickle-based model and answers prediction requests.

Run as ``python -I -B -c <this file's source>`` inside a fresh network namespace; it imports nothing from
Model Custody (so ``-I`` can keep the working directory and the environment out of ``sys.path``).

Framing on the pipes: every frame is an 8-byte little-endian length followed by that many bytes. Control
frames are JSON; arrays travel as ``.npy`` (the parent reads them with ``allow_pickle=False``, so a
hostile child cannot make the parent unpickle anything).

Requests: ``{"format": ...}`` + the model bytes, then any number of ``{"op": "predict"}`` + a float32
``.npy``, then ``{"op": "exit"}``. Answers: ``{"ok": true, ...}`` (+ ``.npy`` frames named in ``arrays``)
or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import sys
import traceback
from typing import Any, BinaryIO

import numpy as np

# The parent's request size cap mirrors this; a frame larger than this is a protocol error.
MAX_FRAME = 4 * 1024**3


def _read_frame(stream: BinaryIO) -> bytes:
    head = stream.read(8)
    if len(head) != 8:
        raise EOFError("parent closed the pipe")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes is too large")
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("short frame")
    return data


def _write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _set_limits(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # No writes to regular files: a model has no business creating files (pipes are unaffected).
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _load(fmt: str, data: bytes) -> Any:
    if fmt in ("torch", "torchscript"):
        import torch

        torch.set_num_threads(1)
        if fmt == "torchscript":
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
        # This is the sandbox: the operator opted into full unpickling, weights_only cannot load modules.
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    try:
        import joblib
    except ImportError:
        import pickle

        return pickle.loads(data)
    return joblib.load(io.BytesIO(data))  # also reads plain pickles and compressed joblib files


def _describe(model: Any) -> dict[str, Any]:
    if hasattr(model, "forward") and callable(model):
        return {"kind": "torch", "type": type(model).__name__, "has_probabilities": True}
    if callable(getattr(model, "predict", None)):
        return {"kind": "sklearn", "type": type(model).__name__, "has_probabilities": hasattr(model, "predict_proba")}
    raise TypeError(f"the file holds a {type(model).__name__}, not a model (no forward or predict)")


def _predict(model: Any, kind: str, x: np.ndarray) -> dict[str, np.ndarray]:
    if kind == "torch":
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(x))
        if isinstance(out, tuple | list):
            out = out[0]
        return {"scores": out.detach().cpu().numpy()}
    labels = np.asarray(model.predict(x))
    classes = getattr(model, "classes_", None)
    if labels.dtype.kind not in "iubf" and classes is not None:
        index = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
        labels = np.array([index[v] for v in labels.tolist()], dtype=np.int64)
    out = {"labels": labels}
    if hasattr(model, "predict_proba"):
        out["proba"] = np.asarray(model.predict_proba(x), dtype=np.float64)
    return out


def main() -> None:
    memory_bytes, cpu_seconds = int(sys.argv[1]), int(sys.argv[2])
    # Keep the protocol pipes private: whatever the model prints must not corrupt the framing.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    _set_limits(memory_bytes, cpu_seconds)

    def reply(obj: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        arrays = arrays or {}
        _write_frame(proto_out, json.dumps({**obj, "arrays": list(arrays)}).encode())
        for array in arrays.values():
            _write_frame(proto_out, _npy(array))

    try:
        fmt = json.loads(_read_frame(proto_in))["format"]
        model = _load(fmt, _read_frame(proto_in))
        info = _describe(model)
    except BaseException as exc:  # anything the model does on load is reported, not raised
        reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return
    reply({"ok": True, **info})
    while True:
        try:
            request = json.loads(_read_frame(proto_in))
        except EOFError:
            return
        if request.get("op") != "predict":
            return
        try:
            x = np.load(io.BytesIO(_read_frame(proto_in)), allow_pickle=False).astype(np.float32)
            reply({"ok": True}, _predict(model, info["kind"], x))
        except Exception as exc:  # a failing prediction is an answer, the loop goes on
            tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            reply({"ok": False, "error": tail[:2000]})


if __name__ == "__main__":
    main()
