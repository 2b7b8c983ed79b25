"""Lowd–Meek extraction of a binary linear classifier from labels only.

Lowd & Meek, "Adversarial Learning", KDD 2005 (their ACRE learner for linear classifiers), as Tramèr et
al. (USENIX Security 2016) use it as the label-only baseline. Given one positive and one negative
input, bisection along the segment between them finds a point x₀ just on the negative side of the
boundary ``w·x + b = 0``. Moving x₀ along feature axis i crosses the boundary after a distance
``t_i = c / |w_i|`` (c = −(w·x₀ + b) > 0, the same for every axis), in the direction sign(w_i). A line
search per axis finds t_i, so ``w ∝ sign_i / t_i``; with the scale fixed by c = 1, ``b = −1 − w·x₀``.
The weights come out up to a positive factor, which is all a label-only attacker can ever learn.

The target is binary: ``positive_label`` against every other label. Against a multiclass victim this is
one-vs-rest, which is only a half-space when the victim is a binary or one-vs-rest linear model.

Where this implementation differs:
- Lowd & Meek (and Steal-ML's port) search one axis after another with exponentially growing steps from
  0.01. We search all axes at once: each oracle call holds one query per unresolved axis, so a 64-feature
  model costs ~20 round trips instead of ~1,300. The query *set* keeps the attack's signature (axis-aligned
  moves from one boundary point, extreme coordinates, boundary-hugging).
- Axis i is first probed at ±``max_step``·width_i (Steal-ML: ±1/δ = ±10⁴); no flip either way means
  w_i ≈ 0. A flipping axis is bracketed by geometric bisection (scale-free: t_i may lie anywhere between
  1e-9 and 1e4 feature widths) and then refined by ordinary bisection to relative precision ``tolerance``.
- Sign witnesses from flipping single coordinates of the positive point are not needed: the ± probes
  give every weight's sign directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from audit.validation import positive_float, positive_int
from services.demo.redteam.base import (
    Attack,
    Domain,
    Progress,
    QuerySession,
    natural_points,
)
from services.demo.redteam.copies import ConstantCopy, HalfspaceCopy

# The smallest crossing distance the geometric search considers, in feature widths: far below the
# boundary precision any float32 transport can express for inputs of order 1-1,000.
MIN_STEP = 1e-9


class LowdMeek(Attack):
    needs = "labels"

    def __init__(
        self,
        *,
        domain: Domain,
        n_classes: int,
        positive_label: int,
        budget: int,
        seed_points: np.ndarray | None = None,
        init_batch: int = 16,
        epsilon: float = 1e-3,
        tolerance: float = 1e-3,
        max_step: float = 1e4,
        seed: int = 0,
    ) -> None:
        """
        ``seed_points``: natural inputs the attacker holds, queried (in random order, ``init_batch`` at a
        time) until one positive and one negative turn up; without them, uniform random inputs are used.
        ``epsilon``: the boundary bisection stops when the bracket is this fraction of the segment. 1e-3
        keeps the crossing distances t_i well above float32 resolution (~1e-7 relative) should the
        gateway transport float32, while costing only 10 queries.
        ``tolerance``: relative precision of each t_i, hence of each recovered weight ratio.
        ``max_step``: the ± probe distance in feature widths (Steal-ML's 1/δ = 10⁴).
        """
        super().__init__(budget=budget, seed=seed, n_classes=n_classes)
        if not isinstance(domain, Domain):
            raise ValueError("domain must be a Domain")
        assert self.n_classes is not None
        if not 0 <= positive_label < self.n_classes:
            raise ValueError(f"positive_label must be in 0..{self.n_classes - 1}, got {positive_label}")
        self.domain = domain
        self.positive_label = int(positive_label)
        self.seed_points = None if seed_points is None else natural_points("seed_points", seed_points, domain)
        self.init_batch = positive_int("init_batch", init_batch)
        self.epsilon = positive_float("epsilon", epsilon, maximum=0.5)
        self.tolerance = positive_float("tolerance", tolerance, maximum=0.5)
        self.max_step = positive_float("max_step", max_step)

    def _steps(self, session: QuerySession, rng: np.random.Generator) -> Iterator[Progress]:
        assert self.n_classes is not None
        k, pos = self.n_classes, self.positive_label
        seen: list[np.ndarray] = []

        def baseline() -> ConstantCopy:
            return ConstantCopy.most_frequent(np.concatenate(seen) if seen else np.zeros(0, np.int64), k)

        # 1. One positive and one negative input.
        x_pos = x_neg = None
        order = rng.permutation(len(self.seed_points)) if self.seed_points is not None else np.zeros(0, int)
        while (x_pos is None or x_neg is None) and session.remaining > 0:
            n = min(self.init_batch, session.remaining)
            if len(order):
                assert self.seed_points is not None
                X, order = self.seed_points[order[:n]], order[n:]
            else:
                X = self.domain.uniform(rng, n)
            y = session.ask(X)
            seen.append(y)
            if x_pos is None and np.any(y == pos):
                x_pos = X[np.argmax(y == pos)]
            if x_neg is None and np.any(y != pos):
                x_neg = X[np.argmax(y != pos)]
            yield session.progress(baseline(), "witness")
        if x_pos is None or x_neg is None:
            return
        labels = np.concatenate(seen)
        negatives = labels[labels != pos]
        negative_label = int(np.bincount(negatives).argmax())

        # 2. Bisection on the segment: x_neg + lo·(x_pos − x_neg) stays negative, x_neg + hi·(…) positive.
        lo, hi = 0.0, 1.0
        while hi - lo > self.epsilon and session.remaining > 0:
            half = 0.5 * (lo + hi)
            if session.ask((x_neg + half * (x_pos - x_neg))[None, :])[0] == pos:
                hi = half
            else:
                lo = half
            yield session.progress(baseline(), "boundary", bracket=hi - lo)
        x0 = x_neg + lo * (x_pos - x_neg)

        # 3. Sign of every weight from ± probes far along each axis.
        d = self.domain.n_features
        far = self.max_step * self.domain.width
        sign = np.zeros(d)
        for s in (1.0, -1.0):
            todo = np.flatnonzero(sign == 0)[: session.remaining]
            if len(todo) == 0:
                break
            flipped = session.ask(self._moved(x0, todo, s * far[todo])) == pos
            sign[todo[flipped]] = s
            yield session.progress(baseline(), "signs", axes=float(len(todo)))

        # 4. Crossing distance t_i per flipping axis: bracket [low_t, high_t], geometric then linear.
        active = np.flatnonzero(sign != 0)
        low_t = MIN_STEP * self.domain.width[active]
        high_t = far[active].copy()

        def copy() -> HalfspaceCopy:
            # Geometric midpoint while the bracket spans orders of magnitude, arithmetic once it is tight.
            t = np.where(high_t > 2 * low_t, np.sqrt(low_t * high_t), 0.5 * (low_t + high_t))
            w = np.zeros(d)
            w[active] = sign[active] / t
            return HalfspaceCopy(w, -1.0 - w @ x0, positive_label=pos, negative_label=negative_label, n_classes=k)

        def unresolved() -> np.ndarray:
            return (high_t > 2 * low_t) | (high_t - low_t > self.tolerance * high_t)

        while session.remaining > 0 and unresolved().any():
            geometric = high_t > 2 * low_t
            idx = np.flatnonzero(unresolved())[: session.remaining]
            mid = np.where(geometric[idx], np.sqrt(low_t[idx] * high_t[idx]), 0.5 * (low_t[idx] + high_t[idx]))
            flipped = session.ask(self._moved(x0, active[idx], sign[active[idx]] * mid)) == pos
            high_t[idx[flipped]] = mid[flipped]
            low_t[idx[~flipped]] = mid[~flipped]
            yield session.progress(copy(), "line-search", unresolved=float(len(idx)))
        # An empty step that marks the end, so a caller can tell a finished attack from a budget cut-off.
        yield session.progress(copy(), "budget" if unresolved().any() else "done", weights=float(len(active)))

    @staticmethod
    def _moved(x0: np.ndarray, axes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        X = np.repeat(x0[None, :], len(axes), axis=0)
        X[np.arange(len(axes)), axes] += steps
        return X
