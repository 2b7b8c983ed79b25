"""A suspect scikit-learn model in skops format, loaded against an explicit allow-list of types.

skops (skops.io) stores an estimator as a zip of a JSON schema plus numpy arrays and rebuilds only the
types it is told to trust. Per docs/research.md "Ecosystem: model file formats", skops is *safer* than pickle, not
*safe*
(CVE-2025-54412 let untrusted ``operator`` calls through before 0.12), so: ``get_untrusted_types`` is read
first, every type it lists must be on our allow-list (``DEFAULT_TRUSTED_TYPES`` — the classifiers audits
support and the helper types they are made of — or the list the operator passes), and anything else is
refused with the list of offending types, before ``skops.io.loads`` runs. Loaders also run in the audit
worker, which is the isolation layer behind this check.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import skops.io as sio

from audit.suspects.base import Suspect, SuspectError

# Zip bombs: skops reads every array member whole. Arrays of a fitted scikit-learn model compress a few times
# at most (floats are close to random); a member over 1 MiB that deflates more than 100-fold is filler, and a
# model is refused past 1 GiB uncompressed (four times the default upload limit).
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_MIN_BYTES = 1024**2
MAX_UNCOMPRESSED_BYTES = 1024**3


def check_zip_members(data: bytes, max_uncompressed: int = MAX_UNCOMPRESSED_BYTES) -> None:
    """SuspectError when the declared member sizes make a zip bomb; nothing is decompressed."""
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise SuspectError(f"not a skops file: {exc}") from None
    total = 0
    for info in infos:
        total += info.file_size
        if total > max_uncompressed:
            raise SuspectError(f"skops file refused: its members expand to more than {max_uncompressed} bytes")
        if info.file_size > RATIO_CHECK_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(
            info.compress_size, 1
        ):
            raise SuspectError(
                f"skops file refused: member {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}"
                f"-fold ({info.compress_size} → {info.file_size} bytes), more than {MAX_COMPRESSION_RATIO}-fold"
            )

# Types skops does not trust by default but that plain classifiers are built from, plus the estimators
# themselves (skops trusts most sklearn estimators already; listing them keeps the policy explicit if a
# skops release narrows its defaults). Anything else — KD-trees, custom functions, operator.* — needs the
# operator to add it on purpose (MODELCUSTODY_EXTRA_TRUSTED_TYPES).
DEFAULT_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.naive_bayes.GaussianNB",
    "sklearn.svm._classes.SVC",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float32",
    "numpy.float64",
    "numpy.int32",
    "numpy.int64",
)


class SklearnSuspect(Suspect):
    """An in-process scikit-learn classifier. Labels are indices into ``classes_`` when those are not integers."""

    def __init__(self, estimator: Any, *, budget: int | None = None, identity: dict[str, str] | None = None) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise SuspectError(f"the loaded {type(estimator).__name__} has no predict method")
        super().__init__(budget=budget, identity=identity)
        self.estimator = estimator
        classes = getattr(estimator, "classes_", None)
        self._classes = np.asarray(classes) if classes is not None else None

    @property
    def has_probabilities(self) -> bool:
        # hasattr, not getattr(..., None): sklearn hides predict_proba with an AttributeError when the
        # estimator cannot provide it (SVC without probability=True).
        return hasattr(self.estimator, "predict_proba")

    def _labels(self, x: np.ndarray) -> np.ndarray:
        try:
            y = np.asarray(self.estimator.predict(x))
        except Exception as exc:  # sklearn raises ValueError, but a custom step may raise anything
            raise SuspectError(f"the model failed on the query: {type(exc).__name__}: {exc}") from None
        if y.dtype.kind in "iub":
            return y.astype(np.int64)
        if self._classes is not None:
            # String or float class labels: report the column index, matching predict_proba's order.
            index = {c: i for i, c in enumerate(self._classes.tolist())}
            try:
                return np.array([index[v] for v in y.tolist()], dtype=np.int64)
            except KeyError as exc:
                raise SuspectError(f"the model predicted {exc} which is not in its classes_") from None
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            return y.astype(np.int64)
        raise SuspectError(f"the model's predictions have dtype {y.dtype}, not class labels")

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.estimator.predict_proba(x), dtype=np.float64)
        except Exception as exc:  # as in _labels
            raise SuspectError(f"the model failed on the query: {type(exc).__name__}: {exc}") from None


def load_skops_suspect(
    data: bytes,
    *,
    trusted_types: Iterable[str] | None = None,
    budget: int | None = None,
    identity: dict[str, str] | None = None,
) -> SklearnSuspect:
    """Refuse any type outside the allow-list (default ``DEFAULT_TRUSTED_TYPES``), then load and wrap."""
    trusted = set(DEFAULT_TRUSTED_TYPES if trusted_types is None else trusted_types)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise SuspectError("not a skops file: not a zip archive")
    # Python's zipfile never inflates a member past its declared size, so checking declared sizes suffices;
    # the child process's memory limit (audit.suspects.isolated) is the backstop for everything else.
    check_zip_members(data)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops surfaces zip, JSON and schema errors with many exception types
        raise SuspectError(f"not a valid skops file: {type(exc).__name__}: {exc}") from None
    refused = sorted(set(untrusted) - trusted)
    if refused:
        raise SuspectError(
            f"skops file refused: it contains types that are not on the trusted list: {', '.join(refused)} "
            "(an operator can add reviewed types with MODELCUSTODY_EXTRA_TRUSTED_TYPES)"
        )
    try:
        # Only the types skops itself flagged and we allow-listed are passed as trusted.
        estimator = sio.loads(data, trusted=sorted(set(untrusted)))
    except Exception as exc:  # as above; also version mismatches between the dumping and our sklearn
        raise SuspectError(f"skops file could not be loaded: {type(exc).__name__}: {exc}") from None
    return SklearnSuspect(estimator, budget=budget, identity=identity)
