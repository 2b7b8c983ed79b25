"""Small numeric helpers shared by the signals: ring buffers, exact binomial tails, margins.

Everything here is vectorised and allocation-light because it runs once per client batch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

# Smallest p-value we report: scores are -log10(p), and 1e-300 stays a normal float64.
P_FLOOR = 1e-300


def ring_push(buf: np.ndarray, pos: int, values: np.ndarray) -> int:
    """Write ``values`` into the ring ``buf`` (first axis) starting at ``pos``; returns the next position."""
    size = buf.shape[0]
    m = values.shape[0]
    if m == 0:
        return pos
    if m >= size:
        buf[:] = values[m - size :]
        return 0
    end = pos + m
    if end <= size:
        buf[pos:end] = values
    else:
        first = size - pos
        buf[pos:] = values[:first]
        buf[: m - first] = values[first:]
    return end % size


def binom_tail(k: int, n: int, p: float) -> float:
    """P(K >= k) for K ~ Binomial(n, p): the exact one-sided binomial test's p-value."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return max(float(special.bdtrc(k - 1, n, p)), P_FLOOR)


def binom_critical(n: int, p: float, alpha: float) -> int:
    """The smallest count k with P(K >= k) <= alpha (n + 1 if no count reaches it)."""
    ks = np.arange(1, n + 1)
    tails = special.bdtrc(ks - 1, n, p)
    hit = np.flatnonzero(tails <= alpha)
    return int(ks[hit[0]]) if hit.size else n + 1


def norm_sf(z: float) -> float:
    """Upper tail of the standard normal."""
    return max(float(special.ndtr(-z)), P_FLOOR)


