"""The shape every red-team attack shares: an oracle callable in, a stream of ``Progress`` out.

An *oracle* is any callable ``query(X) -> answers`` with ``X`` of shape [n, d]. It answers either
probabilities [n, k] (columns are the classes 0..k-1) or labels [n] (ints in 0..k-1). Tests pass an
in-process scikit-learn model; a benchmark passes a function that sends ``X`` through the gateway. The
attacks hold no HTTP code: whatever the oracle raises (a 403 once the detector blocks the client, say)
propagates out of the attack unchanged.

An attack is driven step by step: ``steps(oracle)`` is a generator that sends one batch of queries each
time it is resumed and then yields a ``Progress`` holding the number of queries spent so far and the
copy the attacker could deploy at that moment. A benchmark can therefore interleave the attack with a
detector, a clock or a policy change and measure the copy's fidelity at any query count (for example at
the first alert). ``run(oracle, on_progress)`` drains the generator for callers that need no control.

Invariants the benchmarks may rely on:
- ``queries_used`` counts every row sent to the oracle and never exceeds the attack's ``budget``.
- The copy in a ``Progress`` is a snapshot: later steps never mutate it, so it can be kept and measured
  after the attack moved on.
- Every random choice comes from ``numpy.random.default_rng(seed)`` (and a seeded torch generator),
  created afresh in each ``steps()`` call: the same seed and the same oracle give the same queries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from audit.suspects.base import BudgetExceeded  # one error for "more queries than the budget"
from audit.validation import positive_int

Oracle = Callable[[np.ndarray], np.ndarray]
AnswerKind = Literal["labels", "probabilities"]


class OracleError(ValueError):
    """The oracle answered in a shape the attack cannot use (e.g. labels to a probability attack)."""


class Copy(Protocol):
    """A stolen copy: predicts labels (ints 0..k-1) and class probabilities [n, k] for raw inputs."""

    n_classes: int

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: == on array fields would be ambiguous
class Domain:
    """The input box [low, high] per feature that the attacker believes the API accepts."""

    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float64).reshape(-1)
        high = np.asarray(self.high, dtype=np.float64).reshape(-1)
        if low.shape != high.shape or low.size == 0:
            raise ValueError(f"low and high must be non-empty and of equal length, got {low.size} and {high.size}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("domain bounds must be finite")
        if np.any(high <= low):
            raise ValueError("every feature needs high > low")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def box(cls, low: float, high: float, n_features: int) -> Domain:
        """The same bounds on every feature, e.g. ``Domain.box(0, 16, 64)`` for sklearn digits."""
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        return cls(np.full(n_features, float(low)), np.full(n_features, float(high)))

    @classmethod
    def of(cls, X: np.ndarray) -> Domain:
        """The per-feature range of data the attacker holds (a constant feature gets a width of 1)."""
        X = np.asarray(X, dtype=np.float64)
        low, high = X.min(axis=0), X.max(axis=0)
        return cls(low, np.where(high > low, high, low + 1.0))

    @property
    def n_features(self) -> int:
        return int(self.low.size)

    @property
    def width(self) -> np.ndarray:
        return self.high - self.low

    def uniform(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=(n, self.n_features))

    def clip(self, X: np.ndarray) -> np.ndarray:
        return np.clip(X, self.low, self.high)


@dataclass(frozen=True, slots=True, eq=False)
class Progress:
    """What the attacker holds after one more batch of queries.

    ``queries``/``answers`` are the rows sent since the previous ``Progress`` and their answers (empty
    for a step that sent none), so an offline benchmark can feed them straight to a detector without a
    gateway in between.
    ``info`` carries attack-specific numbers (round, leaves found, weights recovered, ...).
    """

    queries_used: int
    copy: Copy
    phase: str
    queries: np.ndarray
    answers: np.ndarray
    info: dict[str, float] = field(default_factory=dict)


class QuerySession:
    """One run's connection to the oracle: enforces the budget and normalises the answers."""

    def __init__(self, oracle: Oracle, *, budget: int, needs: AnswerKind, n_classes: int | None) -> None:
        self._oracle = oracle
        self.budget = budget
        self.needs = needs
        self.n_classes = n_classes
        self.used = 0
        self._sent: list[np.ndarray] = []  # batches since the last progress report
        self._got: list[np.ndarray] = []
        self._n_features = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def ask(self, X: np.ndarray) -> np.ndarray:
        """Send ``X``; labels [n] (int64) for label attacks, probabilities [n, k] (float64) otherwise."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or not np.all(np.isfinite(X)):
            raise ValueError(f"queries must be a finite [n, d] array, got shape {X.shape}")
        if len(X) > self.remaining:
            raise BudgetExceeded(f"{len(X)} queries requested, {self.remaining} left of {self.budget}")
        raw = np.asarray(self._oracle(X))
        self.used += len(X)
        answers = self._normalise(raw, len(X))
        self._sent.append(X)
        self._got.append(answers)
        self._n_features = X.shape[1]
        return answers

    def _normalise(self, raw: np.ndarray, n: int) -> np.ndarray:
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]  # a label column, as some JSON encoders return it
        if raw.shape[0] != n:
            raise OracleError(f"the oracle answered {raw.shape[0]} rows for {n} queries")
        if raw.ndim == 2:
            probs = raw.astype(np.float64)
            if not np.all(np.isfinite(probs)) or np.any(probs < 0):
                raise OracleError("probabilities must be finite and non-negative")
            if self.n_classes is not None and probs.shape[1] != self.n_classes:
                raise OracleError(f"expected {self.n_classes} probability columns, got {probs.shape[1]}")
            # A label attack needs only the argmax; throwing the confidences away is the attacker's choice.
            return probs if self.needs == "probabilities" else probs.argmax(axis=1).astype(np.int64)
        if raw.ndim != 1:
            raise OracleError(f"answers must be labels [n] or probabilities [n, k], got shape {raw.shape}")
        if self.needs == "probabilities":
            raise OracleError("this attack needs probabilities but the oracle returned labels (label-only policy?)")
        labels = raw.astype(np.int64)
        if not np.array_equal(labels, raw):
            raise OracleError("labels must be integers")
        if np.any(labels < 0) or (self.n_classes is not None and np.any(labels >= self.n_classes)):
            raise OracleError(f"labels must lie in 0..{self.n_classes}-1")
        return labels

    def progress(self, copy: Copy, phase: str, **info: float) -> Progress:
        """A ``Progress`` holding every query sent since the previous one (none for a step without queries)."""
        if self._sent:
            X, answers = np.vstack(self._sent), np.concatenate(self._got)
        else:
            X, answers = np.empty((0, self._n_features)), np.empty(0)
        self._sent, self._got = [], []
        return Progress(self.used, copy, phase, X, answers, dict(info))


class Attack(ABC):
    """Base class: validated keywords in the constructor, ``steps(oracle)`` yields ``Progress``."""

    needs: AnswerKind

    def __init__(self, *, budget: int, seed: int = 0, n_classes: int | None = None) -> None:
        positive_int("budget", budget)
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if n_classes is not None:
            positive_int("n_classes", n_classes, minimum=2)
        self.budget = int(budget)
        self.seed = int(seed)
        self.n_classes = n_classes

    def steps(self, oracle: Oracle) -> Iterator[Progress]:
        """Yield after every batch of queries; stop when the attack is done or the budget is spent."""
        session = QuerySession(oracle, budget=self.budget, needs=self.needs, n_classes=self.n_classes)
        yield from self._steps(session, np.random.default_rng(self.seed))

    def run(self, oracle: Oracle, on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Drive the attack to its end; returns the last ``Progress``."""
        last: Progress | None = None
        for last in self.steps(oracle):
            if on_progress is not None:
                on_progress(last)
        if last is None:
            raise RuntimeError(f"{type(self).__name__} yielded no progress")
        return last

    @abstractmethod
    def _steps(self, session: QuerySession, rng: np.random.Generator) -> Iterator[Progress]: ...


def natural_points(name: str, X: np.ndarray, domain: Domain | None = None, *, minimum: int = 1) -> np.ndarray:
    """Validate an attacker-held data set: finite [n, d] with n >= minimum (and d matching the domain)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < minimum or not np.all(np.isfinite(X)):
        raise ValueError(f"{name} must be a finite [n, d] array with n >= {minimum}, got shape {X.shape}")
    if domain is not None and X.shape[1] != domain.n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, the domain {domain.n_features}")
    return X
