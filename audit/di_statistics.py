"""The statistics of dataset inference, whatever the embedding: features, the confidence regressor, the
one-sided Welch t-test, the calibration against null models and the decision rule.

``audit.dataset_inference`` explains the method and calls these; they are plain functions of arrays, so the
decision rule can be tested on its own (tests/unit/audit/test_dataset_inference.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from audit.blind_walk import BlindWalkConfig
from audit.mingd import MinGDConfig

CLAIMED = "claimed"
NOT_CLAIMED = "not claimed"
INCONCLUSIVE = "inconclusive"
TTEST_NAME = "one-sided Welch two-sample t-test of regressor scores, private > public"
CALIBRATION_NAME = (
    "conformal rank of the suspect's Welch t-statistic among null models' t-statistics on the same samples"
)
PARAMETRIC_NAME = (
    "one-sided Student prediction-interval test of the suspect's Welch t against a normal fitted to the null "
    "models' t-statistics, its variance widened for another party's data (used when a Shapiro-Wilk test does not "
    "reject the fit)"
)
NO_CALIBRATION = "no calibrated null (the normal fit to the null models' t-statistics was not accepted)"
# The parametric null replaces the rank only with enough null models to check the fit: Shapiro-Wilk on fewer than
# 10 points rejects almost nothing, so a fit it "accepts" would be unchecked.
MIN_PARAMETRIC_NULLS = 10
# ... and in at least 3 data groups: with two, the between-group variance rests on one degree of freedom.
MIN_PARAMETRIC_GROUPS = 3
GOF_ALPHA = 0.05  # Shapiro-Wilk level at which the normal fit to the null t-statistics is rejected
EmbeddingConfig = BlindWalkConfig | MinGDConfig


def features(
    log_d: np.ndarray, correct: np.ndarray, ref_log_d: np.ndarray, ref_correct: np.ndarray, config: EmbeddingConfig
) -> np.ndarray:
    """[..., n, F]: per family the mean of (log-distance − reference) over its directions (Blind Walk) or over
    its ``feature_ranks`` nearest target ranks (MinGD: columns are sorted), then correctness − reference."""
    z = log_d - ref_log_d
    k = config.directions_per_family
    used = config.feature_ranks if isinstance(config, MinGDConfig) else k
    cols = [z[..., j * k : j * k + used].mean(axis=-1) for j in range(len(config.families))]
    if config.use_correctness:
        cols.append(correct - ref_correct)
    return np.stack(cols, axis=-1)


@dataclass(frozen=True)
class Regressor:
    """Standardise, then a logistic-regression logit: larger = more like the owner's private samples."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(((features - self.mean) / self.scale) @ self.coef + self.intercept)


def fit_regressor(private: np.ndarray, public: np.ndarray, c: float, seed: int, monotone: bool = True) -> Regressor:
    """L2-regularised logistic regression (label 1 = private) on standardised features; with ``monotone`` the
    weights are constrained to be >= 0 (every feature is oriented so that membership raises it)."""
    from scipy.optimize import minimize

    feats = np.vstack([private, public])
    target = np.r_[np.ones(len(private)), np.zeros(len(public))]
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature (e.g. all correct) stays 0 after centring
    z = (feats - mean) / scale
    sign = 2.0 * target - 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        margin = sign * (z @ w + b)
        value = np.logaddexp(0.0, -margin).sum() + 0.5 * (w @ w) / c
        g = -sign * special.expit(-margin)
        return float(value), np.r_[z.T @ g + w / c, g.sum()]

    bounds = [(0.0, None) if monotone else (None, None)] * z.shape[1] + [(None, None)]
    res = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    return Regressor(mean, scale, res.x[:-1].astype(np.float64), float(res.x[-1]))