def top2_margin(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (0 = exactly on a decision boundary)."""
    if probabilities.shape[1] < 2:
        return np.ones(probabilities.shape[0])
    part = np.partition(probabilities, -2, axis=1)
    return part[:, -1] - part[:, -2]


def rule_of_three_floor(events: int, trials: int) -> float:
    """A benign rate that is never below 3/n (the 95 % upper bound on a rate when 0 of n were seen).

    A baseline rate of exactly 0 would turn one benign coincidence into p = 0.
    """
    if trials <= 0:
        raise ValueError("a rate needs at least one trial")
    return max(events / trials, 3.0 / trials)


def neg_log10(p: float) -> float:
    """-log10 p, as a non-negative score (p = 1 gives 0.0, not -0.0)."""
    return max(0.0, -math.log10(min(max(p, P_FLOOR), 1.0)))


def window_binomial(flags: np.ndarray, count: int, p0: float, alpha: float) -> tuple[int, int, float, int]:
    """Exact one-sided binomial test of the flags in a ring window: (k, n, p-value, critical k at alpha).

    H0: each of the window's n rows is flagged independently with the benign rate p0; H1: more often.
    """
    n = min(count, flags.shape[0])
    k = int(np.count_nonzero(flags[:n]))  # the filled slots are 0..n-1 until the ring wraps
    return k, n, binom_tail(k, n, p0), binom_critical(n, p0, alpha)


def class_rate_posterior(
    flags: np.ndarray, labels: np.ndarray, n_classes: int, prior_strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Beta posteriors (a, b) of the benign flag rate per class, shrunk towards the pooled rate.

    Index ``n_classes`` (the last) is the pooled posterior, used for rows whose class is unknown. The prior
    for class c is Beta(s*r, s*(1-r)) with r the pooled rate and s = ``prior_strength`` pseudo-rows, so a
    class with few reference rows borrows strength from the others instead of getting a noisy rate of its own.
    """
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    n_total = flags.size
    if n_total == 0:
        raise ValueError("need reference rows to fit a benign rate")
    r = min(max(flags.mean(), 0.5 / n_total), 1.0 - 0.5 / n_total)  # keep the prior proper at 0 or n events
    a = np.empty(n_classes + 1)
    b = np.empty(n_classes + 1)
    for c in range(n_classes):
        mask = labels == c
        e, n = float(flags[mask].sum()), float(mask.sum())
        a[c] = e + prior_strength * r
        b[c] = n - e + prior_strength * (1.0 - r)
    e = float(flags.sum())
    a[n_classes] = e + 0.5  # Jeffreys prior for the pooled rate
    b[n_classes] = n_total - e + 0.5
    return a, b


def class_beta_binomial_test(
    flags: np.ndarray, classes: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float
) -> tuple[int, int, float, int]:
    """Exact one-sided test of the flagged count in a window under a per-class beta-binomial null.

    H0: the n_c window rows of class c are flagged independently at an unknown benign rate p_c with the
    Beta(a_c, b_c) posterior from the reference data, so K_c ~ BetaBinomial(n_c, a_c, b_c), independent
    across classes; K = sum_c K_c. Returns (k, n, P(K >= k), smallest k' with P(K >= k') <= alpha).
    Unlike a plain binomial with one rate, this does not flag a client merely for asking about classes
    with a higher benign rate, nor for the sampling error of the reference rates.
    ``classes`` uses index len(a) - 1 for rows of unknown class.
    """
    n = int(flags.shape[0])
    k = int(np.count_nonzero(flags))
    if n == 0:
        return 0, 0, 1.0, 1
    n_c = np.bincount(classes, minlength=a.shape[0])
    present = np.flatnonzero(n_c)
    sizes = n_c[present]
    # All classes' support points in one vector: one call each to gammaln/betaln instead of one per class.
    cls = np.repeat(present, sizes + 1)
    m = np.repeat(sizes, sizes + 1)
    ks = np.arange(cls.size) - np.repeat(np.cumsum(sizes + 1) - (sizes + 1), sizes + 1)
    log_pmf = (
        special.gammaln(m + 1.0)
        - special.gammaln(ks + 1.0)
        - special.gammaln(m - ks + 1.0)
        + special.betaln(ks + a[cls], m - ks + b[cls])
        - special.betaln(a[cls], b[cls])
    )
    pmfs = np.split(np.exp(log_pmf), np.cumsum(sizes + 1)[:-1])
    pmf = pmfs[0]
    for other in pmfs[1:]:
        pmf = np.convolve(pmf, other)
    tail = np.cumsum(pmf[::-1])[::-1]  # tail[j] = P(K >= j)
    p = max(min(float(tail[k]), 1.0), P_FLOOR)
    hit = np.flatnonzero(tail <= alpha)
    k_crit = int(hit[0]) if hit.size else n + 1
    return k, n, p, k_crit


# Royston (1995), Algorithm AS R94: polynomial corrections of the two outermost Shapiro-Wilk coefficients.
_SW_C1 = np.array([-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, 0.0])
_SW_C2 = np.array([-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, 0.0])


@functools.lru_cache(maxsize=1024)  # one entry per sample size; the windows keep n <= a few hundred
def _sw_coefficients(n: int) -> np.ndarray:
    """The n // 2 Shapiro-Wilk coefficients a_1..a_{n/2} (for the largest-minus-smallest differences)."""
    half = n // 2
    m = special.ndtri((np.arange(1, half + 1) - 0.375) / (n + 0.25))  # lower-half normal scores, negative
    summ2 = 2.0 * float(m @ m)
    ssumm2 = math.sqrt(summ2)
    rsn = 1.0 / math.sqrt(n)
    a1 = float(np.polyval(_SW_C1, rsn)) - m[0] / ssumm2
    a2 = -m[1] / ssumm2 + float(np.polyval(_SW_C2, rsn))
    fac = math.sqrt((summ2 - 2.0 * m[0] ** 2 - 2.0 * m[1] ** 2) / (1.0 - 2.0 * a1**2 - 2.0 * a2**2))
    coef = -m / fac
    coef[0], coef[1] = a1, a2
    return coef


def shapiro_w(x: np.ndarray) -> float:
    """Shapiro-Wilk W with Royston's AS R94 coefficients, as scipy.stats.shapiro computes it, for n > 5.

    Reimplemented because scipy's wrapper costs ~0.25 ms per call against ~0.02 ms for this, and the
    detector runs it once per client evaluation. tests/unit/detector checks it against scipy.
    """
    n = int(x.shape[0])
    if n <= 5:
        raise ValueError(f"shapiro_w needs n > 5, got {n}")
    xs = np.sort(x)
    ssq = float(np.sum((xs - xs.mean()) ** 2))
    if ssq <= 0.0:
        return 0.0  # constant sample: a spike, as far from normal as a sample gets
    half = n // 2
    coef = _sw_coefficients(n)
    num = float(coef @ (xs[::-1][:half] - xs[:half]))
    return min(num * num / ssq, 1.0)


def client_concentration(counts: np.ndarray, sizes: np.ndarray) -> float:
    """Method-of-moments Beta concentration (a + b) of per-client flag rates; ``inf`` if clients agree.

    Benign clients are not one population of exchangeable rows: a client whose camera is off-centre has a
    higher far rate on every query. With rate r_i ~ Beta(a, b) per client and K_i ~ Binomial(n_i, r_i),
    Var(K_i / n_i) = m(1 - m) / (a + b + 1) + E[binomial noise]; subtracting the binomial part leaves the
    between-client variance, hence a + b = m(1 - m) / var_between - 1 (Kleinman 1973's estimator).
    """
    k = np.asarray(counts, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    keep = n > 0
    k, n = k[keep], n[keep]
    if k.size < 10:
        raise ValueError(f"need >= 10 clients to estimate their dispersion, got {k.size}")
    r = k / n
    m = float(k.sum() / n.sum())
    if m <= 0.0 or m >= 1.0:
        return math.inf
    between = float(np.var(r, ddof=1)) - float(np.mean(m * (1.0 - m) / n))
    if between <= 0.0:
        return math.inf
    return max(m * (1.0 - m) / between - 1.0, 1e-3)


def cap_concentration(a: np.ndarray, b: np.ndarray, concentration: float) -> tuple[np.ndarray, np.ndarray]:
    """Beta parameters with the same means but a + b at most ``concentration`` (a wider benign null)."""
    total = a + b
    factor = np.minimum(1.0, concentration / total)
    return a * factor, b * factor
