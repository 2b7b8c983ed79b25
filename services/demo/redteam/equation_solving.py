"""Equation-solving extraction of a softmax / logistic-regression model from its probabilities.

Tramèr, Zhang, Juels, Reiter, Ristenpart, "Stealing Machine Learning Models via Prediction APIs",
USENIX Security 2016, equation-solving attacks. For a softmax model ``f(x)_j ∝ exp(w_j·x + b_j)`` every
answered query gives, for each pair of classes, one linear equation
``log f(x)_j − log f(x)_r = (w_j − w_r)·x + (b_j − b_r)``.
With uniform random queries, about d + 1 queries with full-precision probabilities pin the parameters down
exactly (the paper: 100 % 1 − R_test and 1 − R_unif on its softmax models with as many queries as
unknowns, 99.96 % with half of them).

Where this implementation differs:
- The paper minimises the cross-entropy between the model and the observed probabilities (convex for
  softmax). We solve the logit differences by linear least squares instead, which is exact for a softmax
  victim and needs no optimiser; the paper's equations for binary LR are the k = 2 case.
- Class 0's parameters are fixed at zero (softmax is invariant to adding one vector to every class), so
  the copy equals the victim up to that invariance.
- Each row's reference class r is its most probable class, and classes whose probability is below
  ``min_probability`` are skipped: an underflowed probability carries no information about its logit.
  Rounded probabilities (a gateway policy, the paper's countermeasure) therefore cost the attack
  equations: rounded to 4 decimals, uniform queries on digits keep ~0.6 equations per query instead of 9,
  and 300 queries give 0.26 test agreement instead of 1.0.
- Inputs are scaled to [0, 1] by the domain before solving, so the normal equations stay well conditioned;
  the copy's weights are mapped back to raw units.
- Before enough equations exist, ``numpy.linalg.lstsq`` returns the minimum-norm solution, so there is a
  (poor) copy from the first batch on.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from audit.validation import positive_float, positive_int
from services.demo.redteam.base import Attack, Domain, Progress, QuerySession
from services.demo.redteam.copies import LinearCopy


class EquationSolving(Attack):
    needs = "probabilities"

    def __init__(
        self,
        *,
        domain: Domain,
        budget: int,
        batch_size: int = 50,
        min_probability: float = 1e-30,
        seed: int = 0,
    ) -> None:
        """
        ``batch_size``: uniform queries per oracle call; the copy is re-solved after each.
        ``min_probability``: smaller probabilities are treated as underflowed. 1e-30 keeps every value a
        float32 transport represents with full relative precision (its normal range ends at 1.2e-38).
        """
        super().__init__(budget=budget, seed=seed)
        if not isinstance(domain, Domain):
            raise ValueError("domain must be a Domain")
        self.domain = domain
        self.batch_size = positive_int("batch_size", batch_size)
        self.min_probability = positive_float("min_probability", min_probability, maximum=0.5)

    def _steps(self, session: QuerySession, rng: np.random.Generator) -> Iterator[Progress]:
        d = self.domain.n_features
        gram: np.ndarray | None = None
        rhs: np.ndarray | None = None
        n_equations = 0
        while session.remaining > 0:
            X = self.domain.uniform(rng, min(self.batch_size, session.remaining))
            P = session.ask(X)
            k = P.shape[1]
            if gram is None or rhs is None:
                gram, rhs = np.zeros(((k - 1) * (d + 1),) * 2), np.zeros((k - 1) * (d + 1))
            A, t = self._equations(X, P)
            gram += A.T @ A
            rhs += A.T @ t
            n_equations += len(t)
            copy = self._solve(gram, rhs, k)
            yield session.progress(copy, "solve", equations=float(n_equations))

    def _equations(self, X: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``A θ = t`` with θ = [(w_1, b_1), …, (w_{k−1}, b_{k−1})] on [0, 1]-scaled inputs."""
        n, k = P.shape
        d = X.shape[1]
        Za = np.hstack([(X - self.domain.low) / self.domain.width, np.ones((n, 1))])
        ref = P.argmax(axis=1)
        with np.errstate(divide="ignore"):
            logp = np.log(P)
        rows, targets = [], []
        for j in range(k):
            ok = (P[:, j] >= self.min_probability) & (ref != j)
            if not ok.any():
                continue
            A = np.zeros((int(ok.sum()), (k - 1) * (d + 1)))
            if j > 0:  # class 0 is the zero reference: it has no columns
                A[:, (j - 1) * (d + 1) : j * (d + 1)] += Za[ok]
            for r in np.unique(ref[ok]):
                if r > 0:
                    sel = ref[ok] == r
                    A[sel, (r - 1) * (d + 1) : r * (d + 1)] -= Za[ok][sel]
            rows.append(A)
            targets.append(logp[ok, j] - logp[ok, ref[ok]])
        if not rows:
            return np.zeros((0, (k - 1) * (d + 1))), np.zeros(0)
        return np.vstack(rows), np.concatenate(targets)

    def _solve(self, gram: np.ndarray, rhs: np.ndarray, k: int) -> LinearCopy:
        d = self.domain.n_features
        theta = np.linalg.lstsq(gram, rhs, rcond=None)[0].reshape(k - 1, d + 1)
        theta = np.vstack([np.zeros((1, d + 1)), theta])
        W = theta[:, :-1] / self.domain.width
        return LinearCopy(W, theta[:, -1] - W @ self.domain.low)
