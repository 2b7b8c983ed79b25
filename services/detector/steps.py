"""Sign steps: queries that differ from an earlier query of the same client by ±λ on many coordinates.

Papers: Papernot et al., "Practical Black-Box Attacks against Machine Learning" (AsiaCCS 2017,
arXiv:1602.02697): Jacobian-based dataset augmentation (JBDA) queries x' = clip(x + λ sign(∇ substitute))
for every x it has already queried, so each synthetic query sits at a step of *constant magnitude* λ and
*mixed sign* from its parent on every coordinate the clip leaves free. Juuti et al. (PRADA, EuroS&P 2019)
detect the same attack by the distribution of minimum distances; on 784-pixel MNIST with sensor-noise
tolerance in the baseline neither PRADA nor the OOD signal sees it (docs/benchmarks.md), because one
±0.1 step on every pixel is about as far from the reference data as a noisy camera. The *shape* of the
step is what no benign behaviour produces, and that is what this signal tests.

Statistic, per query x: the difference v = x - m to the nearest (L2) row m of the client's *memory*, a
uniform reservoir sample (Vitter's algorithm R) of ``memory`` of its earlier queries, plus the
earlier rows of the same batch: JBDA's parents are
anywhere in the history (each round re-augments the whole set), so a window of recent queries would miss
them, and a reservoir holds a fixed fraction of them. x is a *sign step* when, over the coordinates v
changes (|v_i| > 1e-9 of the value scale):
- they are at least ``min_support`` of all coordinates (JBDA moves every coordinate the clip leaves free;
  a re-scan that changes a few pixels is not a step);
- at least ``same_share`` of them have the same magnitude, within ``tolerance`` of the median |v_i|;
- among those of the common magnitude both signs occur, the rarer on at least ``minority`` of them (a
  gradient sign pattern; a benign re-scan whose brightness moved changes every pixel by the same amount
  in the *same* direction, and clipping leaves only smaller steps of the other sign).
Benign behaviours and why they are not sign steps: two re-scans through a coarsely quantising device (rows
one grid level apart on many pixels, both signs: left out when both rows lie on a grid of the step's size,
``on_step_grid``), retries (v = 0, no coordinate changes), near-duplicates
re-scanned with noise (|v_i| spread like |N(0, σ)|: ~4 % of them within ±5 % of the median), the same
image at another brightness (one sign), another image (magnitudes as varied as the images).

Test: k = sign steps among the last ``window`` queries; exact one-sided binomial test, H0: each query is
a sign step independently at the benign rate p0, estimated from simulated benign streams of the reference
rows (every stream through its own capture device when a ``variation`` is given, with retries and
near-duplicates, since those are where a step-to-an-earlier-query test could err), never below the
rule-of-three bound 3/n. ``fired`` when p <= ``alpha``.

Where this differs from the papers: neither defines a detector of this shape; PRADA's distance test is the
nearest published one. Bounded memory: only the reservoir's ``memory`` rows are compared, so a child is
seen when its parent was sampled (probability memory / queries so far). An attacker who adds noise to each
step (or varies λ per coordinate) defeats the same-magnitude test; that costs the attack its sign
structure, not its volume, and the OOD and PRADA signals still see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.validation import positive_int, unit_interval
from services.detector.base import Record, Signal, SignalResult
from services.detector.stats import ring_push, rule_of_three_floor, window_binomial

_CHUNK = 64  # rows compared with the memory at once: bounds the [rows, memory] distance block
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
_MASK = (1 << 64) - 1


@dataclass(slots=True)
class StepsBaseline(Record):
    p0: float  # benign per-query sign-step rate (rule-of-three floored)
    benign_steps: int  # sign steps seen in the simulated benign streams
    benign_queries: int  # queries in them
    scale: float  # typical absolute input value of the reference rows: "changed" means > 1e-9 of it


@dataclass(slots=True)
class StepsState(Record):
    memory: np.ndarray  # float32 [memory, d]: a uniform reservoir sample of the client's earlier queries
    flags: np.ndarray  # uint8 [window]: 1 = sign step
    seen: int = 0  # queries offered to the reservoir
    pos: int = 0
    count: int = 0
    steps_total: int = 0

    def to_record(self) -> tuple[dict[str, int | float], dict[str, np.ndarray]]:
        scalars, arrays = Record.to_record(self)
        arrays["memory"] = self.memory[: min(self.seen, self.memory.shape[0])]  # a young client's state stays small
        scalars["cap"] = int(self.memory.shape[0])
        return scalars, arrays

    @classmethod
    def from_record(cls, scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> StepsState:
        scalars = dict(scalars)
        cap = int(scalars.pop("cap"))
        filled = arrays["memory"]
        if filled.ndim != 2 or filled.shape[0] > cap or filled.shape[0] != min(int(scalars["seen"]), cap):
            raise ValueError("corrupt steps state: memory rows do not match the queries seen")
        memory = np.zeros((cap, filled.shape[1]), dtype=np.float32)
        memory[: filled.shape[0]] = filled
        fields_: dict[str, Any] = {**scalars, **arrays, "memory": memory}
        return cls(**fields_)


def reservoir_slot(i: int, size: int) -> int:
    """Algorithm R's slot for the ``i``-th query (0-based): i itself while filling, then a uniform draw
    from 0..i (kept when < ``size``). The draw is a hash of i, so the sample does not depend on how the
    stream was cut into batches, and replaying a stream reproduces it."""
    if i < size:
        return i
    z = ((i + 1) * _GOLDEN) & _MASK  # splitmix64 of the query's index
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    j = z % (i + 1)
    return j if j < size else -1


def sign_steps(
    diff: np.ndarray,
    *,
    eps: float,
    min_support: float,
    same_share: float,
    tolerance: float,
    minority: float,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Per row of ``diff`` (query minus its nearest earlier query): is it a sign step (module docstring)?

    ``rows``: the queries themselves; a step between two rows that both lie on a grid of the step's own size
    is a re-quantisation, not a sign step (``on_step_grid``).
    """
    a = np.abs(diff)
    changed = a > eps
    support = changed.sum(axis=1)
    d = diff.shape[1]
    out = np.zeros(diff.shape[0], dtype=bool)
    for i in np.flatnonzero(support >= max(2, min_support * d)):
        ai = a[i, changed[i]]
        med = float(np.median(ai))
        same = np.abs(ai - med) <= tolerance * med
        # The signs are counted among the steps of the common size only: clipping leaves smaller steps of
        # either sign (two re-scans of one document at different exposures), a gradient sign pattern does not.
        pos = int(np.count_nonzero(diff[i, changed[i]][same] > 0))
        n_same = int(same.sum())
        out[i] = n_same >= same_share * ai.size and min(pos, n_same - pos) >= minority * n_same
        if out[i] and rows is not None:
            out[i] = not on_step_grid(rows[i], rows[i] - diff[i], med)
    return out


