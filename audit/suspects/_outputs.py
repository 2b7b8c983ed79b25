"""Turning what a model returned into labels and (when present) class probabilities.

Models answer in many shapes: integer labels ``[n]``/``[n, 1]``, probabilities ``[n, k]``, raw scores
(logits) ``[n, k]``, or one probability of the positive class ``[n]``. Every loader and endpoint suspect
funnels its raw output through ``interpret_output`` so the rules are the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.suspects.base import SuspectError

# Probabilities from float32 models sum to 1 only up to rounding; 1e-3 absorbs that and little else.
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Answer:
    labels: np.ndarray  # int64 [n]
    probabilities: np.ndarray | None  # float64 [n, k], rows summing to 1, or None for label-only outputs
    kind: str  # "labels", "probabilities", "logits" or "binary-probability"


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def looks_like_probabilities(scores: np.ndarray) -> bool:
    return bool(
        scores.size
        and np.all(scores >= -_SUM_TOLERANCE)
        and np.all(np.abs(scores.sum(axis=1) - 1.0) <= _SUM_TOLERANCE * scores.shape[1])
    )


def labels_answer(values: np.ndarray, n_rows: int) -> Answer:
    values = np.asarray(values)
    if values.size != n_rows:
        raise SuspectError(f"expected {n_rows} labels, got an output of shape {values.shape}")
    flat = values.reshape(-1)
    if flat.dtype.kind == "f":
        if not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat)):
            raise SuspectError("the model's label output holds non-integer values")
    elif flat.dtype.kind not in "iub":
        raise SuspectError(f"the model's label output has dtype {flat.dtype}, not integer class labels")
    return Answer(flat.astype(np.int64), None, "labels")


def interpret_output(raw: object, n_rows: int) -> Answer:
    """Labels and probabilities from one output tensor (any nesting of lists or an ndarray)."""
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError) as exc:  # ragged lists
        raise SuspectError(f"the model's output is not a rectangular array: {exc}") from None
    if arr.dtype.kind in "iub":
        return labels_answer(arr, n_rows)
    if arr.dtype.kind != "f":
        raise SuspectError(f"the model's output has dtype {arr.dtype}; expected numbers")
    if not np.all(np.isfinite(arr)):
        raise SuspectError("the model's output holds NaN or infinite values")
    if arr.ndim == 2 and arr.shape[0] == n_rows and arr.shape[1] >= 2:
        if looks_like_probabilities(arr):
            proba = np.clip(arr.astype(np.float64), 0.0, None)
            proba /= proba.sum(axis=1, keepdims=True)
            return Answer(proba.argmax(axis=1).astype(np.int64), proba, "probabilities")
        proba = softmax(arr)
        return Answer(proba.argmax(axis=1).astype(np.int64), proba, "logits")
    if arr.size == n_rows:
        flat = arr.reshape(-1)
        if np.all(flat == np.round(flat)):
            return labels_answer(flat, n_rows)
        if np.all((flat >= 0) & (flat <= 1)):
            # One number per row in [0, 1]: the positive-class probability of a binary classifier.
            proba = np.stack([1.0 - flat, flat], axis=1).astype(np.float64)
            return Answer((flat >= 0.5).astype(np.int64), proba, "binary-probability")
    raise SuspectError(f"cannot read labels or probabilities for {n_rows} rows from an output of shape {arr.shape}")
