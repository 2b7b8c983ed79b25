"""Fidelity of a stolen copy f̂ to the victim f, as Tramèr et al. (USENIX Security 2016) measure it.

- ``1 - R_test``: the fraction of held-out test inputs on which f̂ and f predict the same label.
- ``1 - R_unif``: the same on inputs drawn uniformly from the input domain. Tramèr et al. report both
  because a copy can match the victim on natural data and not elsewhere, or the reverse: an equation-solving
  copy trained on uniform queries is good on both, a Knockoff copy trained on natural data mostly on R_test.
- Total variation distance ``½·Σ_i |f(x)_i − f̂(x)_i|`` between probability vectors, averaged over inputs
  (Tramèr et al. use it for equation-solving attacks that recover confidences).

Predictors are callables returning labels [n] or probabilities [n, k] (labels are then the argmax, so
columns must be the classes 0..k-1). These functions query the victim directly: the benchmark measures,
it does not spend the attacker's budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from services.demo.redteam.base import Domain

Predictor = Callable[[np.ndarray], np.ndarray]

# 2,000 uniform points put the standard error of 1 − R_unif at most 0.011 (√(0.25/2000)).
DEFAULT_N_UNIFORM = 2000


def as_labels(answers: np.ndarray) -> np.ndarray:
    answers = np.asarray(answers)
    if answers.ndim == 2 and answers.shape[1] > 1:
        return answers.argmax(axis=1).astype(np.int64)
    return answers.reshape(-1).astype(np.int64)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose labels agree; either side may be labels or probabilities."""
    la, lb = as_labels(a), as_labels(b)
    if la.shape != lb.shape:
        raise ValueError(f"cannot compare {la.shape[0]} answers with {lb.shape[0]}")
    if la.size == 0:
        raise ValueError("no answers to compare")
    return float(np.mean(la == lb))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of ½·Σ|p − q|; both must be probabilities [n, k] with the same k."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.ndim != 2 or p.shape != q.shape:
        raise ValueError(f"total variation needs two [n, k] arrays of equal shape, got {p.shape} and {q.shape}")
    return float(np.mean(0.5 * np.abs(p - q).sum(axis=1)))


def heldout_agreement(copy: Predictor, victim: Predictor, X_test: np.ndarray) -> float:
    """1 − R_test (not named ``test_*``: pytest would collect it from any test module importing it)."""
    return agreement(copy(X_test), victim(X_test))


def uniform_agreement(
    copy: Predictor, victim: Predictor, domain: Domain, *, n: int = DEFAULT_N_UNIFORM, seed: int = 0
) -> float:
    """1 − R_unif on ``n`` points drawn uniformly from ``domain`` (seeded: the same points every call)."""
    X = domain.uniform(np.random.default_rng(seed), n)
    return agreement(copy(X), victim(X))


@dataclass(frozen=True, slots=True)
class Fidelity:
    test_agreement: float
    uniform_agreement: float
    test_tvd: float | None  # None when either side gives labels only

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def measure(
    copy: Predictor,
    victim: Predictor,
    X_test: np.ndarray,
    domain: Domain,
    *,
    n_uniform: int = DEFAULT_N_UNIFORM,
    seed: int = 0,
) -> Fidelity:
    """All three measures; pass ``copy.predict_proba`` and ``victim.predict_proba`` to get the TVD."""
    a, b = np.asarray(copy(X_test)), np.asarray(victim(X_test))
    tvd = total_variation(a, b) if a.ndim == 2 and a.shape == b.shape else None
    return Fidelity(
        test_agreement=agreement(a, b),
        uniform_agreement=uniform_agreement(copy, victim, domain, n=n_uniform, seed=seed),
        test_tvd=tvd,
    )