def welch(private: np.ndarray, public: np.ndarray) -> tuple[float, float, float]:
    """(t, one-sided p for private > public, degrees of freedom); a zero standard error gives t = ±inf or 0."""
    a, b = np.asarray(private, np.float64), np.asarray(public, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se <= 1e-15 * max(1.0, abs(diff)):
        t = math.copysign(math.inf, diff) if diff != 0 else 0.0
        return t, (0.0 if t > 0 else 1.0 if t < 0 else 0.5), float("nan")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    return t, float(stats.t.sf(t, df)), float(df)


@dataclass
class Statistic:
    t: float
    p_ttest: float
    df: float
    delta_mu: float
    null_t: np.ndarray
    p_calibrated: float  # the p-value the decision uses: parametric when its fit holds, else the rank
    p_parametric: float | None
    private_scores: np.ndarray
    public_scores: np.ndarray
    p_rank: float = 1.0  # the conformal rank p-value, floor 1/(1 + n_null): reported, not decided on
    null_fit: dict[str, float | int | str | bool | None] | None = None
    calibration: str = "none"  # "parametric" (p_calibrated is the fitted null's) or "none" (no calibrated null)


def null_groups_of(groups: np.ndarray | list[int] | None, n: int) -> np.ndarray:
    """The null models' data groups as integers 0..G-1 (``audit.null_models`` "data parts"); None, or fewer than
    two groups, means every null is its own group (each null then trained on its own draw, as assumed before)."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups).reshape(-1)
    if len(g) != n:
        raise ValueError(f"one data group per null model: got {len(g)} for {n} nulls")
    _, codes = np.unique(g, return_inverse=True)
    return codes if codes.max() >= 1 else np.arange(n)


def reference_weights(null_groups: np.ndarray) -> np.ndarray:
    """[n + 1, n + 1] row-stochastic weights: model i's reference is the mean of the models outside its data
    group. Model 0 is the suspect, its own group, so it is normalised by every null; a null by the suspect and the
    nulls of the other groups. With one null per group this is "every other model", the original rule."""
    groups = np.r_[-1, null_groups]
    w = (groups[:, None] != groups[None, :]).astype(np.float64)
    return w / w.sum(axis=1, keepdims=True)


def statistic(
    suspect_log_d: np.ndarray,
    suspect_correct: np.ndarray,
    null_log_d: np.ndarray,
    null_correct: np.ndarray,
    regressor: Regressor,
    config: EmbeddingConfig,
    m: int,
    null_groups: np.ndarray | list[int] | None = None,
) -> Statistic:
    """The suspect's and every null model's Welch t on the first ``m`` rows of each side (rows: m private, then
    m public), each model normalised by the models outside its data group (``reference_weights``)."""
    all_log_d = np.concatenate([suspect_log_d[None], null_log_d])  # [n + 1, 2m, K]; model 0 is the suspect
    all_correct = np.concatenate([suspect_correct[None], null_correct]).astype(np.float64)
    n = len(null_log_d)
    groups = null_groups_of(null_groups, n)
    weights = reference_weights(groups)
    ref_log_d = np.einsum("ij,j...->i...", weights, all_log_d)
    ref_correct = weights @ all_correct
    scores = regressor.score(features(all_log_d, all_correct, ref_log_d, ref_correct, config))  # [n + 1, 2m]
    ts = np.array([welch(s[:m], s[m:])[0] for s in scores])
    t, p_t, df = welch(scores[0, :m], scores[0, m:])
    null_t = ts[1:]
    p_rank = (1.0 + float(np.sum(null_t >= t))) / (n + 1.0)
    p_param, fit = parametric_null(t, null_t, groups, float(config.between_data_sd))
    use_parametric = p_param is not None and fit is not None and bool(fit["accepted"])
    return Statistic(
        t=t,
        p_ttest=p_t,
        df=df,
        delta_mu=float(scores[0, :m].mean() - scores[0, m:].mean()),
        null_t=null_t,
        # Without an accepted fit there is no calibrated p-value: the rank assumes the suspect exchangeable with the
        # nulls, and models on other data are not (docs/benchmarks.md "An allowance for another party's data").
        p_calibrated=float(p_param) if use_parametric and p_param is not None else 1.0,
        p_parametric=p_param,
        private_scores=scores[0, :m],
        public_scores=scores[0, m:],
        p_rank=p_rank,
        null_fit=fit,
        calibration="parametric" if use_parametric else "none",
    )


def parametric_null(
    t: float, null_t: np.ndarray, null_groups: np.ndarray | list[int] | None = None, between_data_sd: float = 0.0
) -> tuple[float | None, dict[str, float | int | str | bool | None] | None]:
    """(p, fit): a normal fitted to the null models' t-statistics, checked by Shapiro-Wilk, and the suspect's
    one-sided p under it.

    Why: the rank p-value cannot go below 1/(1 + n_null) (0.048 with 20 nulls), so a strong signal and a
    borderline one look the same, and a registration with fewer than 20 nulls could never claim.

    **One null per data set** (``null_groups`` None): the Student prediction interval, z = (t − mean) /
    (sd·√(1 + 1/n)), Student-t with n − 1 df under H0 and normal nulls.

    **Nulls in data groups** (``audit.null_models`` parts): the nulls of one group share a data set, and a
    suspect brings a data set of its own, so the prediction is a one-way random-effects one. With G group means
    (sample variance s_b², mean μ) and the pooled within-group variance s_w² (k nulls per group, harmonic mean),
    a new model on new data has variance σ_between² + σ_within², estimated by V = s_b²·(1 + 1/G) + s_w²·(1 − 1/k)
    (s_b² estimates σ_between² + σ_within²/k; the 1/G is the uncertainty of μ); z = (t − μ)/√V is referred to
    Student-t with Satterthwaite's degrees of freedom, which are few when the groups are (G − 1 for the
    between-group part), so a handful of groups gives a wide interval rather than an overconfident one. With one
    null per group this is the formula above. The between-group variance is, if anything, overstated: each null
    is normalised by the other groups, which pushes the group means apart by G/(G − 1).

    **Another party's data** (``between_data_sd`` τ): the owner's reference rows cannot show the shift a model
    trained on data from elsewhere brings (measured on digits: about ±1 in t, docs/benchmarks.md "An allowance
    for another party's data"), so τ² is added to V; the degrees of freedom are those of the estimated part.

    The fit is ``accepted`` when there are at least ``MIN_PARAMETRIC_NULLS`` finite null statistics in at least
    ``MIN_PARAMETRIC_GROUPS`` groups and Shapiro-Wilk does not reject normality of the null statistics at
    ``GOF_ALPHA``; otherwise the decision falls back to the rank.
    """
    groups = null_groups_of(null_groups, len(null_t))
    ok = np.isfinite(null_t)
    finite, groups = null_t[ok], groups[ok]
    if len(finite) < 3 or finite.std(ddof=1) <= 0 or not math.isfinite(t):
        return None, None
    n = len(finite)
    labels, codes, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    n_groups = len(labels)
    if n_groups < 2:
        return None, None
    means = np.bincount(codes, weights=finite) / sizes
    mean = float(means.mean())
    s_b2 = float(means.var(ddof=1))
    within_df = n - n_groups
    s_w2 = float(((finite - means[codes]) ** 2).sum() / within_df) if within_df > 0 else 0.0
    k = float(n_groups / np.sum(1.0 / sizes))  # harmonic mean of the group sizes
    c_b, c_w = 1.0 + 1.0 / n_groups, 1.0 - 1.0 / k
    var = c_b * s_b2 + c_w * s_w2
    if var <= 0:
        return None, None
    denominator = (c_b * s_b2) ** 2 / (n_groups - 1) + ((c_w * s_w2) ** 2 / within_df if within_df > 0 else 0.0)
    dof = var**2 / denominator if denominator > 0 else float(n - 1)
    estimated_sd = math.sqrt(var)
    var += float(between_data_sd) ** 2
    z = (t - mean) / math.sqrt(var)
    p = float(stats.t.sf(z, dof))
    w, p_gof = stats.shapiro(finite)
    accepted = n >= MIN_PARAMETRIC_NULLS and n_groups >= MIN_PARAMETRIC_GROUPS and float(p_gof) >= GOF_ALPHA
    fit: dict[str, float | int | str | bool | None] = {
        "distribution": "normal" if n_groups == n else "normal, one-way random effects over data groups",
        "mean": mean,
        "sd": math.sqrt(var),
        "estimated_sd": estimated_sd,
        "between_data_sd": float(between_data_sd),
        "n": n,
        "groups": n_groups,
        "between_group_variance": s_b2,
        "within_group_variance": s_w2,
        "degrees_of_freedom": dof,
        "goodness_of_fit_test": "Shapiro-Wilk test of normality of the null models' t-statistics",
        "shapiro_w": float(w),
        "shapiro_p": float(p_gof),
        "accepted": accepted,
        "reason": (
            f"normal fit accepted (Shapiro-Wilk p = {float(p_gof):.3g} >= {GOF_ALPHA}, {n} null models in "
            f"{n_groups} data groups)"
            if accepted
            else f"normal fit not used: {n} null models in {n_groups} data groups (need >= "
            f"{MIN_PARAMETRIC_NULLS} in >= {MIN_PARAMETRIC_GROUPS})"
            if n < MIN_PARAMETRIC_NULLS or n_groups < MIN_PARAMETRIC_GROUPS
            else f"normal fit rejected by Shapiro-Wilk (p = {float(p_gof):.3g} < {GOF_ALPHA}): no calibrated null"
        ),
    }
    return p, fit


def decide(
    p_ttest: float, p_cal: float, n_null: int, alpha: float, calibration: str = "rank"
) -> tuple[str, str]:
    """Claim when the t-test and the calibration agree below α (module docstring of audit.dataset_inference).
    With ``calibration`` "rank" the calibrated p-value has a floor of 1/(n_null + 1); "parametric" has none;
    "none" (no accepted fit) is always inconclusive."""
    if calibration == "none":
        return INCONCLUSIVE, (
            "no calibrated null: the normal fit to the null models' statistics was not accepted (see null_fit), and "
            "the rank among the nulls is not used because a model on another party's data is not exchangeable "
            "with them"
        )
    if calibration == "rank" and 1.0 / (n_null + 1.0) >= alpha:
        need = math.ceil(1.0 / alpha - 1.0 + 1e-9)
        need = need + 1 if 1.0 / (need + 1.0) >= alpha else need
        return INCONCLUSIVE, (
            f"only {n_null} null models: the calibrated p-value cannot go below 1/{n_null + 1} = "
            f"{1.0 / (n_null + 1):.3g} >= α = {alpha:g}; at least {need} null models are needed to decide"
        )
    if p_ttest < alpha and p_cal < alpha:
        return CLAIMED, f"both the t-test (p = {p_ttest:.3g}) and the null calibration (p = {p_cal:.3g}) are < α"
    if p_ttest >= alpha and p_cal >= alpha:
        return NOT_CLAIMED, f"neither the t-test (p = {p_ttest:.3g}) nor the calibration (p = {p_cal:.3g}) is < α"
    if p_ttest < alpha:
        return INCONCLUSIVE, (
            f"borderline: the t-test says p = {p_ttest:.3g} < α, but {p_cal:.3g} of null models (calibrated) "
            "reach a statistic this large, so the t-test's claim is not trusted"
        )
    return INCONCLUSIVE, (
        f"borderline: the statistic ranks above the null models (calibrated p = {p_cal:.3g} < α) but the "
        f"t-test alone gives p = {p_ttest:.3g} >= α"
    )


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    ranks = stats.rankdata(np.r_[positive, negative])
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
