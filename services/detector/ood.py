"""Out-of-distribution / synthetic probing: how far a client's queries fall from the reference data.

Kariyappa & Qureshi (Adaptive Misinformation, CVPR 2020) observe that "all existing model stealing attacks
invariably query the target model with out-of-distribution inputs": Tramèr et al.'s equation solving and
line search draw uniform random vectors (USENIX Security 2016), Papernot et al.'s Jacobian augmentation
steps every pixel by ±λ (arXiv:1602.02697), Knockoff Nets and CopycatCNN query natural data from another
domain (CVPR 2019; IJCNN 2018). docs/research.md: "Detection: newer detectors",
"Detection: out-of-distribution queries", "Detection: attack signatures".

Statistic: for each query x, the local-density ratio ``rho(x) = d_k(x) / mean_j r_j`` where ``d_k(x)`` is the
distance to x's ``k``-th nearest point of the *index* (a subsample of the reference set), the mean runs
over those k index points j, and ``r_j`` is j's own k-th neighbour distance inside the index (the simplified
local outlier factor of Breunig et al., SIGMOD 2000). Dividing by the local scale makes sparse but normal
regions (on digits: the 1s and 2s) as unremarkable as dense ones. A query is *far* when rho exceeds
``radius``, the ``quantile`` (default 95 %) of rho over held-out reference rows that are not in the index.
``k_far`` = far queries in the client's last ``window`` queries. Test: exact one-sided test under a
per-class beta-binomial null (``stats.class_beta_binomial_test``), H0: a query answered with class c is far
independently at class c's benign rate, known up to its Beta posterior from the held-out rows; H1: more
often. ``fired`` when p <= ``alpha``.

Where this differs from the papers: Adaptive Misinformation scores OOD-ness by the model's max softmax
probability, FDINet/D-ADD by feature statistics inside the model; we need no access to the model's
internals and use a k-NN distance in input space, which works for any model but only as well as L2
distance in the raw input space reflects similarity (fine for pixels or standardised tabular features,
poor for features on wildly different scales — standardise upstream if that is the case). The
calibration rows must not be in the index, or benign distances would be underestimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from audit.validation import positive_float, positive_int, unit_interval
from services.detector.base import Record, Signal, SignalResult
from services.detector.population import Population
from services.detector.stats import cap_concentration, class_beta_binomial_test, class_rate_posterior, ring_push

# Features the k-NN distances are measured on: the raw inputs, each row standardised (mean 0, sd 1: blind to
# a global gain and bias), or each row's ranks scaled to [0, 1] (blind to any monotone intensity change:
# gain, bias and gamma). docs/detector.md compares them.
FEATURES = ("raw", "standardised", "rank")
_CHUNK = 1024  # rows per distance block: bounds the [rows, index] temporary to ~4 MB at 512 index points


@dataclass(slots=True)
class OODBaseline(Record):
    index: np.ndarray  # [S, d] reference points the distances are measured to
    index_sq: np.ndarray  # [S] their squared norms, cached
    index_scale: np.ndarray  # [S] each index point's own k-NN distance within the index (r_j)
    radius: float  # benign ``quantile`` of the density ratio rho
    p0: float  # benign share of rho above radius, pooled over classes
    rate_a: np.ndarray  # [C + 1] Beta posterior of the benign far rate per class (last: pooled)
    rate_b: np.ndarray
    quantile: float
    k: int
    n_calib: int
    benign_ratio_quantiles: np.ndarray  # rho at 50, 90, 99 % (evidence)
    # The "extreme" test (0 = off, baselines saved before it existed): rho above ``extreme`` x radius.
    extreme: float = 0.0
    xrate_a: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [C + 1] Beta posterior of the extreme rate
    xrate_b: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Which features the distances are measured on (``FEATURES``; 0 = raw inputs, baselines saved before it)
    features: int = 0


@dataclass(slots=True)
class OODState(Record):
    flags: np.ndarray  # uint8[window], 1 = far
    classes: np.ndarray  # int16[window], class of the answer (C = unknown)
    ratios: np.ndarray  # float32[window], rho / radius (evidence)
    pos: int = 0
    count: int = 0
    far_total: int = 0


class OODSignal(Signal[OODState, OODBaseline]):
    name = "ood"
    STATE = OODState
    PARAMS = ("window", "alpha", "min_queries")

    def __init__(
        self,
        baseline: OODBaseline,
        *,
        n_features: int,
        n_classes: int,
        window: int = 200,  # same window as the boundary signal: ~4 evaluations of 50 queries
        alpha: float = 1e-4,  # standalone level of ``fired``; the risk combiner sets the alert
        min_queries: int = 20,  # below this the binomial test is noise
    ) -> None:
        super().__init__(n_features=n_features, n_classes=n_classes)
        if not isinstance(baseline, OODBaseline):
            raise ValueError("baseline must be an OODBaseline (use OODSignal.fit)")
        if baseline.index.ndim != 2 or baseline.index.shape[1] != n_features:
            raise ValueError(f"baseline index must be [S, {n_features}], got {baseline.index.shape}")
        self.window = positive_int("window", window)
        self.alpha = unit_interval("alpha", alpha)
        self.min_queries = positive_int("min_queries", min_queries)
        if self.min_queries > self.window:
            raise ValueError(f"min_queries ({min_queries}) cannot exceed window ({window})")
        self._baseline = baseline

    @classmethod
    def fit(
        cls,
        X_index: np.ndarray,
        X_calib: np.ndarray,
        labels_calib: np.ndarray,
        *,
        n_features: int,
        n_classes: int,
        k: int = 5,  # k-th neighbour, not the 1st: one duplicate of a reference row does not make a query "near"
        quantile: float = 0.95,  # a 5 % benign far-rate: stable to estimate from a few hundred held-out rows
        index_size: int = 512,  # 512 x d distance block per query: ~3 us/query at d=64, and enough points per class
        prior_strength: float = 20.0,  # pseudo-rows pulling a class's rate to the pooled one (~ rows per class)
        # 1 benign row in 200 is "extreme": varied benign devices stay below it, synthetic probes (uniform noise,
        # Jacobian steps, photo patches) sit far above it, so a handful of them is evidence on its own.
        extreme_quantile: float = 0.995,
        features: str = "raw",
        seed: int = 0,
        **params: Any,
    ) -> OODSignal:
        """Index a subsample of ``X_index``; calibrate ``radius`` on ``X_calib`` (disjoint from the index)."""
        k = positive_int("k", k)
        q = unit_interval("quantile", quantile)
        size = positive_int("index_size", index_size)
        Xi = np.asarray(X_index, dtype=np.float64)
        Xc = np.asarray(X_calib, dtype=np.float64)
        if Xi.ndim != 2 or Xc.ndim != 2 or Xi.shape[1] != n_features or Xc.shape[1] != n_features:
            raise ValueError(f"X_index and X_calib must be [n, {n_features}]")
        yc = np.asarray(labels_calib).reshape(-1).astype(np.int64)
        if yc.shape[0] != Xc.shape[0]:
            raise ValueError("labels_calib needs one label per calibration row")
        if len(Xi) <= k:
            raise ValueError(f"the index needs more than k={k} rows, got {len(Xi)}")
        if len(Xc) < 20:
            raise ValueError(f"need >= 20 calibration rows, got {len(Xc)}")
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
        code = FEATURES.index(features)
        if len(Xi) > size:
            Xi = Xi[np.random.default_rng(seed).choice(len(Xi), size=size, replace=False)]
        Xi, Xc = row_features(Xi, code), row_features(Xc, code)
        index_sq = np.einsum("ij,ij->i", Xi, Xi)
        # r_j: the k-th neighbour of each index point among the *other* index points.
        scale, _ = _knn(Xi, Xi, index_sq, k + 1)
        scale = np.maximum(scale, 1e-12 + 1e-9 * float(np.median(scale)))  # duplicated reference rows give r_j = 0
        rho = _density_ratio(Xc, Xi, index_sq, scale, k)
        radius = float(np.quantile(rho, q))
        far = rho > radius
        p0 = max(float(np.mean(far)), 1.0 / len(rho))
        a, b = class_rate_posterior(far, yc, n_classes, positive_float("prior_strength", prior_strength))
        x_radius = max(float(np.quantile(rho, unit_interval("extreme_quantile", extreme_quantile))), radius)
        xa, xb = class_rate_posterior(rho > x_radius, yc, n_classes, prior_strength)
        base = OODBaseline(
            index=Xi,
            index_sq=index_sq,
            index_scale=scale,
            radius=radius,
            p0=p0,
            rate_a=a,
            rate_b=b,
            quantile=q,
            k=k,
            n_calib=len(Xc),
            benign_ratio_quantiles=np.quantile(rho, (0.5, 0.9, 0.99)),
            extreme=x_radius / radius,
            xrate_a=xa,
            xrate_b=xb,
            features=code,
        )
        return cls(base, n_features=n_features, n_classes=n_classes, **params)

    def dispersion_flags(self, X: np.ndarray, outputs: np.ndarray | None) -> dict[str, np.ndarray] | None:
        """The rows each of this signal's tests counts ("far", "extreme"), for the engine's dispersion fit."""
        ratio = self.scores(np.asarray(X, dtype=np.float64))
        out = {"far": ratio > 1.0}
        if self._baseline.extreme > 0:
            out["extreme"] = ratio > self._baseline.extreme
        return out

    def widen(self, kind: str, concentration: float) -> None:
        """Let benign clients differ: the ``kind`` test's per-class Beta nulls capped at ``concentration``.

        The engine estimates the concentration from simulated benign clients with capture variation
        (``stats.client_concentration``); without it the null is one rate for every client.
        """
        b = self._baseline
        c = positive_float("concentration", concentration)
        if kind == "far":
            b.rate_a, b.rate_b = cap_concentration(b.rate_a, b.rate_b, c)
        elif kind == "extreme" and b.extreme > 0:
            b.xrate_a, b.xrate_b = cap_concentration(b.xrate_a, b.xrate_b, c)

    def layout(self) -> str:
        return f"{super().layout()},w={self.window}"

    def new_state(self) -> OODState:
        w = self.window
        return OODState(
            flags=np.zeros(w, dtype=np.uint8),
            classes=np.zeros(w, dtype=np.int16),
            ratios=np.zeros(w, dtype=np.float32),
        )

    @property
    def baseline_features(self) -> str:
        """The feature space the distances are measured in (``FEATURES``)."""
        return FEATURES[self._baseline.features]

    def features(self, X: np.ndarray) -> np.ndarray:
        """The rows as this signal measures them (what a ``Population`` of its model keeps)."""
        return row_features(np.asarray(X, dtype=np.float64), self._baseline.features)

    def scores(self, X: np.ndarray, population: Population | None = None, client: str = "") -> np.ndarray:
        """rho / radius per row: > 1 means farther from the reference data than 95 % of benign rows.

        With an active ``population``, rho is the smaller of the reference's and the population's ratio (the
        distance to ``support`` other clients' rows over the same local scale of the reference).
        """
        b = self._baseline
        F = self.features(X)
        dist, nearest = _knn(F, b.index, b.index_sq, b.k)
        local = b.index_scale[nearest].mean(axis=1)
        rho = dist / local
        if population is not None and population.active:
            rho = np.minimum(rho, population.support_distance(F, client) / local)
        return rho / b.radius

    def update(
        self,
        state: OODState,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        *,
        now: float | None = None,
        population: Population | None = None,
        client: str = "",
    ) -> None:
        if X.shape[0] == 0:
            return
        ratio = self.scores(X, population, client)
        far = (ratio > 1.0).astype(np.uint8)
        pos = state.pos
        state.pos = ring_push(state.flags, pos, far)
        ring_push(state.classes, pos, np.where(labels >= 0, labels, self.n_classes).astype(np.int16))
        ring_push(state.ratios, pos, ratio.astype(np.float32))
        state.count += far.size
        state.far_total += int(far.sum())

    def evaluate(self, state: OODState, *, now: float | None = None) -> SignalResult:
        b = self._baseline
        n_valid = min(state.count, self.window)
        k, n, p, k_crit = class_beta_binomial_test(
            state.flags[:n_valid], state.classes[:n_valid], b.rate_a, b.rate_b, self.alpha
        )
        kx = 0
        if b.extreme > 0 and n:
            # Two tests on one window, Bonferroni: a few extreme queries, or many merely far ones.
            xflags = (state.ratios[:n_valid] > b.extreme).astype(np.uint8)
            kx, _, px, _ = class_beta_binomial_test(xflags, state.classes[:n_valid], b.xrate_a, b.xrate_b, self.alpha)
            p = min(1.0, 2.0 * min(p, px))
        evidence: dict[str, float | int] = {
            "extreme_queries": kx,
            "far_queries": k,
            "window_queries": n,
            "radius": b.radius,
            "benign_rate": b.p0,
            "median_distance_ratio": float(np.median(state.ratios[:n])) if n else 0.0,
            "lifetime_far": state.far_total,
        }
        test = (
            "exact one-sided per-class beta-binomial, H0: far (rho > radius) and extreme (rho > extreme x radius)"
            " rates per class as in benign reference clients; Bonferroni over the two"
        )
        return self.count_result(
            k, n, k_crit, p, min_n=self.min_queries, alpha=self.alpha, test=test, evidence=evidence
        )


def row_features(X: np.ndarray, code: int) -> np.ndarray:
    """The features of ``FEATURES[code]`` per row (a constant row standardises to zeros)."""
    if code == 0:
        return X
    if code == 1:
        sd = X.std(axis=1, keepdims=True)
        return (X - X.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    if code == 2:
        ranks = stats.rankdata(X, axis=1)  # ties (a flat background) share their mean rank
        return (ranks - 1.0) / max(X.shape[1] - 1, 1)
    raise ValueError(f"unknown feature code {code}")


def _knn(X: np.ndarray, index: np.ndarray, index_sq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the k-th nearest index point and the indices of the k nearest, per row of X."""
    dist = np.empty(X.shape[0])
    nearest = np.empty((X.shape[0], k), dtype=np.int64)
    for start in range(0, X.shape[0], _CHUNK):
        block = X[start : start + _CHUNK]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + index_sq[None, :] - 2.0 * (block @ index.T)
        idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        dist[start : start + _CHUNK] = np.sqrt(np.maximum(np.take_along_axis(d2, idx, axis=1).max(axis=1), 0.0))
        nearest[start : start + _CHUNK] = idx
    return dist, nearest


def _density_ratio(X: np.ndarray, index: np.ndarray, index_sq: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    dist, nearest = _knn(X, index, index_sq, k)
    return dist / scale[nearest].mean(axis=1)