def on_step_grid(x: np.ndarray, parent: np.ndarray, step: float) -> bool:
    """Do both rows take only values ``low + j x step`` (low: the smaller row minimum, j integer)?

    A coarsely quantising device (a 3-5 bit sensor, a low-resolution capture) turns two noisy re-scans of
    one image into rows one grid level apart on many pixels, of both signs: a sign step by shape. A Jacobian
    step of size λ from a natural image leaves the grid of spacing λ (the image's values are not multiples
    of λ), so it stays a step. Evasion this opens: an attacker who picks λ equal to the input's own
    quantum (1 grey level on 8x8 digits, 1/255 on MNIST) on quantised seeds; docs/detector.md.
    """
    low = min(float(x.min()), float(parent.min()))
    # float32 storage rounds the rows: a tolerance of 1e-3 of a level.
    for row in (x, parent):
        levels = (row - low) / step
        if np.max(np.abs(levels - np.round(levels))) > 1e-3:
            return False
    return True


class StepsSignal(Signal[StepsState, StepsBaseline]):
    name = "steps"
    STATE = StepsState
    PARAMS = ("memory", "window", "alpha", "min_queries", "min_support", "same_share", "tolerance", "minority")

    def __init__(
        self,
        baseline: StepsBaseline,
        *,
        n_features: int,
        n_classes: int,
        # 64 earlier queries: ~200 kB at 784 float32 features, the PRADA growing set's order; a JBDA child
        # finds its parent there with probability 64 / (queries so far): ~60 % in the first round.
        memory: int = 64,
        window: int = 200,  # as the boundary and OOD windows: ~4 tests of 50 queries
        alpha: float = 1e-4,  # standalone level of ``fired``; the risk combiner sets the alert
        min_queries: int = 20,
        min_support: float = 0.2,  # JBDA changes ~40-90 % of the coordinates (the clip fixes the rest)
        same_share: float = 0.8,  # clipped coordinates move less than λ; 80 % leaves room for them
        tolerance: float = 0.05,  # float32 storage and rounding of λ stay within 5 %
        minority: float = 0.02,  # both signs present: a global brightness change has one sign only
    ) -> None:
        super().__init__(n_features=n_features, n_classes=n_classes)
        if not isinstance(baseline, StepsBaseline):
            raise ValueError("baseline must be a StepsBaseline (use StepsSignal.fit)")
        self.memory = positive_int("memory", memory)
        self.window = positive_int("window", window)
        self.alpha = unit_interval("alpha", alpha)
        self.min_queries = positive_int("min_queries", min_queries)
        if self.min_queries > self.window:
            raise ValueError(f"min_queries ({min_queries}) cannot exceed window ({window})")
        self.min_support = unit_interval("min_support", min_support)
        self.same_share = unit_interval("same_share", same_share, open_high=False)
        self.tolerance = unit_interval("tolerance", tolerance)
        self.minority = unit_interval("minority", minority, open_low=False)
        self._baseline = baseline

    @classmethod
    def fit(
        cls,
        X_ref: np.ndarray,
        *,
        n_features: int,
        n_classes: int,
        null_streams: int = 20,  # benign orderings of the reference rows; each a full pass
        retry_rate: float = 0.03,  # as simulate.benign_streams
        near_duplicate_rate: float = 0.05,  # as the red team's benign clients
        noise_scale: float = 0.01,  # near-duplicate noise, fraction of the value range (per pixel and global)
        variation: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        seed: int = 0,
        **params: Any,
    ) -> StepsSignal:
        """The benign sign-step rate, from simulated benign streams of ``X_ref`` (see the module docstring)."""
        X = np.asarray(X_ref, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != n_features or X.shape[0] < 20:
            raise ValueError(f"X_ref must be [n >= 20, {n_features}]")
        positive_int("null_streams", null_streams)
        scale = max(float(np.mean(np.abs(X))), 1e-12)
        width = max(float(X.max() - X.min()), 1e-12)
        low, high = float(X.min()), float(X.max())
        sig = cls(
            StepsBaseline(p0=0.0, benign_steps=0, benign_queries=0, scale=scale),
            n_features=n_features,
            n_classes=n_classes,
            **params,
        )
        rng = np.random.default_rng(seed)
        steps = queries = 0
        for _ in range(null_streams):
            rows = X[rng.permutation(len(X))]
            if variation is not None:
                rows = np.asarray(variation(rows, rng), dtype=np.float64)
            stream = [rows[0]]
            for i in range(1, len(rows)):
                u = rng.random()
                if u < retry_rate:
                    stream.append(stream[-1])
                elif u < retry_rate + near_duplicate_rate:
                    earlier = stream[int(rng.integers(max(0, len(stream) - 20), len(stream)))]
                    # Half re-scans with pixel noise, half with an exposure change (one offset for all pixels).
                    noise = rng.normal(0.0, noise_scale * width, size=n_features if rng.random() < 0.5 else 1)
                    stream.append(np.clip(earlier + noise, low, high))
                stream.append(rows[i])
            st = sig.new_state()
            Xs = np.asarray(stream)
            sig.update(st, Xs, None, np.zeros(len(Xs), dtype=np.int64))
            steps += st.steps_total
            queries += len(Xs)
        base = StepsBaseline(
            p0=rule_of_three_floor(steps, queries), benign_steps=steps, benign_queries=queries, scale=scale
        )
        return cls(base, n_features=n_features, n_classes=n_classes, **params)

    def layout(self) -> str:
        return f"{super().layout()},M={self.memory},w={self.window}"

    def new_state(self) -> StepsState:
        return StepsState(
            memory=np.zeros((self.memory, self.n_features), dtype=np.float32),
            flags=np.zeros(self.window, dtype=np.uint8),
        )

    def flags(self, X: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """Sign-step flag of each row of ``X`` against ``memory`` and the rows of ``X`` before it."""
        if X.shape[0] == 0:
            return np.zeros(0, dtype=bool)
        # Stored as float32, as the memory is: the rounding of an earlier row is not read as a change.
        Xq = X.astype(np.float32).astype(np.float64)
        C = np.concatenate([memory.astype(np.float64), Xq])
        d2 = np.einsum("ij,ij->i", Xq, Xq)[:, None] + np.einsum("ij,ij->i", C, C)[None, :] - 2.0 * (Xq @ C.T)
        m, n = memory.shape[0], X.shape[0]
        later = np.arange(n)[None, :] >= np.arange(n)[:, None]  # a row and the ones after it are not earlier
        d2[:, m:][later] = np.inf
        has_earlier = np.isfinite(d2).any(axis=1)
        diff = Xq - C[d2.argmin(axis=1)]
        diff[~has_earlier] = 0.0  # the client's first query: nothing to step from
        return sign_steps(
            diff,
            eps=1e-6 * self._baseline.scale,
            min_support=self.min_support,
            same_share=self.same_share,
            tolerance=self.tolerance,
            minority=self.minority,
            rows=Xq,
        )

    def update(
        self,
        state: StepsState,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        *,
        now: float | None = None,
    ) -> None:
        for start in range(0, X.shape[0], _CHUNK):
            xs = X[start : start + _CHUNK]
            flags = self.flags(xs, state.memory[: min(state.seen, self.memory)])
            state.pos = ring_push(state.flags, state.pos, flags.astype(np.uint8))
            state.count += flags.size
            state.steps_total += int(flags.sum())
            for row in xs:
                slot = reservoir_slot(state.seen, self.memory)
                if slot >= 0:
                    state.memory[slot] = row
                state.seen += 1

    def evaluate(self, state: StepsState, *, now: float | None = None) -> SignalResult:
        b = self._baseline
        k, n, p, k_crit = window_binomial(state.flags, state.count, b.p0, self.alpha)
        evidence: dict[str, float | int] = {
            "sign_steps": k,
            "window_queries": n,
            "benign_rate": b.p0,
            "lifetime_sign_steps": state.steps_total,
        }
        test = "exact one-sided binomial, H0: sign steps at the benign rate of simulated reference clients"
        return self.count_result(
            k, n, k_crit, p, min_n=self.min_queries, alpha=self.alpha, test=test, evidence=evidence
        )
