"""The one interface every audit method queries a suspect model through.

A suspect answers "labels for these inputs" and, when it exposes them, "probabilities for these inputs".
Every row sent counts as one query against an optional budget, so a report can state exactly how many
queries an audit spent and an audit cannot overrun what the operator allowed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np


class BudgetExceeded(RuntimeError):
    """The audit asked for more queries than the suspect's budget allows."""


class SuspectError(ValueError):
    """The suspect could not be loaded or did not answer as its declared format promises."""


class Suspect(ABC):
    """A model under audit. Subclasses implement ``_labels`` (and ``_probabilities`` when available)."""

    def __init__(self, *, budget: int | None = None, identity: dict[str, str] | None = None) -> None:
        if budget is not None and budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.budget = budget
        self.queries_used = 0
        # What the report names as the suspect: {"kind": "file", "sha256": ...} or {"kind": "endpoint", ...}
        self.identity: dict[str, str] = identity or {"kind": "in-memory"}

    def _charge(self, n_rows: int) -> None:
        if self.budget is not None and self.queries_used + n_rows > self.budget:
            raise BudgetExceeded(
                f"{n_rows} more queries would exceed the budget of {self.budget} ({self.queries_used} used)"
            )
        self.queries_used += n_rows

    def labels(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        self._charge(len(x))
        return np.asarray(self._labels(x)).astype(np.int64).reshape(-1)

    def probabilities(self, x: np.ndarray) -> np.ndarray | None:
        """Class probabilities, or None when the suspect only gives labels (nothing is charged then)."""
        if not self.has_probabilities:
            return None
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        self._charge(len(x))
        return np.asarray(self._probabilities(x), dtype=np.float64)

    @property
    def has_probabilities(self) -> bool:
        return False

    @abstractmethod
    def _labels(self, x: np.ndarray) -> np.ndarray: ...

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class CallableSuspect(Suspect):
    """A suspect backed by Python callables: in-process models in tests and benchmarks."""

    def __init__(
        self,
        predict_labels: Callable[[np.ndarray], np.ndarray],
        predict_proba: Callable[[np.ndarray], np.ndarray] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._predict_labels = predict_labels
        self._predict_proba = predict_proba

    @property
    def has_probabilities(self) -> bool:
        return self._predict_proba is not None

    def _labels(self, x: np.ndarray) -> np.ndarray:
        return self._predict_labels(x)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        assert self._predict_proba is not None
        return self._predict_proba(x)
