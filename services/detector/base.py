"""The one shape every detection signal shares, and the byte codec for per-client state.

A *signal* is a streaming statistic over one client's queries and answers with a baseline fitted on benign
reference data. It is constructed from a fitted baseline plus validated keyword parameters (``ValueError``
naming the reason on a bad one) and never keeps per-client data itself: the caller owns one *state* per
client, created by ``new_state()``, mutated by ``update``/``observe``, and stored as bytes between batches
(``state_to_bytes``/``state_from_bytes``). Every state has a size bounded by the signal's parameters,
whatever the client's history length, and the codec is plain arrays plus a JSON header: no pickle, so a
state read back from Redis can never execute code.

``observe(state, X, outputs, labels)`` = ``update`` (fold a batch into the state) + ``evaluate`` (test the
state's current window). The engine calls the two halves separately so it can test on a fixed schedule of
the client's query count, independent of how the stream was cut into batches.

Input conventions, shared by all signals:
- ``X``: float array [n, d] in the model's input space, exactly as the gateway logged it (for sklearn
  digits: 64 pixel intensities in 0..16). Signals compare queries with each other and with the reference
  data in that same space, so the reference data must be in it too; no normalisation is assumed.
- ``outputs``: the answered probabilities [n, k], or ``None`` when the client got labels only.
- ``labels``: the class each row's answer named, ints [n]; ``-1`` where unknown (failed request).
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import orjson

from audit.validation import positive_int

Scalar = int | float
Evidence = dict[str, Scalar]

# Inputs are clipped to +-INPUT_ABS_MAX before any signal sees them. The signals store queries and
# distances as float32 and square them (PRADA's Shapiro-Wilk sums squared deviations): one row at 3e38,
# finite in float32, made every later distance NaN and PRADA's p-value 1 for the client's whole life.
# 1e15 keeps 4 * B^2 * d * w (the sum of w squared distances between clipped rows of d features) below
# float32's 3.4e38 for d <= 10^4 features and windows w <= 10^3, far above any real input scale.
INPUT_ABS_MAX = 1e15

_MAGIC = b"MCD1"  # Model Custody Detector state, codec version 1
_HEADER = struct.Struct("<4sI")


@dataclass(frozen=True, slots=True)
class SignalResult:
    """One test of one signal on one client's current window.

    ``statistic`` is compared with ``threshold`` by the signal's own rule to give ``fired``; ``p_value`` is
    the one-sided tail probability of the statistic under the benign null named by ``test`` at sample size
    ``n`` (1.0 when there is not enough data to test). ``alpha`` is the level ``fired`` corresponds to.
    ``evidence`` holds plain numbers only, so it serialises to JSON as is.
    """

    signal: str
    statistic: float
    threshold: float
    p_value: float
    fired: bool
    n: int
    alpha: float
    test: str
    evidence: Evidence = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "statistic": _json_float(self.statistic),
            "threshold": _json_float(self.threshold),
            "p_value": _json_float(self.p_value),
            "fired": self.fired,
            "n": self.n,
            "alpha": _json_float(self.alpha),
            "test": self.test,
            "evidence": {k: _json_float(v) if isinstance(v, float) else v for k, v in self.evidence.items()},
        }


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class Record:
    """A dataclass whose fields are numpy arrays or Python scalars; the unit the codec stores.

    Subclasses are ``@dataclass(slots=True)``; states and baselines are both records. ``to_record`` may be
    overridden to store less than the in-memory form (e.g. only the filled rows of a preallocated buffer).
    """

    __slots__ = ()

    def to_record(self) -> tuple[dict[str, Scalar], dict[str, np.ndarray]]:
        scalars: dict[str, Scalar] = {}
        arrays: dict[str, np.ndarray] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            elif isinstance(value, bool | int | float):
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{type(self).__name__}.{f.name} is {value}; records hold finite scalars")
                scalars[f.name] = value
            else:
                raise TypeError(f"{type(self).__name__}.{f.name}: unsupported type {type(value).__name__}")
        return scalars, arrays

    @classmethod
    def from_record(cls, scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        return cls(**scalars, **arrays)


def pack(layout: str, parts: dict[str, tuple[dict[str, Scalar], dict[str, np.ndarray]]]) -> bytes:
    """Serialise named records: magic, header length, JSON header, then the raw array bytes back to back.

    ``layout`` names everything that fixes the arrays' shapes; ``unpack`` refuses a blob whose layout
    differs, so a state written under other parameters is rejected instead of misread.
    """
    specs: list[list[Any]] = []
    chunks: list[bytes] = []
    offset = 0
    scalars: dict[str, dict[str, Scalar]] = {}
    for part, (sc, arrs) in parts.items():
        scalars[part] = sc
        for name, arr in arrs.items():
            a = np.ascontiguousarray(arr)
            raw = a.tobytes()
            specs.append([part, name, a.dtype.str, list(a.shape), offset])
            chunks.append(raw)
            offset += len(raw)
    header = orjson.dumps({"layout": layout, "scalars": scalars, "arrays": specs})
    return b"".join([_HEADER.pack(_MAGIC, len(header)), header, *chunks])


def unpack(data: bytes, layout: str) -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Inverse of ``pack``; arrays are writable views of one private copy of ``data``."""
    if len(data) < _HEADER.size:
        raise ValueError("state blob too short")
    magic, hlen = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("not a detector state blob (bad magic)")
    try:
        header = orjson.loads(data[_HEADER.size : _HEADER.size + hlen])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"corrupt state header: {exc}") from exc
    if header.get("layout") != layout:
        raise ValueError(
            f"state was written under layout {header.get('layout')!r}, this detector has {layout!r}; "
            "start the client afresh"
        )
    body = bytearray(data[_HEADER.size + hlen :])  # one copy, so every array below is writable
    out: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {
        part: (sc, {}) for part, sc in header["scalars"].items()
    }
    for part, name, dtype, shape, offset in header["arrays"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        if offset + count * dt.itemsize > len(body):
            raise ValueError("state blob truncated")
        arr = np.frombuffer(body, dtype=dt, count=count, offset=offset).reshape(shape)
        out.setdefault(part, ({}, {}))[1][name] = arr
    return out


S = TypeVar("S", bound=Record)
B = TypeVar("B", bound=Record)


class Signal(ABC, Generic[S, B]):
    """Base class of every signal: a fitted baseline, validated parameters, per-client state as bytes.

    ``S`` is the per-client state, ``B`` the fitted baseline (set by each subclass's constructor)."""

    _baseline: B

    name: ClassVar[str]
    STATE: type[S]  # the class of a client's state (a class attribute of each signal)
    PARAMS: ClassVar[tuple[str, ...]]  # the constructor keywords params() saves, each stored under its name

    def __init__(self, *, n_features: int, n_classes: int) -> None:
        self.n_features = positive_int("n_features", n_features)
        self.n_classes = positive_int("n_classes", n_classes, minimum=2)

    # ------------------------------------------------------------------ per-client state
    @abstractmethod
    def new_state(self) -> S: ...

    @abstractmethod
    def update(
        self, state: S, X: np.ndarray, outputs: np.ndarray | None, labels: np.ndarray, *, now: float | None = None
    ) -> None:
        """Fold one batch into ``state`` (arrays already validated by ``check_batch``)."""

    @abstractmethod
    def evaluate(self, state: S, *, now: float | None = None) -> SignalResult:
        """Test the state's current window against the baseline."""

    def observe(
        self,
        state: S,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        *,
        now: float | None = None,
    ) -> SignalResult:
        X, outputs, labels = check_batch(X, outputs, labels, self.n_features, self.n_classes)
        self.update(state, X, outputs, labels, now=now)
        return self.evaluate(state, now=now)

    def count_result(
        self, k: int, n: int, k_crit: int, p: float, *, min_n: int, alpha: float, test: str, evidence: Evidence
    ) -> SignalResult:
        """The result of a count test: ``k`` of the window's ``n`` items flagged, ``k_crit`` the smallest count
        significant at ``alpha``, ``p`` the test's p-value; untested (p = 1) below ``min_n`` items."""
        if n < min_n:
            return SignalResult(self.name, float("nan"), float("nan"), 1.0, False, n, alpha, test, evidence)
        return SignalResult(
            self.name,
            statistic=k / n,
            threshold=k_crit / n,
            p_value=p,
            fired=p <= alpha,
            n=n,
            alpha=alpha,
            test=test,
            evidence=evidence,
        )

    def state_type(self) -> type[S]:
        return self.STATE

    def layout(self) -> str:
        """Everything that fixes the shapes in a state (checked when a state is read back)."""
        return f"{self.name}:d={self.n_features},k={self.n_classes}"

    def state_to_bytes(self, state: S) -> bytes:
        return pack(self.layout(), {self.name: state.to_record()})

    def state_from_bytes(self, data: bytes) -> S:
        parts = unpack(data, self.layout())
        if self.name not in parts:
            raise ValueError(f"state blob holds no {self.name} state")
        return self.state_type().from_record(*parts[self.name])

    # ------------------------------------------------------------------ persistence of the baseline
    def params(self) -> dict[str, Any]:
        """The constructor keywords (JSON-able), for saving: the attributes named in ``PARAMS``."""
        return {name: getattr(self, name) for name in self.PARAMS}

    def baseline(self) -> B:
        """The fitted baseline, for saving."""
        return self._baseline


# ---------------------------------------------------------------------- validation helpers
def check_batch(
    X: np.ndarray, outputs: np.ndarray | None, labels: np.ndarray, n_features: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Shapes checked, dtypes fixed, non-finite inputs zeroed and extreme ones clipped to ``INPUT_ABS_MAX``
    (a client must neither crash the detector nor push a signal's state to NaN or infinity)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"X must be [n, {n_features}], got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
    if X.size and float(np.abs(X).max()) > INPUT_ABS_MAX:
        X = np.clip(X, -INPUT_ABS_MAX, INPUT_ABS_MAX)
    labels = np.asarray(labels).reshape(-1).astype(np.int64, copy=False)
    if labels.shape[0] != X.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows, X has {X.shape[0]}")
    if outputs is not None:
        outputs = np.asarray(outputs, dtype=np.float64)
        if outputs.ndim != 2 or outputs.shape != (X.shape[0], n_classes):
            raise ValueError(f"outputs must be [{X.shape[0]}, {n_classes}] or None, got shape {outputs.shape}")
        if not np.all(np.isfinite(outputs)):
            outputs = np.nan_to_num(outputs, nan=0.0, posinf=1.0, neginf=0.0)
    labels = np.where((labels >= 0) & (labels < n_classes), labels, -1)
    return X, outputs, labels
