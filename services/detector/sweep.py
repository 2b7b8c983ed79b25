"""Sweep patterns: axis-aligned and collinear steps between consecutive queries, coverage, volume.

Several extraction attacks walk the input space in ways natural traffic never does (docs/research.md,
"Detection: attack signatures" and "Detection: sweeps and path finding"): Tramèr et al.'s decision-tree path finding
(USENIX Security 2016) and Lowd & Meek's sign
witnesses and axis line searches (KDD 2005) change one feature at a time; Tramèr's line search and the
critical-point search of Jagielski et al. / Carlini et al. (USENIX Security 2020, CRYPTO 2020) step along
one line, so consecutive differences are parallel; Knockoff's diversity reward (Orekondy et al., CVPR
2019) and active-learning attacks aim for balanced class coverage; every attack needs volume (MITRE ATLAS
AML.M0004). Kesarwani et al. (arXiv:1711.07221) track feature-space coverage per user for the same reason.

Four sub-tests on the client's recent queries; the signal's p-value is their Bonferroni minimum,
p = min(1, m * min_i p_i) over the m sub-tests that apply:
1. *Sparse steps*: among the last ``window`` consecutive pairs that changed at all, those that changed
   in 1..``max_changed`` coordinates (a coordinate "changes" when it moves by more than ``change_tol``
   times its benign standard deviation). Exact one-sided binomial test, H0: rate <= the benign rate of
   consecutive reference rows in random order (never below the rule-of-three bound 3/n).
2. *Collinear steps*: pairs whose difference is parallel (|cos| >= ``collinear_cos``) to the previous
   pair's difference without undoing it (A -> B -> A' is a benign return to an earlier input, parallel but
   not a line walk: the step counts only if |x_t - x_{t-2}| >= ``RETURN_FRACTION`` of the longer step).
   Same test against its own benign rate.
3. *Coverage*: the mean log-likelihood ratio of the window's answered classes under uniform coverage vs
   the benign label prior pi, L = mean_i ln(1 / (C pi[y_i])) (= KL(q||pi) - KL(q||uniform) for the
   client's class mix q). Large when the client asks about rare classes as often as common ones. Benign
   clients differ a lot in their class mix, so H0 is composite: "the client's rows are i.i.d. from some
   class mix with E[L] <= ``coverage_margin``" (0.1 nats: at least that much closer to uniform than to
   pi). p is Hoeffding's bound for the mean of n i.i.d. terms of range R = max - min of the per-class
   terms, exp(-2 n (L - margin)^2 / R^2), valid for every such mix. A client concentrated on a few common
   classes (the usual benign skew) scores low; one concentrated on a rare class scores high (a benign
   specialist can look like that). With a near-uniform prior (digits) L can never exceed the margin, so
   the test is vacuous (p = 1): balanced coverage is then exactly what benign traffic looks like.
4. *Volume* (only when fitted with benign clients' daily volumes and given timestamps): queries in the
   last day, an exponentially decayed count with a one-day time constant, against a log-normal fitted to
   the benign daily volumes; p = upper tail.

Where this differs from the papers: none of them defines these tests; they are our formalisation of the
attack signatures they describe. Exact repeats (no coordinate changed) are skipped, so retries neither
count as sweeps nor dilute them. Benign "what-if" exploration (a person editing one field and resubmitting)
is indistinguishable from a one-feature sweep and will score as one. Consecutive means in the order the
detector receives the rows; a few swapped pairs only change a few flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.validation import positive_float, positive_int, unit_interval
from services.detector.base import Record, Signal, SignalResult
from services.detector.stats import P_FLOOR, neg_log10, norm_sf, ring_push, rule_of_three_floor, window_binomial

DAY_S = 86_400.0
MAX_CHANGED = 2  # path finding and Lowd-Meek change exactly 1 coordinate; allow a paired feature too
COLLINEAR_COS = 0.99  # ~8 degrees; bisection and line sweeps are parallel to float precision
# A bisection step moves at least a third of the previous step away from x_{t-2}; a near-duplicate of the
# input two steps back (a benign "go back") comes within a few % of it.
RETURN_FRACTION = 0.1


@dataclass(slots=True)
class SweepBaseline(Record):
    change_tol: np.ndarray  # [d] a coordinate changed if it moved by more than this
    p_sparse: float  # benign rate of sparse steps among consecutive pairs
    p_collinear: float  # benign rate of collinear steps
    n_pairs_ref: int
    prior: np.ndarray  # [C] benign label prior
    volume_mu: float  # log-normal of benign daily volumes (volume_sd == 0: no volume baseline)
    volume_sd: float


@dataclass(slots=True)
class SweepState(Record):
    last_x: np.ndarray  # float64 [d]
    last_delta: np.ndarray  # float64 [d]
    sparse: np.ndarray  # uint8 [window]
    collinear: np.ndarray  # uint8 [window]
    labels: np.ndarray  # int16 [coverage_window]
    has_last: int = 0
    has_delta: int = 0
    pos: int = 0
    count: int = 0
    lpos: int = 0
    lcount: int = 0
    repeats: int = 0
    volume: float = 0.0  # decayed query count, ~ queries in the last day
    volume_ts: float = 0.0
    has_volume_ts: int = 0


class SweepSignal(Signal[SweepState, SweepBaseline]):
    name = "sweep"
    STATE = SweepState
    PARAMS = ("max_changed", "collinear_cos", "window", "coverage_window", "coverage_margin", "alpha", "min_pairs")

    def __init__(
        self,
        baseline: SweepBaseline,
        *,
        n_features: int,
        n_classes: int,
        max_changed: int = MAX_CHANGED,
        collinear_cos: float = COLLINEAR_COS,
        window: int = 200,  # pairs tested, ~4 evaluations of 50 queries
        coverage_window: int = 1000,  # labels tested: Hoeffding needs ~1000 rows to reach p ~ 1e-6 on a skewed prior
        coverage_margin: float = 0.1,  # nats; smaller effects are benign variation in class mix
        alpha: float = 1e-4,  # standalone level of ``fired``; the risk combiner sets the alert
        min_pairs: int = 20,  # below this the binomial tests are noise
    ) -> None:
        super().__init__(n_features=n_features, n_classes=n_classes)
        if not isinstance(baseline, SweepBaseline):
            raise ValueError("baseline must be a SweepBaseline (use SweepSignal.fit)")
        if baseline.change_tol.shape != (n_features,) or baseline.prior.shape != (n_classes,):
            raise ValueError("baseline shapes do not match n_features / n_classes")
        self.max_changed = positive_int("max_changed", max_changed)
        if self.max_changed >= n_features:
            raise ValueError(f"max_changed ({max_changed}) must be below n_features ({n_features})")
        self.collinear_cos = unit_interval("collinear_cos", collinear_cos)
        self.window = positive_int("window", window)
        self.coverage_window = positive_int("coverage_window", coverage_window)
        self.coverage_margin = positive_float("coverage_margin", coverage_margin)
        self.alpha = unit_interval("alpha", alpha)
        self.min_pairs = positive_int("min_pairs", min_pairs)
        if self.min_pairs > self.window:
            raise ValueError(f"min_pairs ({min_pairs}) cannot exceed window ({window})")
        self._baseline = baseline
        # Per-row LLR term of uniform coverage vs the prior, and its range for Hoeffding's bound.
        self._llr = np.log(1.0 / (n_classes * baseline.prior))
        self._llr_range = float(np.ptp(self._llr))

    @classmethod
    def fit(
        cls,
        X_ref: np.ndarray,
        labels_ref: np.ndarray,
        *,
        n_features: int,
        n_classes: int,
        change_tol: float = 0.01,  # 1 % of a feature's spread: float noise is not a change, any real edit is
        daily_volumes_ref: np.ndarray | None = None,
        permutations: int = 5,  # random orders of the reference rows for the pair rates (5 x n pairs)
        seed: int = 0,
        **params: Any,
    ) -> SweepSignal:
        """Fit the benign pair rates on random orders of ``X_ref``, the label prior on ``labels_ref``, and
        (optionally) a log-normal to benign clients' daily query counts."""
        X = np.asarray(X_ref, dtype=np.float64)
        y = np.asarray(labels_ref).reshape(-1).astype(np.int64)
        if X.ndim != 2 or X.shape[1] != n_features or y.shape[0] != X.shape[0] or len(X) < 20:
            raise ValueError(f"X_ref must be [n >= 20, {n_features}] with one label per row")
        frac = positive_float("change_tol", change_tol)
        std = X.std(axis=0)
        # Constant reference features (digits' corner pixels) get the median spread as their scale.
        scale = np.where(std > 0, std, float(np.median(std[std > 0])) if np.any(std > 0) else 1.0)
        tol = frac * scale
        rng = np.random.default_rng(seed)
        sparse_hits = collinear_hits = pairs = 0
        for _ in range(positive_int("permutations", permutations)):
            Z = X[rng.permutation(len(X))]
            D = np.diff(Z, axis=0)
            changed = (np.abs(D) > tol).sum(axis=1)
            D = D[changed > 0]
            changed = changed[changed > 0]
            sparse_hits += int(np.count_nonzero(changed <= params.get("max_changed", MAX_CHANGED)))
            collinear_hits += int(np.count_nonzero(_abs_cos(D) >= params.get("collinear_cos", COLLINEAR_COS)))
            pairs += len(D)
        counts = np.bincount(y[y >= 0], minlength=n_classes)[:n_classes].astype(np.float64)
        prior = (counts + 0.5) / (counts.sum() + 0.5 * n_classes)  # add-1/2: no class gets prior 0
        mu, sd = 0.0, 0.0
        if daily_volumes_ref is not None:
            v = np.asarray(daily_volumes_ref, dtype=np.float64).reshape(-1)
            v = v[v > 0]
            if v.size < 10:
                raise ValueError("daily_volumes_ref needs >= 10 positive per-client daily counts")
            mu, sd = float(np.log(v).mean()), max(float(np.log(v).std(ddof=1)), 0.1)
        base = SweepBaseline(
            change_tol=tol,
            p_sparse=rule_of_three_floor(sparse_hits, pairs),
            p_collinear=rule_of_three_floor(collinear_hits, pairs),
            n_pairs_ref=pairs,
            prior=prior,
            volume_mu=mu,
            volume_sd=sd,
        )
        return cls(base, n_features=n_features, n_classes=n_classes, **params)

    def layout(self) -> str:
        return f"{super().layout()},w={self.window},cw={self.coverage_window}"

    def new_state(self) -> SweepState:
        d = self.n_features
        return SweepState(
            last_x=np.zeros(d),
            last_delta=np.zeros(d),
            sparse=np.zeros(self.window, dtype=np.uint8),
            collinear=np.zeros(self.window, dtype=np.uint8),
            labels=np.zeros(self.coverage_window, dtype=np.int16),
        )

    @property
    def volume_enabled(self) -> bool:
        return self._baseline.volume_sd > 0.0

    def update(
        self,
        state: SweepState,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        *,
        now: float | None = None,
    ) -> None:
        n = X.shape[0]
        if n == 0:
            return
        Z = np.vstack([state.last_x[None, :], X]) if state.has_last else X
        D = np.diff(Z, axis=0)
        changed = (np.abs(D) > self._baseline.change_tol).sum(axis=1)
        moved = changed > 0
        state.repeats += int(D.shape[0] - np.count_nonzero(moved))
        D = D[moved]
        if D.shape[0]:
            sparse = (changed[moved] <= self.max_changed).astype(np.uint8)
            chain = np.vstack([state.last_delta[None, :], D]) if state.has_delta else D
            cos = _abs_cos(chain)  # one per consecutive pair of steps in ``chain``
            collinear = (cos >= self.collinear_cos).astype(np.uint8)
            if not state.has_delta:  # the first step ever has no predecessor to be parallel to
                collinear = np.concatenate([[0], collinear]).astype(np.uint8)
            pos = state.pos
            state.pos = ring_push(state.sparse, pos, sparse)
            ring_push(state.collinear, pos, collinear)
            state.count += D.shape[0]
            state.last_delta[:] = D[-1]
            state.has_delta = 1
        state.last_x[:] = X[-1]
        state.has_last = 1
        known = labels[labels >= 0].astype(np.int16)
        state.lpos = ring_push(state.labels, state.lpos, known)
        state.lcount += known.size
        if now is not None and math.isfinite(now):
            if state.has_volume_ts:
                state.volume *= math.exp(-max(now - state.volume_ts, 0.0) / DAY_S)
            state.volume += n
            state.volume_ts = max(now, state.volume_ts) if state.has_volume_ts else now
            state.has_volume_ts = 1

    def coverage_p(self, state: SweepState) -> tuple[float, float, int]:
        """(p, LLR per row, n) of the coverage test on the label window."""
        n = min(state.lcount, self.coverage_window)
        if n == 0:
            return 1.0, 0.0, n
        mean = float(self._llr[state.labels[:n]].mean())
        excess = mean - self.coverage_margin
        if excess <= 0 or self._llr_range <= 0:
            return 1.0, mean, n
        bound = math.exp(-2.0 * n * excess * excess / (self._llr_range * self._llr_range))
        return max(bound, P_FLOOR), mean, n

    def evaluate(self, state: SweepState, *, now: float | None = None) -> SignalResult:
        b = self._baseline
        k_s, n_pairs, p_s, _ = window_binomial(state.sparse, state.count, b.p_sparse, self.alpha)
        k_c, _, p_c, _ = window_binomial(state.collinear, state.count, b.p_collinear, self.alpha)
        p_cov, llr, n_labels = self.coverage_p(state)
        evidence: dict[str, float | int] = {
            "window_pairs": n_pairs,
            "sparse_steps": k_s,
            "sparse_benign_rate": b.p_sparse,
            "sparse_p": p_s,
            "collinear_steps": k_c,
            "collinear_benign_rate": b.p_collinear,
            "collinear_p": p_c,
            "coverage_labels": n_labels,
            "coverage_llr_per_query": llr,
            "coverage_p": p_cov,
            "repeats_skipped": state.repeats,
        }
        ps: list[float] = [p_cov]
        if n_pairs >= self.min_pairs:
            ps += [p_s, p_c]
        if self.volume_enabled and state.has_volume_ts:
            age = max((now if now is not None else state.volume_ts) - state.volume_ts, 0.0)
            vol = state.volume * math.exp(-age / DAY_S)
            p_v = norm_sf((math.log(max(vol, 1.0)) - b.volume_mu) / b.volume_sd)
            evidence["volume_last_day"] = vol
            evidence["volume_p"] = p_v
            ps.append(p_v)
        m = len(ps)
        p = min(1.0, m * min(ps))
        test = (
            f"Bonferroni min of {m} sub-tests (binomial sparse/collinear steps, Hoeffding coverage, lognormal volume)"
        )
        return SignalResult(
            self.name,
            statistic=neg_log10(p),
            threshold=neg_log10(self.alpha),
            p_value=p,
            fired=p <= self.alpha,
            n=n_pairs,
            alpha=self.alpha,
            test=test,
            evidence=evidence,
        )


def _abs_cos(D: np.ndarray) -> np.ndarray:
    """|cos| between each row of D and the next (len(D) - 1 values); 0 where the second step undoes the first.

    A step that brings the walk back to within ``RETURN_FRACTION`` of the point two steps earlier is a
    return, not a line walk, and gets 0.
    """
    if D.shape[0] < 2:
        return np.zeros(0)
    norms = np.linalg.norm(D, axis=1)
    dots = np.einsum("ij,ij->i", D[1:], D[:-1])
    denom = norms[1:] * norms[:-1]
    cos = np.where(denom > 0, np.abs(dots) / np.where(denom > 0, denom, 1.0), 0.0)
    back = np.linalg.norm(D[1:] + D[:-1], axis=1)  # |x_t - x_{t-2}|
    returned = back < RETURN_FRACTION * np.maximum(norms[1:], norms[:-1])
    return np.where(returned, 0.0, cos)
