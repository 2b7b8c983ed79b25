"""One risk score per client from the signals' p-values, with an alert threshold set on benign traffic.

Method (docs/design.md "Detector": one score with a benign false-positive budget):
1. Combine. At each evaluation every signal gives a one-sided p-value for its current window. The
   default combination is the Bonferroni minimum, p = min(1, m * min_j p_j) over the m signals: valid
   whatever the dependence between signals (the OOD and PRADA signals are correlated on synthetic
   queries) and it names the signal that drove it. Fisher's method (-2 sum ln p_j ~ chi^2 with 2m degrees
   of freedom) is available; it adds evidence across signals but assumes independence. The risk score is
   -log10 p ("decades of evidence").
2. Calibrate. A client is tested many times over its lifetime on overlapping windows, so a per-test level
   says little about how often a benign client is ever flagged. ``calibrate`` runs the whole engine over
   simulated benign clients (``simulate.benign_streams`` on the reference data), takes each client's
   maximum score over its stream, fits a Gumbel distribution to those maxima (the limit law of maxima;
   method of moments), and stretches it to ``lifetime_queries`` by max-stability: a lifetime r times
   longer than a simulated stream is the maximum of r blocks, a Gumbel with location + scale * ln r. The
   alert threshold is that distribution's 1 - ``target_fpr`` quantile, so a benign client is flagged at
   least once in ``lifetime_queries`` queries with probability ~``target_fpr`` (default 0.1 %). Floors:
   never below the largest simulated maximum, and never below the union bound -log10(target_fpr / T)
   for the T = lifetime_queries / eval_every tests of a lifetime, which alone would guarantee the budget
   if every combined p-value were exact. The floor matters when the simulated streams are too short to
   exercise every signal (small reference sets) or when the signals' p-values are honest; the Gumbel
   part matters when benign p-values come out smaller than they should (they do: see the tests).
3. Levels: ``low`` below the alert threshold; ``medium`` from it (an alert); ``high`` from the threshold
   computed the same way for ``high_fpr`` (default 1e-5, 100x rarer), where the service tightens the
   client's output policy.

What this assumes, honestly: the simulated streams stand for benign traffic (see simulate.py for what
they leave out); the blocks of a long lifetime are independent (the signals' windows are bounded, so
evaluations far apart are nearly so); the Gumbel tail holds beyond the simulated maxima (a few hundred
streams cannot show a 0.1 % quantile directly, that part is extrapolation). The simulated streams are
drawn from the same reference rows the per-signal baselines were fitted on, so they are slightly more
benign-looking than fresh data; the held-out tests in tests/unit/detector measure the FPR on fresh data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import special

from audit.validation import positive_int, unit_interval
from services.detector.simulate import BenignStream
from services.detector.stats import P_FLOOR, neg_log10

Level = Literal["low", "medium", "high"]
Method = Literal["bonferroni", "fisher"]
METHODS = ("bonferroni", "fisher")
EULER_GAMMA = 0.5772156649015329


def combine(p_values: Sequence[float], method: Method = "bonferroni") -> float:
    """The combined p-value of one evaluation (1.0 for no signals)."""
    ps = [min(max(float(p), P_FLOOR), 1.0) for p in p_values]
    if not ps:
        return 1.0
    if method == "bonferroni":
        return min(1.0, len(ps) * min(ps))
    if method == "fisher":
        stat = -2.0 * sum(math.log(p) for p in ps)
        return max(float(special.chdtrc(2 * len(ps), stat)), P_FLOOR)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@dataclass(frozen=True, slots=True)
class RiskThresholds:
    alert: float  # score (-log10 p) from which a client is alerted (level medium)
    high: float  # score from which the level is high
    target_fpr: float
    high_fpr: float
    lifetime_queries: int
    method: str
    n_sim_clients: int = 0
    sim_queries: float = 0.0  # mean length of a simulated stream
    gumbel_loc: float = 0.0  # fitted to the per-stream maxima, before stretching to the lifetime
    gumbel_scale: float = 0.0
    sim_max: float = 0.0  # largest score any simulated benign client reached
    sim_median_max: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RiskThresholds:
        return cls(**d)

    def level(self, score: float) -> Level:
        if score >= self.high:
            return "high"
        if score >= self.alert:
            return "medium"
        return "low"


def gumbel_threshold(maxima: np.ndarray, stretch: float, fpr: float) -> tuple[float, float, float]:
    """(threshold, loc, scale): the 1 - fpr quantile of max-of-``stretch``-blocks under a Gumbel fit."""
    m = np.asarray(maxima, dtype=np.float64)
    scale = float(m.std(ddof=1)) * math.sqrt(6.0) / math.pi if m.size > 1 else 0.0
    loc = float(m.mean()) - EULER_GAMMA * scale
    shifted = loc + scale * math.log(max(stretch, 1.0))
    return shifted - scale * math.log(-math.log1p(-fpr)), loc, scale


def calibrate(
    run_stream: Callable[[BenignStream], Sequence[float]],
    streams: Iterable[BenignStream],
    *,
    lifetime_queries: int = 10_000,  # a benign client's lifetime the FPR budget covers
    target_fpr: float = 1e-3,  # the budget: <= 0.1 % of benign clients ever alerted
    high_fpr: float = 1e-5,  # 100x rarer than an alert: strong enough to tighten a client's policy
    eval_every: int = 50,  # queries per test, to count the tests of a lifetime for the union-bound floor
    method: Method = "bonferroni",
    extra_tests: int = 0,  # tests outside the regular schedule (the engine's early tests)
) -> RiskThresholds:
    """Thresholds from benign streams; ``run_stream`` returns the risk scores of one stream's evaluations."""
    lifetime_queries = positive_int("lifetime_queries", lifetime_queries)
    target_fpr = unit_interval("target_fpr", target_fpr)
    high_fpr = unit_interval("high_fpr", high_fpr)
    if high_fpr > target_fpr:
        raise ValueError(f"high_fpr ({high_fpr}) must not exceed target_fpr ({target_fpr})")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    maxima: list[float] = []
    lengths: list[int] = []
    for stream in streams:
        scores = list(run_stream(stream))
        maxima.append(max(scores) if scores else 0.0)
        lengths.append(stream.X.shape[0])
    if len(maxima) < 20:
        raise ValueError(f"need >= 20 simulated benign streams to fit the tail, got {len(maxima)}")
    m = np.asarray(maxima)
    sim_queries = float(np.mean(lengths))
    stretch = lifetime_queries / sim_queries
    t_alert, loc, scale = gumbel_threshold(m, stretch, target_fpr)
    t_high, _, _ = gumbel_threshold(m, stretch, high_fpr)
    floor = float(m.max())
    tests = max(lifetime_queries / positive_int("eval_every", eval_every) + max(extra_tests, 0), 1.0)
    return RiskThresholds(
        alert=max(t_alert, floor, neg_log10(target_fpr / tests)),
        high=max(t_high, floor, neg_log10(high_fpr / tests)),
        target_fpr=target_fpr,
        high_fpr=high_fpr,
        lifetime_queries=lifetime_queries,
        method=method,
        n_sim_clients=len(maxima),
        sim_queries=sim_queries,
        gumbel_loc=loc,
        gumbel_scale=scale,
        sim_max=floor,
        sim_median_max=float(np.median(m)),
    )
