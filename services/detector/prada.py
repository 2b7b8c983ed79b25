"""PRADA: the distribution of each query's distance to the client's earlier queries of the same class.

Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing Attacks" (IEEE EuroS&P
2019, arXiv:1805.02628); reference code SSGAalto/prada-protecting-against-dnn-model-stealing-attacks
(``src/growing_set.py``, ``src/growing_set_ops.py``), summarised in docs/research.md "Detection: PRADA". Synthetic
extraction queries are generated from earlier ones by small, similar steps (Jacobian augmentation adds
±λ to every feature; line searches halve their step), so their minimum distances to earlier queries
pile up in a spike or a heavy left tail; natural queries give a roughly normal spread. PRADA tests that
with Shapiro-Wilk's W and flags the client when W < δ.

As in the reference code: per predicted class c a growing set G_c; each new query of class c gets
d = min L2 distance to G_c (raw input space), d joins the pooled distances, and the query joins G_c when
d > T_c, where T_c = max(T_c, mean(D_Gc) - std(D_Gc)) over the distances D_Gc that admitted G_c's members
(the first query of a class seeds G_c with distance 0). The test pools the distances of classes with at
least ``min_class_count`` of them, drops those more than ``outlier_sigma`` standard deviations from the
mean, needs more than ``min_distances`` left, and computes W = scipy.stats.shapiro(pooled).statistic;
``fired`` = W < ``delta`` (0.9, the reference code's default).

Where this differs from the paper and its code, and why:
- Bounded memory (the paper's G_c grows without limit): G_c keeps only the ``max_set_size`` most recently
  admitted members per class (a FIFO ring). A query's distance is therefore to the nearest of the K most
  recent members, never shorter than the exact PRADA distance; once a member is evicted, a later query
  that is a small step from it is no longer recognised as close. T_c is exact (running sums over all
  admissions). Within one update chunk (<= 64 rows) evictions take effect at the chunk's end.
  ``bench/detector_throughput.py`` measures what the cap costs: W on a Jacobian-augmentation stream and
  on a benign stream with the cap and with an unbounded set.
- Windowed test: the pooled distances are the last ``window`` ones, not the whole history (PRADA pools
  everything), so memory is bounded and an attack that starts after a long benign history is not
  diluted by it.
- Retries excluded: a distance <= ``retry_eps`` (``retry_fraction`` = 20 % of the benign median same-class
  nearest-neighbour distance) is a resubmission of an earlier query (a retry, or the same input re-scanned
  with noise); PRADA would add a near-0 distance to the pool, and a benign client who retries often would
  then look like an attacker (measured: the red-team's benign clients with 10 % near-duplicates reached
  p ~ 1e-8 with a 2 % radius). Such queries are counted in the evidence instead. The cost: attacks whose
  steps are shorter than the radius (the final steps of a bisection, small single-feature sweeps) are
  invisible here; the boundary and sweep signals see them.
- Tested once per engine evaluation (every 50 of the client's queries by default) instead of every 10.
- A p-value besides δ: Shapiro-Wilk's own p-value assumes normal data and is useless for benign
  distances that are merely near-normal. We calibrate instead: ln(1 - W) is close to normal (Royston's
  normalising transformation, 1992), so we fit its mean (linear in ln n) and spread on benign streams
  simulated from the reference data, and report p = P(ln(1 - W_benign) >= ln(1 - W)) at the same n.
- If every pooled distance is identical (a perfectly regular attack), the reference code's outlier filter
  removes all of them and never tests; we report W = 0 instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from audit.validation import positive_float, positive_int, unit_interval
from services.detector.base import Record, Signal, SignalResult
from services.detector.stats import norm_sf, ring_push, shapiro_w

_CHUNK = 64  # rows per sequential admission pass: bounds the [rows, rows] in-chunk distance matrix


@dataclass(slots=True)
class PradaBaseline(Record):
    retry_eps: float  # distances at or below this are retries, not new queries
    benign_median_nn: float  # median same-class nearest-neighbour distance in the reference data
    null_mu_a: float  # E[ln(1 - W)] under benign traffic ~ null_mu_a + null_mu_b * ln(n)
    null_mu_b: float
    null_sd: float  # spread of ln(1 - W) under benign traffic
    null_samples: int  # how many benign W values the null was fitted on
    benign_w_q01: float  # 1 % quantile of benign W (evidence: where δ sits relative to benign traffic)


@dataclass(slots=True)
class PradaState(Record):
    members: np.ndarray  # float32 [C, K, d]: the capped growing sets
    fill: np.ndarray  # int32 [C]: members held per class
    head: np.ndarray  # int32 [C]: next ring slot per class (the oldest member once full)
    adm_n: np.ndarray  # float64 [C]: running count / sum / sum of squares of D_Gc
    adm_sum: np.ndarray
    adm_sumsq: np.ndarray
    thr: np.ndarray  # float64 [C]: T_c
    dist: np.ndarray  # float32 [window]: recent min-distances
    dist_cls: np.ndarray  # int16 [window]: their classes
    dpos: int = 0
    dcount: int = 0
    retries: int = 0
    queries: int = 0

    def to_record(self) -> tuple[dict[str, int | float], dict[str, np.ndarray]]:
        scalars, arrays = Record.to_record(self)
        # Store only filled members: a young client's state stays small, an old one is capped at C*K*d.
        arrays["members"] = np.concatenate([self.members[c, : self.fill[c]] for c in range(self.fill.size)])
        scalars["cap"] = int(self.members.shape[1])
        return scalars, arrays

    @classmethod
    def from_record(cls, scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        scalars = dict(scalars)
        cap = int(scalars.pop("cap"))
        packed = arrays["members"]
        fill = arrays["fill"]
        if packed.ndim != 2 or packed.shape[0] != int(fill.sum()) or np.any(fill > cap) or np.any(fill < 0):
            raise ValueError("corrupt PRADA state: member rows do not match the fill counts")
        members = np.zeros((fill.size, cap, packed.shape[1]), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(fill)])
        for c in range(fill.size):
            members[c, : fill[c]] = packed[offsets[c] : offsets[c + 1]]
        fields_: dict[str, Any] = {**scalars, **arrays, "members": members}
        return cls(**fields_)


class PradaSignal(Signal[PradaState, PradaBaseline]):
    name = "prada"
    STATE = PradaState
    PARAMS = ("delta", "max_set_size", "window", "min_class_count", "min_distances", "outlier_sigma")

    def __init__(
        self,
        baseline: PradaBaseline,
        *,
        n_features: int,
        n_classes: int,
        delta: float = 0.9,  # δ of the reference code (src/main.py)
        max_set_size: int = 32,  # per class: 10 classes x 32 x 64 dims x 4 B = 80 KB; cost measured in the bench
        window: int = 500,  # pooled distances tested; 5x PRADA's minimum of 100, Shapiro costs ~0.1 ms here
        min_class_count: int = 10,  # PRADA pools only classes with >= 10 distances
        min_distances: int = 100,  # PRADA tests only with more than 100 pooled distances
        outlier_sigma: float = 3.0,  # PRADA drops distances beyond 3 standard deviations
    ) -> None:
        super().__init__(n_features=n_features, n_classes=n_classes)
        if not isinstance(baseline, PradaBaseline):
            raise ValueError("baseline must be a PradaBaseline (use PradaSignal.fit)")
        self.delta = unit_interval("delta", delta)
        self.max_set_size = positive_int("max_set_size", max_set_size)
        self.window = positive_int("window", window)
        self.min_class_count = positive_int("min_class_count", min_class_count)
        self.min_distances = positive_int("min_distances", min_distances, minimum=3)
        if self.min_distances >= self.window:
            raise ValueError(f"min_distances ({min_distances}) must be below window ({window})")
        self.outlier_sigma = positive_float("outlier_sigma", outlier_sigma)
        self._baseline = baseline

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        X_ref: np.ndarray,
        labels_ref: np.ndarray,
        *,
        n_features: int,
        n_classes: int,
        # 20 % of a typical benign neighbour distance: re-scans with noise (L2 ~1-3 on digits, median
        # neighbour ~19) stay below it, Jacobian steps (~50 % of it) and most sweep steps stay above.
        retry_fraction: float = 0.2,
        null_streams: int = 40,  # benign permutations of the reference data; ~8 W values each
        eval_every: int = 50,  # the engine's test schedule, so the null matches what is tested
        seed: int = 0,
        variation: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        **params: Any,
    ) -> PradaSignal:
        """Fit the retry radius and the benign null of ln(1 - W) on benign reference data.

        The null is fitted by running the signal itself over ``null_streams`` random orderings of the
        reference rows (labelled as the model answers them) and regressing ln(1 - W) on ln(n). With a
        ``variation`` (one call = one client's device), every null stream goes through its own device, so
        the null is that of a population of varied clients (labels stay the reference rows' labels).
        """
        X = np.asarray(X_ref, dtype=np.float64)
        y = np.asarray(labels_ref).reshape(-1).astype(np.int64)
        if X.ndim != 2 or X.shape[1] != n_features or y.shape[0] != X.shape[0]:
            raise ValueError(f"X_ref must be [n, {n_features}] with one label per row")
        frac = unit_interval("retry_fraction", retry_fraction)
        null_streams = positive_int("null_streams", null_streams)
        eval_every = positive_int("eval_every", eval_every)
        nn = _same_class_nn(X, y)
        if nn.size < 10:
            raise ValueError("need at least 10 reference rows that share their class with another row")
        median_nn = float(np.median(nn))
        provisional = PradaBaseline(
            retry_eps=frac * median_nn,
            benign_median_nn=median_nn,
            null_mu_a=0.0,
            null_mu_b=0.0,
            null_sd=1.0,
            null_samples=0,
            benign_w_q01=0.0,
        )
        sig = cls(provisional, n_features=n_features, n_classes=n_classes, **params)
        rng = np.random.default_rng(seed)
        ns: list[int] = []
        ws: list[float] = []
        for _ in range(null_streams):
            order = rng.permutation(len(X))
            Xs = X[order] if variation is None else np.asarray(variation(X[order], rng), dtype=np.float64)
            ys = y[order]
            st = sig.new_state()
            for start in range(0, len(order), eval_every):
                sig.update(st, Xs[start : start + eval_every], None, ys[start : start + eval_every])
                w, n, _ = sig.pooled_w(st)
                if n > sig.min_distances and 0.0 < w < 1.0:
                    ns.append(n)
                    ws.append(w)
        if len(ws) < 10:
            raise ValueError(
                f"only {len(ws)} benign W values: the reference data is too small for PRADA's window "
                f"(needs streams with > {sig.min_distances} pooled distances)"
            )
        z = np.log1p(-np.asarray(ws))
        ln_n = np.log(np.asarray(ns, dtype=np.float64))
        if np.ptp(ln_n) > 0.1:
            b, a = np.polyfit(ln_n, z, 1)
        else:  # one sample size only: a constant mean
            a, b = float(z.mean()), 0.0
        resid = z - (a + b * ln_n)
        # Floor: the null comes from a few dozen in-sample streams; never claim a tighter spread than this.
        sd = max(float(resid.std(ddof=1)), 0.05)
        base = PradaBaseline(
            retry_eps=provisional.retry_eps,
            benign_median_nn=median_nn,
            null_mu_a=float(a),
            null_mu_b=float(b),
            null_sd=sd,
            null_samples=len(ws),
            benign_w_q01=float(np.quantile(ws, 0.01)),
        )
        return cls(base, n_features=n_features, n_classes=n_classes, **params)

    def layout(self) -> str:
        return f"{super().layout()},K={self.max_set_size},w={self.window}"

    def new_state(self) -> PradaState:
        c, k, d = self.n_classes, self.max_set_size, self.n_features
        return PradaState(
            members=np.zeros((c, k, d), dtype=np.float32),
            fill=np.zeros(c, dtype=np.int32),
            head=np.zeros(c, dtype=np.int32),
            adm_n=np.zeros(c),
            adm_sum=np.zeros(c),
            adm_sumsq=np.zeros(c),
            thr=np.zeros(c),
            dist=np.zeros(self.window, dtype=np.float32),
            dist_cls=np.zeros(self.window, dtype=np.int16),
        )

    # ------------------------------------------------------------------ streaming
    def update(
        self,
        state: PradaState,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        *,
        now: float | None = None,
    ) -> None:
        for start in range(0, X.shape[0], _CHUNK):
            self._update_chunk(state, X[start : start + _CHUNK], labels[start : start + _CHUNK])

    def _update_chunk(self, st: PradaState, X: np.ndarray, y: np.ndarray) -> None:
        known = y >= 0  # rows without an answer have no class to compare within
        if not known.all():
            X, y = X[known], y[known]
        n = y.shape[0]
        if n == 0:
            return
        st.queries += n
        Xd = np.asarray(X, dtype=np.float64)
        sq = np.einsum("ij,ij->i", Xd, Xd)
        # Squared distance of every row to the members of its own class: one BLAS call against all members
        # (fewer numpy calls than one per class), then each row keeps its own class's filled slots.
        c_n, _, d = st.members.shape
        k_used = max(int(st.fill.max()), 1)  # only the filled prefix of each class's slots
        flat = st.members[:, :k_used].reshape(c_n * k_used, d).astype(np.float64)
        cross = (np.einsum("ij,ij->i", flat, flat)[None, :] - 2.0 * (Xd @ flat.T)).reshape(n, c_n, k_used)
        own = cross[np.arange(n), y]
        own[np.arange(k_used)[None, :] >= st.fill[y][:, None]] = np.inf
        dset = own.min(axis=1) + sq
        pair = (sq[:, None] + sq[None, :] - 2.0 * (Xd @ Xd.T)).tolist() if n > 1 else [[0.0]]

        # The admission rule is sequential (each admitted row changes the set the next row sees); the heavy
        # arithmetic is done above, this pass only takes minima over rows admitted earlier in the chunk.
        yl = y.tolist()
        dl = dset.tolist()
        thr = st.thr.tolist()
        cnt, tot, tot2 = st.adm_n.tolist(), st.adm_sum.tolist(), st.adm_sumsq.tolist()
        eps = self._baseline.retry_eps
        in_chunk: dict[int, list[int]] = {}
        admitted: list[int] = []
        new_d: list[float] = []
        new_c: list[int] = []
        retries = 0
        for i in range(n):
            c = yl[i]
            d2 = dl[i]
            earlier = in_chunk.get(c)
            if earlier:
                row = pair[i]
                for j in earlier:
                    if row[j] < d2:
                        d2 = row[j]
            if d2 == math.inf:  # first query of its class: seeds G_c, D_Gc = [0], no distance to test
                d = 0.0
            else:
                d = math.sqrt(d2) if d2 > 0.0 else 0.0
                if d <= eps:
                    retries += 1
                    continue
                new_d.append(d)
                new_c.append(c)
                if d <= thr[c]:
                    continue
            in_chunk.setdefault(c, []).append(i)
            admitted.append(i)
            cnt[c] += 1.0
            tot[c] += d
            tot2[c] += d * d
            mean = tot[c] / cnt[c]
            std = math.sqrt(max(tot2[c] / cnt[c] - mean * mean, 0.0))
            thr[c] = max(thr[c], mean - std)
        st.thr[:] = thr
        st.adm_n[:] = cnt
        st.adm_sum[:] = tot
        st.adm_sumsq[:] = tot2
        st.retries += retries
        k = self.max_set_size
        for i in admitted:
            c = yl[i]
            h = int(st.head[c])
            st.members[c, h] = X[i]
            st.head[c] = (h + 1) % k
            if st.fill[c] < k:
                st.fill[c] += 1
        if new_d:
            pos = st.dpos
            st.dpos = ring_push(st.dist, pos, np.asarray(new_d, dtype=np.float32))
            ring_push(st.dist_cls, pos, np.asarray(new_c, dtype=np.int16))
            st.dcount += len(new_d)

    def pooled_w(self, state: PradaState) -> tuple[float, int, dict[str, float | int]]:
        """Shapiro-Wilk W of the pooled window after PRADA's class and outlier filters: (W, n, evidence)."""
        n_valid = min(state.dcount, self.window)
        d = state.dist[:n_valid].astype(np.float64)
        cls = state.dist_cls[:n_valid]
        counts = np.bincount(cls, minlength=self.n_classes)
        d = d[counts[cls] >= self.min_class_count]
        evidence: dict[str, float | int] = {
            "window_distances": n_valid,
            "classes_pooled": int(np.count_nonzero(counts >= self.min_class_count)),
            "retries_excluded": state.retries,
            "growing_set_members": int(state.fill.sum()),
        }
        if d.size == 0:
            return float("nan"), 0, evidence
        mean, std = float(d.mean()), float(d.std())
        if std > 0.0:
            d = d[np.abs(d - mean) < self.outlier_sigma * std]
        n = int(d.size)
        evidence["pooled_distances"] = n
        evidence["median_distance"] = float(np.median(d)) if n else 0.0
        if n <= self.min_distances:
            return float("nan"), n, evidence
        # shapiro_w returns 0 for a spike of identical distances: as non-normal as it gets.
        return shapiro_w(d), n, evidence

    def evaluate(self, state: PradaState, *, now: float | None = None) -> SignalResult:
        b = self._baseline
        w, n, evidence = self.pooled_w(state)
        test = (
            "Shapiro-Wilk W of pooled min-distances; p from the benign null of ln(1-W) ~ Normal("
            f"{b.null_mu_a:.3f}{b.null_mu_b:+.3f}*ln n, {b.null_sd:.3f}) fitted on {b.null_samples} benign windows"
        )
        if not math.isfinite(w):
            alpha = self.alpha_at_delta(n)
            return SignalResult(self.name, float("nan"), self.delta, 1.0, False, n, alpha, test, evidence)
        z = math.log1p(-w) if w < 1.0 else -math.inf
        mu = b.null_mu_a + b.null_mu_b * math.log(n)
        p = norm_sf((z - mu) / b.null_sd) if math.isfinite(z) else 1.0
        evidence["null_z"] = (z - mu) / b.null_sd if math.isfinite(z) else 0.0
        return SignalResult(
            self.name,
            statistic=w,
            threshold=self.delta,
            p_value=p,
            fired=w < self.delta,
            n=n,
            alpha=self.alpha_at_delta(n),
            test=test,
            evidence=evidence,
        )

    def alpha_at_delta(self, n: int) -> float:
        """The benign null's tail probability at W = δ: the false-alarm rate PRADA's rule implies at n."""
        b = self._baseline
        if n <= 0 or b.null_samples == 0:
            return float("nan")
        mu = b.null_mu_a + b.null_mu_b * math.log(n)
        return norm_sf((math.log1p(-self.delta) - mu) / b.null_sd)


def _same_class_nn(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's distance to its nearest other row of the same class (rows alone in their class skipped)."""
    out: list[np.ndarray] = []
    for c in np.unique(y):
        Xc = X[y == c]
        if len(Xc) < 2:
            continue
        sq = np.einsum("ij,ij->i", Xc, Xc)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (Xc @ Xc.T)
        np.fill_diagonal(d2, np.inf)
        out.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
    return np.concatenate(out) if out else np.empty(0)
