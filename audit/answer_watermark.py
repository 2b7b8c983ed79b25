"""Answer watermark: the gateway marks what it serves, so a model trained on those answers carries the mark.

Two marks, both keyed by one deployment secret, both pure functions of (secret, input, upstream answer), so
every gateway process and every restart answers the same input the same way:

- **Label answers** (DAWN: Szyller, Atli, Marchal, Asokan, "DAWN: Dynamic Adversarial Watermarking of Neural
  Networks", ACM Multimedia 2021, arXiv 1906.00830). A keyed hash of the canonicalised input selects a share
  ``label_share`` of inputs; for those the served label is replaced by a keyed choice among the other classes.
  A thief's copy that fits its training answers reproduces those wrong labels on the inputs it was served.
- **Label answers near the decision boundary** (ours; ``boundary_margin`` > 0, computed from the upstream's
  probabilities). Where the top-2 margin p₁ − p₂ is below ``boundary_margin``, a keyed side σ(x) ∈ {−1, 0, +1}
  decides between the top two classes: +1 serves the higher-numbered, −1 the lower-numbered. Boundary-seeking
  thieves query exactly there, and the runner-up is a label copies fit far more easily than DAWN's random one.
  Two ways to pick σ (``boundary_side``): "hash" (default), a coin per distinct canonical input from its keyed
  HMAC (the DAWN digest's 4th word), so each logged input is an independent fair coin under the null and
  ``verify_boundary`` is a Bernoulli(1/2) test martingale in logged order, valid even on the log of a client
  that adapted to our answers; "smooth", the side of a keyed cosine cos(f·<u, x> + ψ) against ±θ, a smooth
  keyed region a copy reproduces around its training inputs, tested by a rank test over wrong keys (u, ψ),
  exact only when the probes did not depend on the key, and weaker over keys because nearby logged probes share
  a side (docs/audits.md has both measured over keys).
- **Probability answers** (CosWM: Charette, Chu, Chen, Pei, Wang, Zhang, "Cosine Model Watermarking Against
  Ensemble Distillation", AAAI 2022, arXiv 2203.02777). A keyed cosine of a keyed projection of the input,
  s(x) = cos(f·<v, x> + φ), moves ``amplitude``·s(x) of probability mass into (or out of) one keyed class c*.
  A student distilled from the answers learns the periodic component; it is invisible in the top-1 label
  (which never changes) and small in every probability (at most ``amplitude``). Optionally
  (``probability_classes`` 2, not the default) the sine of the same projection moves mass into a second keyed
  class c₂ as well, so a copy that can carry only the mark's part linear in the input finds it whatever the
  key's phase; each probability then moves by at most twice ``amplitude``. On held-out keys it lowered the
  logistic thief's agreement more than it raised the claims (docs/benchmarks.md).

Verification (what an audit runs on a suspect's answers), with the statistics stated:

- ``verify_labels`` / ``SequentialLabelTest``. Probes are inputs the key marks, together with the label the
  upstream gave them (y) and the label the gateway served instead (w). They must be inputs the suspect's
  trainer was actually served: the gateway's query log of the suspected client (``label_probes`` selects and
  de-duplicates them). The mark is per input, so a copy is not expected to carry it on inputs it never saw.
  Null: the suspect was trained without our marked answers, i.e. it is independent of the key. The key picks
  w uniformly among the k−1 classes other than y, independently of everything the suspect does, so on a probe
  where the suspect answers z ≠ y, P(z = w) = 1/(k−1) exactly, independently across distinct probes; where it
  answers y a match is impossible. The test therefore conditions on the disagreeing probes: with D of them and
  M matches, the fixed-n p-value is the exact one-sided binomial P(Bin(D, 1/(k−1)) ≥ M). No null models are
  needed, and an independent model that agrees with y (the usual case) adds nothing to the count instead of
  inflating it. The sequential version is a test martingale (the Bernoulli likelihood ratio mixed over a
  uniform alternative q ∈ [1/(k−1), 1]); by Ville's inequality p_t = 1/max_{s≤t} M_s is valid at every look,
  so an audit may stop at the first query with p_t ≤ α and the false-claim probability stays ≤ α.
  Needs k ≥ 3 (with two classes every disagreement is a match).
- ``verify_probabilities``. Probes are any inputs chosen without looking at the key (the owner's reference
  data; ``probability_probes``), the suspect's probabilities on them, and optionally a baseline (the owner's
  own unmarked probabilities on the same probes) to remove the class-probability structure every model
  shares. Two statistics: (1) *cosine*, the self-normalised correlation T = Σ rᵢsᵢ / √Σ (rᵢsᵢ)²,
  rᵢ = centred residual of class c*, sᵢ = s(xᵢ); (2) *half-wave*, on the probes where the baseline gives c*
  less than ``QUIET_BELOW`` (1 %), the same T between the log-residual log(q + 10⁻³) − log(b + 10⁻³) of c* and
  max(s, 0). Why (2): where c* is near zero the served move is only the cosine's positive half (the negative
  half is clipped at zero probability), and a copy's own errors on c* (a confusion giving c* a large share
  now and then) dominate T in probability units, while in log units they are bounded and the lifted c*
  (10⁻³ → 0.1·s) stands out: on MNIST, the mean of three thieves' copies gave cosine z ≈ 1 and half-wave
  z ≈ 3–6 at 500 probes; (3) *linear* (probability answers, 40+ probes), the correlation of r with s after
  both are projected on the probes' linear span (their top principal directions, one per 4 probes at most):
  a copy that can only represent functions linear in the input (equation solving's logistic model) carries
  only the linear part of the cosine, and the projection removes the part of its residual no key can
  explain (digits equation-solving copy: rank p at the floor on 13 of the 20 design keys against 4 for
  (1)/(2); on 20 held-out keys the audit claimed it on 11 instead of 9).
  Null: the suspect (and baseline) are independent of the key. The test is
  conditional on c* (derived from its own subkey, independent of v and φ): the wrong keys share c* and draw
  v uniform on the sphere and φ uniform, so under the null the true (v, φ) is exchangeable with
  ``n_null_keys`` wrong ones. Each key gets every statistic, each turned into its rank p-value among all
  N + 1 keys; the combined statistic is the smallest of them, ties broken by their mean, and its rank among
  the N + 1 keys, (1 + #{wrong keys at least as extreme}) / (N + 1), is exact (P(p ≤ α) ≤ α) whatever the
  models: the wrong keys calibrate the statistics jointly, so taking the best costs no Bonferroni factor. A
  Gaussian fitted to the wrong-key statistics extrapolates below the floor and is reported beside it
  (Bonferroni over the statistics), labelled approximate. A
  suspect that only returns labels is tested on one-hot answers with the cosine alone (valid, weak); the
  label test is the one for label thieves.

Where this differs from the papers:

- DAWN's released code selects by HMAC-SHA256 of the raw image bytes (16 bits compared with the share) and
  answers a random label other than the true one. We canonicalise the input first (float32, mantissa rounded
  to ``significant_bits``, −0.0 = 0.0) so re-encoding the same numbers through JSON cannot change the
  selection, compare 64 bits, and make the replacement a keyed function of the input too, so a repeated
  query gets the same wrong label (averaging repeats cannot remove it). A third-party port hashes binarised
  penultimate activations (robust to small input noise); the gateway has no model internals. DAWN's
  confidence (> 1 − 2⁻⁶⁴) is, as we read it, the chance of matching random wrong labels on the whole trigger
  set; we condition on the suspect's disagreements (exact, and not fooled by independent models that are
  simply accurate) and add an anytime-valid sequential test. DAWN keys per client; callers who want that can
  derive the secret per client.
- CosWM (as summarised in its abstract and our reading of it; the paper's exact formulas were not checked
  here) adds the cosine to one class's softmax output and renormalises, and verifies by the power of the
  suspect's outputs at the key's frequency (a periodogram signal-to-noise ratio against an empirical
  threshold). We move mass between c* and the other classes in proportion to their probabilities (row sums
  unchanged, no renormalisation distortion), shrink the move per row so the top-1 label never changes and
  the top-1 margin keeps at least ``margin_kept`` of its size, use the known phase (one-sided, more power
  than phase-free power), and calibrate by exact Monte Carlo over wrong keys instead of a threshold.
- Frequencies: f is in radians per unit of <v, x>, so it depends on the input scale; ``suggest_frequency``
  turns "cycles per standard deviation of a random projection of the reference data" into f.

Measured on scikit-learn digits (64 features in [0, 1], 10 classes; victim: an MLP on 600 rows, 0.964 test
accuracy; each thief: 1,000 other rows answered through the mark; 20 keys; null models: 22 models that never
saw marked answers, i.e. 6 soft-label distillations and 5 MLPs on the victim's unmarked answers, 8 MLPs and
3 logistic regressions on true labels; a scratch benchmark kept out of the suite). Defaults below:

- Label mark (share 1%, 4–17 marked answers per thief). MLP thieves: 20/20 claimed by the sequential test at
  α = 1e-3, after 4–5 probe queries. Thieves that do not fit isolated wrong labels escape: logistic regression
  0/20, an MLP with weight decay 1e-2 and early stopping 0/20. At share 0.5%, 8/10 MLP thieves were claimed
  (keys with 1–2 marked answers cannot be). Null models: 0 claims in 1,100 (model, key) trials at α = 0.05
  (smallest p 0.11: independent models rarely disagree with the upstream on these inputs).
- Probability mark (amplitude 0.05, 0.25 cycles per projection std). Thieves distilling the answers with a
  soft-label cross-entropy: with 2,000 probes from the owner's data (70% pairwise mixes), 18/20 claimed at
  α = 0.01 and 14/20 at α = 1e-3 (the Monte-Carlo floor is 5e-4; median Gaussian-approximate p 2e-6); with
  the thief's own logged queries as probes, 20/20 at α = 1e-3 from 30–50 probes. Thieves fitting the answers
  by squared error (MLPRegressor) learn the cosine poorly: 0/20 from owner probes, 18/20 at α = 0.01 from
  logged ones. Thieves training on the argmax: 0/20, as designed (the top-1 never changes). Amplitude 0.03
  gave 17/20 and 11/20 on owner probes. Null models: false-claim rate 0.055 at α = 0.05, 0.014 at 0.01 and
  0.001 at 1e-3 over 1,100 (model, key) trials; but that rate is an average over keys, and it is uneven:
  for one key in ten, 15–55% of the null models had p ≤ 0.05 (null models share structure, and a key whose
  cosine happens to line up with it flags them together). Claim on probabilities only at α = 1e-3, and
  prefer a second, independent piece of evidence. (These figures are of the cosine statistic alone, with
  wrong keys that also drew c*; the half-wave statistic came later and is measured in docs/benchmarks.md.)
- Max probability change 0.05 (+ float32 rounding when the answers are float32); about 0.1% of rows had the
  move shrunk for the top-1 guarantee; 1.0% of label answers flipped.

What a valid probe set is: for labels, any of the suspected client's logged queries (the keyed choice of w is
unpredictable on an input the client had not yet sent). For probabilities, inputs chosen without the key —
the owner's data, or a log of queries that did not adapt to the answers (the exact p-value assumes the probe
set is independent of the key; an adaptive client's log does not guarantee that).

The probability test gains most of its power from where it probes: on the suspected client's own logged
inputs with the owner's unmarked answers as baseline (what ``audit.api_watermark`` does), a distilled digits
copy from 1,000 answers reaches the Monte-Carlo floor (Gaussian tail 1e-5 to 1e-12) at 100–500 probes, at
0.25 and at 1 cycle per projection std alike; on fresh reference probes it needs thousands. The gateway's
default amplitude is 0.1 (``Settings.answer_watermark_amplitude``): bench/api_watermark.py and
docs/benchmarks.md have the figures over red-team copies, ensembles and removal attacks.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from audit.solve_template import SolveReference, solve_statistics

# scipy is imported where a test needs it, never at module level: the gateway marks answers with this module
# and a gateway-only install has no scipy (tests/unit/packaging).

DOMAIN = b"modelcustody.answer-watermark/v1"
LABEL_TEST = "exact one-sided binomial on the suspect's disagreements with the upstream label, p0 = 1/(k-1)"
SEQUENTIAL_LABEL_TEST = "uniform-mixture Bernoulli test martingale on disagreements, p0 = 1/(k-1) (Ville)"
SEQUENTIAL_LABEL_TEST_PROBABILITIES = (
    "uniform-mixture Bernoulli test martingale, p0 = 1/(k-1) (Ville), on every probe where the suspect has one most "
    "likely class other than the upstream label: P(that class = the watermark label) = 1/(k-1)"
)
BOUNDARY_TEST = (
    "Monte-Carlo rank test against random wrong keys of the correlation between the keyed region's side and the "
    "suspect's move towards the higher- or lower-numbered class of the owner's top two, on probes where the "
    "owner's top-2 margin is below the boundary margin"
)
BOUNDARY_HASH_TEST = (
    "uniform-mixture Bernoulli test martingale (Ville) on the probes, in logged order, where the suspect answers "
    "one of the owner's top two and the input's keyed side is active: P(answer = the keyed choice) = 1/2"
)
BOUNDARY_HASH_WEIGHTED_TEST = (
    "uniform-mixture betting test martingale (Ville) on the band probes with an active side, in logged order, "
    "betting on the suspect's signed preference between the owner's top two: the keyed one is a fair coin"
)
# The bet fraction λ's mixture: the average over 100 midpoints of [0, 1] (a finite mixture, exactly valid).
BET_GRID = 100
# The bets λ of the weighted boundary test's mixture: the uniform prior's BET_GRID quantile midpoints.
BET_LAMBDAS = (np.arange(BET_GRID) + 0.5) / BET_GRID
BOUNDARY_SIDES = ("smooth", "hash")
PROBABILITY_TEST = (
    "Monte-Carlo rank test against random wrong keys (same c*) of the smallest rank p-value (ties: the mean) of "
    "three statistics: the class-c* residual's correlation with the keyed cosine; on probes where the baseline "
    "gives c* < 1%, the class-c* log-residual's correlation with the cosine's positive half; and the residual's "
    "correlation with the cosine after both are projected on the probes' linear span; with the suspected clients' "
    "logged inputs, the suspect's class-c* logit departure from a least-squares solve of the owner's unmarked "
    "answers, against the change a solve of each key's marked answers makes (the solve template)"
)
# The half-wave statistic's probes: the baseline gives c* less than 1 %, so the served move there is the
# positive half of the cosine (the negative half is clipped at zero probability); 90 % of MNIST probes.
QUIET_BELOW = 0.01
# log(q + 1e-3): the mark lifts a near-zero c* to amplitude·s ≈ 0.1, a factor of 100 above the floor, while
# differences among probabilities below 1e-3 (the copy's and the owner's noise) are flattened.
LOG_FLOOR = 1e-3
# The linear statistic: a span of at most one principal direction per 4 probes (digits: all 64 at 250+ probes;
# MNIST: 62 at 250, 125 at 500), used from 40 probes. Measured on the digits equation-solving copy over the
# benchmark's 20 design keys: rank p ≤ 2.5e-4 on 13 keys against 4 for the best of the other two; on 20 held-out
# keys the audit claimed that copy on 11 instead of 9 (docs/benchmarks.md).
LINEAR_PROBES_PER_DIM = 4
LINEAR_MIN_PROBES = 40
CLAIMED = "ownership claimed"
NOT_CLAIMED = "not claimed"


# --- key material -----------------------------------------------------------------------------------------


def _subkey(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, DOMAIN + b"|" + label, hashlib.sha256).digest()


def _expand(key: bytes, n_bytes: int) -> bytes:
    """HMAC-SHA256 in counter mode (HKDF-Expand style): stable across numpy versions and platforms."""
    blocks = [hmac.new(key, i.to_bytes(8, "big"), hashlib.sha256).digest() for i in range(-(-n_bytes // 32))]
    return b"".join(blocks)[:n_bytes]


def _uniforms(key: bytes, n: int) -> np.ndarray:
    """n floats strictly inside (0, 1) from the top 53 bits of 64-bit HMAC words."""
    words = np.frombuffer(_expand(key, 8 * n), dtype=">u8").astype(np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


def _unit_vector(key: bytes, dim: int) -> np.ndarray:
    """A direction uniform on the sphere (Box–Muller normals, normalised), derived from ``key`` alone."""
    u = _uniforms(key, 2 * ((dim + 1) // 2)).reshape(-1, 2)
    radius = np.sqrt(-2.0 * np.log(u[:, 0]))
    normals = np.concatenate([radius * np.cos(2 * np.pi * u[:, 1]), radius * np.sin(2 * np.pi * u[:, 1])])[:dim]
    return normals / np.linalg.norm(normals)


def _digest_after(base: hmac.HMAC, data: bytes) -> bytes:
    """HMAC(key, prefix ‖ data) from an HMAC already fed the prefix (same digest as one call on the whole)."""
    h = base.copy()
    h.update(data)
    return h.digest()


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(labels), k))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# --- results ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkedLabels:
    labels: np.ndarray  # [n] int64: what to serve
    marked: np.ndarray  # [n] bool: which rows were replaced


@dataclass(frozen=True)
class MarkedProbabilities:
    probabilities: np.ndarray  # [n, k], same dtype as the input: what to serve
    max_change: float  # max over rows and classes of |served − upstream|: ≤ amplitude, 2× with two marked classes
    scale: np.ndarray  # [n] in [0, 1]: the share of the keyed move applied (< 1 where the top-1 needed it)


@dataclass(frozen=True)
class LabelProbes:
    """Inputs the key marks, in a keyed pseudo-random order, with the upstream and the served (marked) label."""

    inputs: np.ndarray  # [m, d] float32
    original_labels: np.ndarray  # [m] int64: y, the upstream's label
    watermark_labels: np.ndarray  # [m] int64: w ≠ y, what the gateway served

    def __len__(self) -> int:
        return len(self.original_labels)


class _Claim:
    """The decision of a piece of evidence, from its ``claimed`` field (the subclasses are the dataclasses)."""

    claimed: bool

    @property
    def decision(self) -> str:
        return CLAIMED if self.claimed else NOT_CLAIMED


@dataclass(frozen=True)
class BoundaryEvidence(_Claim):
    """The boundary label test's outcome (``AnswerWatermark.verify_boundary``)."""

    statistic: float  # T under the true key
    p_value: float  # exact Monte-Carlo rank p-value, ≥ 1/(n_null_keys + 1)
    z: float  # (T − mean of the wrong keys' T) / their std: approximate, for reading, not for the decision
    n_probes: int  # probes in the owner's boundary band (top-2 margin below the boundary margin)
    n_moved: int  # of them, probes where the suspect's answer differs from the owner's in the pair's order
    n_null_keys: int
    alpha: float
    claimed: bool
    test: str = BOUNDARY_TEST
    matches: int | None = None  # hash side: probes where the suspect answers the keyed choice of the top two
    p_binomial: float | None = None  # hash side: fixed-n binomial P(Bin(n_moved, 1/2) ≥ matches), for reading

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, Any] = {"n_probes": self.n_probes, "n_moved": self.n_moved}
        if self.test in (BOUNDARY_HASH_TEST, BOUNDARY_HASH_WEIGHTED_TEST):
            null = (
                "suspect independent of the key: on each new logged input where it answers one of the owner's "
                "top two, it answers the keyed choice with probability 1/2 given everything before"
            )
            counts.update(matches=self.matches, p_binomial_fixed_n=self.p_binomial)
        else:
            null = (
                "suspect independent of the key and probes chosen without it: the statistic under the true (u, ψ) "
                "is exchangeable with those under (u, ψ) drawn from the same distribution"
            )
            counts.update(n_null_keys=self.n_null_keys)
        return {
            "test": self.test,
            "null": null,
            **counts,
            "statistic": self.statistic,
            "z_approx": self.z,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "false_claim_bound": self.alpha,
            "decision": self.decision,
        }


@dataclass(frozen=True)
class LabelEvidence(_Claim):
    test: str
    n_classes: int
    null_rate: float  # 1/(k−1): P(match | disagreement) for a model independent of the key
    queries: int  # probes the suspect answered
    disagreements: int  # answers ≠ the upstream label
    matches: int  # answers = the watermark label
    p_value: float
    alpha: float
    claimed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "null": (
                "suspect independent of the key: P(its most likely class other than the upstream label = watermark "
                f"label) = 1/(k-1) = {self.null_rate:.4g}"
                if self.test == SEQUENTIAL_LABEL_TEST_PROBABILITIES
                else "suspect independent of the key: P(answer = watermark label | answer ≠ upstream label) "
                f"= 1/(k-1) = {self.null_rate:.4g}"
            ),
            "n_classes": self.n_classes,
            "queries": self.queries,
            "disagreements": self.disagreements,
            "matches": self.matches,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "false_claim_bound": self.alpha,
            "decision": self.decision,
        }


@dataclass(frozen=True)
class ProbabilityEvidence(_Claim):
    test: str
    n_probes: int
    n_null_keys: int
    statistic: float  # T under the true key
    null_mean: float
    null_std: float
    p_value: float  # exact Monte-Carlo rank p-value, ≥ 1/(n_null_keys + 1)
    p_gaussian: float  # Gaussian tail fitted to the wrong keys' T: approximate, for p below the MC floor
    amplitude: float  # least-squares amplitude of s(x) in the residual, in probability units
    labels_only: bool  # the suspect gave labels, tested as one-hot probabilities
    alpha: float
    claimed: bool
    half_wave_probes: int = 0  # probes where the baseline gives c* < QUIET_BELOW (0: statistic not used)
    half_wave_statistic: float | None = None
    half_wave_null_mean: float | None = None
    half_wave_null_std: float | None = None
    linear_rank: int = 0  # dimensions of the probes' linear span the linear statistic projects on (0: not used)
    linear_statistic: float | None = None
    linear_null_mean: float | None = None
    linear_null_std: float | None = None
    solve_rows: int = 0  # logged inputs of the reference solve (0: the solve statistic was not used)
    solve_statistic: float | None = None
    solve_null_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "null": "suspect and baseline independent of the key: given c*, the statistics under the true (v, φ) "
            "are exchangeable with those under (v, φ) drawn from the same distribution",
            "n_probes": self.n_probes,
            "n_null_keys": self.n_null_keys,
            "statistic": self.statistic,
            "null_mean": self.null_mean,
            "null_std": self.null_std,
            "p_value": self.p_value,
            "p_gaussian_approx": self.p_gaussian,
            "amplitude": self.amplitude,
            "labels_only": self.labels_only,
            "half_wave_probes": self.half_wave_probes,
            "half_wave_statistic": self.half_wave_statistic,
            "half_wave_null_mean": self.half_wave_null_mean,
            "half_wave_null_std": self.half_wave_null_std,
            "linear_rank": self.linear_rank,
            "linear_statistic": self.linear_statistic,
            "linear_null_mean": self.linear_null_mean,
            "linear_null_std": self.linear_null_std,
            "solve_rows": self.solve_rows,
            "solve_statistic": self.solve_statistic,
            "solve_null_max": self.solve_null_max,
            "alpha": self.alpha,
            "false_claim_bound": self.alpha,
            "decision": self.decision,
        }


# --- sequential label test --------------------------------------------------------------------------------


def _preference(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The hash-side boundary test's bet: (mine − theirs) / (mine + theirs) ∈ [−1, 1], 0 where both are 0.

    Odd in the swap of the two, so its mean is 0 when the keyed one is a fair coin. Sharpened variants
    ((a^c − b^c) / (a^c + b^c), c up to 16) and the plain difference a − b claimed no more copies on 20 keys
    (``bench/scratch_label_audit.py``, docs/benchmarks.md).
    """
    return np.divide(mine - theirs, mine + theirs, out=np.zeros(len(mine)), where=(mine + theirs) > 0)


def mixture_log_wealth(matches: np.ndarray, disagreements: np.ndarray, p0: float) -> np.ndarray:
    """log M of the Bernoulli(q)/Bernoulli(p0) likelihood ratio averaged over q ~ Uniform[p0, 1] (vectorised).

    M = ∫_{p0}^1 q^m (1−q)^(d−m) dq / ((1 − p0) · p0^m (1−p0)^(d−m)); M = 1 before any disagreement.
    """
    from scipy import special

    m = np.asarray(matches, dtype=np.float64)
    f = np.asarray(disagreements, dtype=np.float64) - m
    with np.errstate(divide="ignore"):
        tail = np.log(special.betaincc(m + 1, f + 1, p0))
    return np.asarray(special.betaln(m + 1, f + 1) + tail - np.log1p(-p0) - m * np.log(p0) - f * np.log1p(-p0))


def top_other_labels(probabilities: ArrayLike, original: ArrayLike, n_classes: int) -> np.ndarray:
    """Per row, the class other than ``original`` the suspect gives the most probability; ``original`` where that
    maximum is shared by several classes (no single answer: the label test then skips the probe).

    Why: a copy trained on a replaced label w often keeps the upstream label y on top and w second (the digits
    JBDA copies put 30–90 % of the mass outside y on w; docs/benchmarks.md). Under the null the key draws w
    uniformly among the k − 1 classes other than y, independently of the suspect, so P(the suspect's most likely
    class other than y = w) = 1/(k − 1) on every probe, as for a disagreeing label answer; the skip depends on
    the suspect's answers alone.
    """
    q = np.array(probabilities, dtype=np.float64)
    y = np.asarray(original, dtype=np.int64).ravel()
    if q.shape != (len(y), n_classes) or not np.all(np.isfinite(q)):
        raise ValueError(f"answers must be finite [{len(y)}, {n_classes}] probabilities, got shape {q.shape}")
    rows = np.arange(len(y))
    q[rows, y] = -np.inf
    top = q.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    tied = np.sum(q == q[rows, top][:, None], axis=1) > 1
    return np.where(tied, y, top).astype(np.int64)


class SequentialLabelTest:
    """Anytime-valid label test: feed answers as they come, stop as soon as ``claimed``.

    Only probes the suspect answers with a label other than the upstream's move the martingale; ``queries``
    counts every probe fed, which is what an audit pays. A suspect answering probabilities is asked for them and
    its answer on a probe is its most likely class other than the upstream label (``run(probabilities=True)``),
    so every probe moves the martingale.
    """

    def __init__(self, n_classes: int, *, alpha: float = 1e-3) -> None:
        if n_classes < 3:
            raise ValueError("the label test needs at least 3 classes (with 2, every disagreement matches)")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.n_classes = n_classes
        self.alpha = alpha
        self.null_rate = 1.0 / (n_classes - 1)
        self.queries = 0
        self.disagreements = 0
        self.matches = 0
        self.max_log_wealth = 0.0
        self.claimed = False
        self.probabilities = False  # the answers were the suspect's most likely other class (``run``)

    @property
    def p_value(self) -> float:
        return float(min(1.0, math.exp(-self.max_log_wealth)))

    def observe(self, original: ArrayLike, watermark: ArrayLike, suspect: ArrayLike) -> int:
        """Take answers in order until the test claims; return how many were consumed (the rest are unused)."""
        y, w, z = (np.asarray(a, dtype=np.int64).ravel() for a in (original, watermark, suspect))
        if not len(y) == len(w) == len(z):
            raise ValueError("original, watermark and suspect labels must have the same length")
        if np.any(w == y):
            raise ValueError("a probe's watermark label must differ from its original label")
        if self.claimed or len(y) == 0:
            return 0
        disagree = np.cumsum(z != y) + self.disagreements
        match = np.cumsum(z == w) + self.matches
        log_m = np.maximum.accumulate(mixture_log_wealth(match, disagree, self.null_rate))
        crossed = np.flatnonzero(log_m >= math.log(1.0 / self.alpha))
        used = int(crossed[0]) + 1 if len(crossed) else len(y)
        self.queries += used
        self.disagreements = int(disagree[used - 1])
        self.matches = int(match[used - 1])
        self.max_log_wealth = max(self.max_log_wealth, float(log_m[used - 1]))
        self.claimed = bool(len(crossed))
        return used

    def run(
        self,
        probes: LabelProbes,
        query: Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int = 1,
        max_queries: int | None = None,
        probabilities: bool = False,
    ) -> LabelEvidence:
        """Query the suspect on the probes in order, stopping at the first claim.

        ``query``: inputs → labels; with ``probabilities``, inputs → [n, k] probabilities, and each probe's answer
        is the suspect's most likely class other than the upstream label (``top_other_labels``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.probabilities |= probabilities
        limit = len(probes) if max_queries is None else min(len(probes), max_queries)
        start = 0
        while start < limit and not self.claimed:
            stop = min(start + batch_size, limit)
            original = probes.original_labels[start:stop]
            answers = np.asarray(query(probes.inputs[start:stop]))
            if probabilities:
                answers = top_other_labels(answers, original, self.n_classes)
            paid = self.queries + (stop - start)
            self.observe(original, probes.watermark_labels[start:stop], answers)
            self.queries = paid  # a batch is paid in full even when the claim came at its first row
            start = stop
        return self.evidence()

    def evidence(self) -> LabelEvidence:
        return LabelEvidence(
            test=SEQUENTIAL_LABEL_TEST_PROBABILITIES if self.probabilities else SEQUENTIAL_LABEL_TEST,
            n_classes=self.n_classes,
            null_rate=self.null_rate,
            queries=self.queries,
            disagreements=self.disagreements,
            matches=self.matches,
            p_value=self.p_value,
            alpha=self.alpha,
            claimed=self.claimed,
        )


# --- the watermark ----------------------------------------------------------------------------------------


class AnswerWatermark:
    """Marks label and probability answers under one secret, and verifies suspects against the same key.

    ``amplitude`` 0.05: the probability move, and the largest change an honest client sees in any probability;
    on digits 0.03 claimed fewer distilled copies from owner probes (11/20 vs 14/20 at α = 1e-3).
    ``frequency`` 5.8 rad per unit of <v, x>: 0.25 cycles per standard deviation (≈ 0.27) of a random
    projection of [0, 1]-scaled pixels (digits); at 1 cycle per std distilled copies carried the cosine only on
    the inputs they were trained on, at 0.1 the cosine blurs into the class structure. Other input scales:
    ``suggest_frequency(x_reference, 0.25)``.
    ``label_share`` 0.01: a 1,000-query thief then holds ≈ 10 marked answers, and four fitted ones reach
    p ≤ 1e-3; DAWN's 0.5% left some thieves with 1–2 (8/10 claimed vs 20/20); it costs honest label clients
    1% of their answers.
    ``significant_bits`` 13: inputs are rounded to a relative step of 2⁻¹³ ≈ 1.2e-4 before hashing. Exact
    re-encodings (JSON of the float32 or float64 value, any printer keeping ≥ 8 significant digits) always
    give the same key; lossy printers split rows whose values sit near a rounding midpoint (64 Gaussian values
    a row: 7.6% of rows at 7 digits, 48% at 6; digits' pixel/16 values: none). A coarser step would merge
    distinct inputs without removing the midpoints.
    ``margin_kept`` 0.5: after the move the top-1 margin keeps at least half its size, so a later rounding
    policy does not turn the move into a label change.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        n_classes: int,
        input_dim: int,
        amplitude: float = 0.05,
        frequency: float = 5.8,
        label_share: float = 0.01,
        significant_bits: int = 13,
        margin_kept: float = 0.5,
        boundary_margin: float = 0.0,
        boundary_share: float = 1.0,
        boundary_side: str = "hash",
        probability_classes: int = 1,
    ) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes (128 bits)")
        if n_classes < 2:
            raise ValueError(f"n_classes must be ≥ 2, got {n_classes}")
        if input_dim < 1:
            raise ValueError(f"input_dim must be ≥ 1, got {input_dim}")
        if not 0.0 < amplitude <= 0.5:
            raise ValueError(f"amplitude must be in (0, 0.5], got {amplitude}")
        if not (math.isfinite(frequency) and frequency > 0.0):
            raise ValueError(f"frequency must be a positive number, got {frequency}")
        if not 0.0 <= label_share <= 0.5:
            raise ValueError(f"label_share must be in [0, 0.5], got {label_share}")
        if not 1 <= significant_bits <= 23:
            raise ValueError(f"significant_bits must be in 1..23, got {significant_bits}")
        if not 0.0 <= margin_kept < 1.0:
            raise ValueError(f"margin_kept must be in [0, 1), got {margin_kept}")
        if not 0.0 <= boundary_margin < 1.0:
            raise ValueError(f"boundary_margin must be in [0, 1), got {boundary_margin}")
        if not 0.0 < boundary_share <= 1.0:
            raise ValueError(f"boundary_share must be in (0, 1], got {boundary_share}")
        if boundary_side not in BOUNDARY_SIDES:
            raise ValueError(f"boundary_side must be one of {BOUNDARY_SIDES}, got {boundary_side!r}")
        if probability_classes not in (1, 2):
            raise ValueError(f"probability_classes must be 1 or 2, got {probability_classes}")
        self.n_classes = n_classes
        self.input_dim = input_dim
        self.amplitude = amplitude
        self.frequency = frequency
        self.label_share = label_share
        self.significant_bits = significant_bits
        self.margin_kept = margin_kept
        self.boundary_margin = boundary_margin
        self.boundary_share = boundary_share
        self.boundary_side_mode = boundary_side
        # hash side: the input's 4th digest word; bits 1..63 below this make the side active, bit 0 its sign
        self._boundary_active = min(int(boundary_share * 2.0**63), 2**63 - 1)
        # |cos| ≥ θ on a share ``boundary_share`` of a uniform phase: P(|cos U| ≥ θ) = (2/π)·arccos θ
        self._boundary_threshold = math.cos(math.pi * boundary_share / 2)
        self._input_key = _subkey(bytes(secret), b"input")
        self._label_threshold = min(int(label_share * 2.0**64), 2**64 - 1)
        self.projection = _unit_vector(_subkey(bytes(secret), b"projection"), input_dim)
        self.phase = float(2 * np.pi * _uniforms(_subkey(bytes(secret), b"phase"), 1)[0])
        self.target_class = int.from_bytes(_subkey(bytes(secret), b"target-class")[:8], "big") % n_classes
        # The quadrature class (``probability_classes`` 2, needs k ≥ 3): sin instead of cos of the same keyed
        # projection, into a second keyed class c₂ ≠ c*. A copy that can only carry the part of the mark linear in
        # the input (a logistic copy) finds the cosine's linear part ∝ sin(f·μ + φ) and the sine's ∝ cos(f·μ + φ)
        # over inputs spread around μ: one of the two is large whatever the key's phase.
        offset = int.from_bytes(_subkey(bytes(secret), b"second-class")[:8], "big") % max(n_classes - 1, 1)
        self.second_class = (self.target_class + 1 + offset) % n_classes
        self.probability_classes = probability_classes if n_classes >= 3 else 1
        self.fingerprint = _subkey(bytes(secret), b"fingerprint").hex()[:16]
        self.boundary_projection = _unit_vector(_subkey(bytes(secret), b"boundary-projection"), input_dim)
        self.boundary_phase = float(2 * np.pi * _uniforms(_subkey(bytes(secret), b"boundary-phase"), 1)[0])

    def describe(self) -> dict[str, Any]:
        """Public parameters for a report (no key material beyond the fingerprint)."""
        return {
            "fingerprint": self.fingerprint,
            "n_classes": self.n_classes,
            "input_dim": self.input_dim,
            "amplitude": self.amplitude,
            "frequency": self.frequency,
            "label_share": self.label_share,
            "significant_bits": self.significant_bits,
            "margin_kept": self.margin_kept,
            "boundary_margin": self.boundary_margin,
            "boundary_share": self.boundary_share,
            "boundary_side": self.boundary_side_mode,
            "probability_classes": self.probability_classes,
        }

    @staticmethod
    def suggest_frequency(x_reference: ArrayLike, cycles_per_std: float = 0.25) -> float:
        """f giving ``cycles_per_std`` cycles per RMS standard deviation of a random projection of the data.

        Uses the mean feature variance (= the expected variance along a uniformly random direction), so the
        result does not depend on the key: the wrong keys of the probability test then share it exactly.
        """
        x = np.asarray(x_reference, dtype=np.float64)
        spread = math.sqrt(float(np.mean(np.var(x, axis=0))))
        if spread == 0.0:
            raise ValueError("the reference data has no spread")
        return 2 * math.pi * cycles_per_std / spread

    # --- inputs -------------------------------------------------------------------------------------------

    def _rows(self, x: ArrayLike) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise ValueError(f"inputs must be [n, {self.input_dim}], got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("inputs must be finite float32 numbers")
        return arr

    def canonicalize(self, x: ArrayLike) -> np.ndarray:
        """Rows as float32 with the mantissa rounded to ``significant_bits`` bits and −0.0 made 0.0."""
        arr = self._rows(x)
        drop = 23 - self.significant_bits
        # uint32 arithmetic cannot overflow here: a finite float32 is at most 0xFF7FFFFF, plus half a step
        # (≤ 2²¹) stays below 2³²; a carry into the exponent can make ±inf, refused below.
        bits = np.array(arr, dtype=np.float32, copy=True).view(np.uint32)
        if drop:
            bits += np.uint32(1 << (drop - 1))  # round half away from zero
            bits &= np.uint32(0xFFFFFFFF ^ ((1 << drop) - 1))
        bits[(bits & np.uint32(0x7FFFFFFF)) == 0] = 0  # −0.0 → 0.0
        out = bits.view(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError("inputs too close to the float32 range limit")
        return out

    def _digests(self, x: ArrayLike) -> np.ndarray:
        """[n, 4] big-endian uint64 words of HMAC(input key, dim ‖ canonical row bytes)."""
        canon = self.canonicalize(x).astype("<f4")
        base = hmac.new(self._input_key, self.input_dim.to_bytes(4, "big"), hashlib.sha256)
        raw = b"".join(_digest_after(base, row.tobytes()) for row in canon)  # a copy skips the key set-up
        return np.frombuffer(raw, dtype=">u8").reshape(-1, 4).astype(np.uint64)

    def canonical_key(self, x_row: ArrayLike) -> bytes:
        """The keyed 32-byte digest that decides everything the label mark does to this input."""
        canon = self.canonicalize(x_row)
        if len(canon) != 1:
            raise ValueError("canonical_key takes one row")
        return hmac.new(
            self._input_key, self.input_dim.to_bytes(4, "big") + canon.astype("<f4").tobytes(), hashlib.sha256
        ).digest()

    # --- label answers ------------------------------------------------------------------------------------

    def mark_labels(self, x: ArrayLike, labels: ArrayLike) -> MarkedLabels:
        """Replace the labels of the keyed share of inputs by a keyed other class (same input → same answer).

        ``labels`` are the upstream's labels; when the upstream returns only probabilities and the client's
        policy is label-only, pass their argmax.
        """
        return self._mark(self._digests(x), labels)

    def _labels(self, labels: ArrayLike, n: int) -> np.ndarray:
        y = np.asarray(labels, dtype=np.int64).ravel()
        if len(y) != n:
            raise ValueError(f"{n} inputs but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must be in 0..{self.n_classes - 1}")
        return y

    def _selection(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which inputs are marked, and by how many classes (1..k−1, mod k) their label moves."""
        marked = words[:, 0] < np.uint64(self._label_threshold)
        offset = 1 + (words[:, 1] % np.uint64(self.n_classes - 1)).astype(np.int64)
        return marked, offset

    def _mark(self, words: np.ndarray, labels: ArrayLike) -> MarkedLabels:
        y = self._labels(labels, len(words))
        marked, offset = self._selection(words)
        return MarkedLabels(labels=np.where(marked, (y + offset) % self.n_classes, y), marked=marked)

    def unmark_labels(self, x: ArrayLike, served: ArrayLike) -> np.ndarray:
        """The upstream labels behind served ones (the inverse of ``mark_labels``; selection and offset depend on
        the input only), so an audit can rebuild label probes from a query log that holds what was served."""
        words = self._digests(x)
        z = self._labels(served, len(words))
        marked, offset = self._selection(words)
        return np.where(marked, (z - offset) % self.n_classes, z)

    def label_probes(self, x_pool: ArrayLike, original_labels: ArrayLike) -> LabelProbes:
        """The marked inputs of a pool (e.g. a suspected client's logged queries), de-duplicated by canonical
        form (a repeated input is one piece of evidence, not several), in keyed pseudo-random order."""
        x = self._rows(x_pool)
        y = np.asarray(original_labels, dtype=np.int64).ravel()
        words = self._digests(x)
        mark = self._mark(words, y)
        idx = np.flatnonzero(mark.marked)
        _, first = np.unique(words[idx], axis=0, return_index=True)
        idx = idx[np.sort(first)]
        order = idx[np.argsort(words[idx, 2], kind="stable")]
        return LabelProbes(inputs=x[order], original_labels=y[order], watermark_labels=mark.labels[order])

    def verify_labels(self, probes: LabelProbes, suspect_labels: ArrayLike, *, alpha: float = 1e-3) -> LabelEvidence:
        """Fixed-n exact binomial test on all probes (decide n before querying; for stopping early use
        ``sequential_label_test``)."""
        if self.n_classes < 3:
            raise ValueError("the label test needs at least 3 classes")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        z = np.asarray(suspect_labels, dtype=np.int64).ravel()
        if len(z) != len(probes):
            raise ValueError(f"{len(probes)} probes but {len(z)} answers")
        if np.any(probes.watermark_labels == probes.original_labels):
            raise ValueError("a probe's watermark label must differ from its original label")
        p0 = 1.0 / (self.n_classes - 1)
        disagreements = int(np.sum(z != probes.original_labels))
        matches = int(np.sum(z == probes.watermark_labels))
        from scipy import stats

        p = float(stats.binom.sf(matches - 1, disagreements, p0)) if matches else 1.0
        return LabelEvidence(LABEL_TEST, self.n_classes, p0, len(z), disagreements, matches, p, alpha, p <= alpha)

    def sequential_label_test(self, *, alpha: float = 1e-3) -> SequentialLabelTest:
        return SequentialLabelTest(self.n_classes, alpha=alpha)

    # --- boundary label mark ------------------------------------------------------------------------------

    def _boundary_sides(self, x: np.ndarray, projections: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """[n, keys] side of each key's region: +1 where cos(f·<u, x> + ψ) ≥ θ, −1 where ≤ −θ, else 0."""
        s = np.cos(self.frequency * (x @ projections) + phases)
        theta = self._boundary_threshold
        return (s >= theta).astype(np.float64) - (s <= -theta).astype(np.float64)

    def _hash_sides(self, words: np.ndarray) -> np.ndarray:
        """[n] per-input side from the input's keyed digest: active on a share ``boundary_share`` (bits 1..63 of
        the 4th word), then +1 or −1 by its bit 0. DAWN's selection, offset and probe order use words 0–2, so
        the side is independent of them; each distinct canonical input draws a fresh fair sign."""
        w = words[:, 3]
        active = (w >> np.uint64(1)) < np.uint64(self._boundary_active)
        sign = np.where((w & np.uint64(1)) == 1, 1.0, -1.0)
        return np.where(active, sign, 0.0)

    def boundary_side(self, x: ArrayLike) -> np.ndarray:
        """[n] the key's side of each input (+1: the higher-numbered class gains, −1: the lower, 0: none): the
        region of the keyed cosine (``boundary_side`` "smooth") or the input's keyed hash ("hash")."""
        if self.boundary_side_mode == "hash":
            return self._hash_sides(self._digests(x))
        x64 = self._rows(x).astype(np.float64)
        return self._boundary_sides(x64, self.boundary_projection[:, None], np.array([self.boundary_phase]))[:, 0]

    def _top_two(self, probabilities: ArrayLike, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (n, self.n_classes) or not np.all(np.isfinite(p)):
            raise ValueError(f"probabilities must be finite [{n}, {self.n_classes}]")
        order = np.argsort(-p, axis=1, kind="stable")
        rows = np.arange(n)
        top, runner = order[:, 0], order[:, 1]
        total = np.maximum(p.sum(axis=1), 1e-300)  # margins in shares of the row, whatever the row sums to
        return top, runner, (p[rows, top] - p[rows, runner]) / total

    def boundary_band(self, probabilities: ArrayLike) -> np.ndarray:
        """[n] bool: the rows whose top-2 margin is below ``boundary_margin`` (where the boundary mark acts)."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2:
            raise ValueError(f"probabilities must be [n, {self.n_classes}], got shape {p.shape}")
        return np.asarray(self._top_two(p, len(p))[2] < self.boundary_margin)

    def mark_boundary_labels(
        self, x: ArrayLike, probabilities: ArrayLike, labels: ArrayLike | None = None
    ) -> MarkedLabels:
        """Near the decision boundary, answer the runner-up where the key's region says so.

        An input is in the band when the upstream's top-2 margin (p₁ − p₂, as a share of the row) is below
        ``boundary_margin``. With a = top-1, b = runner-up, the key's region side σ(x) (``boundary_side``):
        σ = +1 makes the higher-numbered of {a, b} the answer, σ = −1 the lower-numbered one, σ = 0 leaves a.
        So on one side of the keyed cosine the served boundary between every pair of classes moves into the
        lower class's band, on the other into the higher class's: a smooth, keyed wiggle of the boundary that a
        copy fitting the answers reproduces near its training inputs. ``labels`` (default: the top-1) are what
        the client would get otherwise (e.g. after its output policy); they are kept where nothing flips.
        """
        x64 = self._rows(x).astype(np.float64)
        n = len(x64)
        top, runner, margin = self._top_two(probabilities, n)
        y = top if labels is None else self._labels(labels, n)
        if self.boundary_margin <= 0.0 or n == 0:
            return MarkedLabels(labels=y, marked=np.zeros(n, dtype=bool))
        side = self.boundary_side(x64)
        higher = np.where(runner > top, 1.0, -1.0)  # +1 when the runner-up is the higher-numbered class
        flip = (margin < self.boundary_margin) & (side == higher)
        return MarkedLabels(labels=np.where(flip, runner, y), marked=flip)

    def verify_boundary(
        self,
        x_probe: ArrayLike,
        suspect_labels: ArrayLike,
        owner_probabilities: ArrayLike,
        *,
        alpha: float = 1e-3,
        n_null_keys: int = 1999,
        seed: int = 0,
        suspect_probabilities: ArrayLike | None = None,
    ) -> BoundaryEvidence:
        """Does the suspect's boundary follow the key's sides?

        With ``boundary_side`` "hash" the probes must be distinct and in the order the client sent them, and the
        test is the test martingale of ``_verify_hash_sides`` (``n_null_keys`` and ``seed`` unused; with
        ``suspect_probabilities``, the suspect's answers on the same probes, it bets by its preference). With
        "smooth", as follows. Probes: inputs chosen without the key; only those where the owner's top-2 margin is below
        ``boundary_margin`` count (elsewhere nothing was marked). Per probe, with (a, b) the owner's top two,
        e = +1 if the suspect answers the higher-numbered of them, −1 the lower, 0 another class; the residual
        r = e − e_owner (the owner answers a) keeps only where the suspect departs from the owner's unmarked
        answer. Statistic T = Σ rσ / √Σ (rσ)² with r centred and σ the key's region side. Null: the suspect
        and the probes are independent of the key; the wrong keys draw (u, ψ) from the key's distribution, so
        the true key's T is exchangeable with theirs and the rank p-value (1 + #{wrong keys with T ≥ the true
        key's}) / (N + 1) is exact (ties count against the claim). A client whose queries adapted to our answers
        makes its logged inputs depend on the key: docs/audits.md has the false-claim rate measured there.
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if n_null_keys < 1:
            raise ValueError(f"n_null_keys must be ≥ 1, got {n_null_keys}")
        if self.boundary_margin <= 0.0:
            raise ValueError("the boundary mark is off (boundary_margin 0)")
        x64 = self._rows(x_probe).astype(np.float64)
        n = len(x64)
        z = self._labels(suspect_labels, n)
        top, runner, margin = self._top_two(owner_probabilities, n)
        band = margin < self.boundary_margin
        if self.boundary_side_mode == "hash":
            q = None if suspect_probabilities is None else self._as_probabilities(suspect_probabilities, n)[0]
            return self._verify_hash_sides(x_probe, z, top, runner, band, alpha, q)
        x64, z, top, runner = x64[band], z[band], top[band], runner[band]
        hi, lo = np.maximum(top, runner), np.minimum(top, runner)
        e = (z == hi).astype(np.float64) - (z == lo).astype(np.float64)
        r = e - np.where(top == hi, 1.0, -1.0)
        moved = int(np.sum(r != 0))
        r = (r - r.mean())[:, None] if len(r) else r[:, None]

        def statistic(projections: np.ndarray, phases: np.ndarray) -> np.ndarray:
            return self._correlation(r, self._boundary_sides(x64, projections, phases))[0]

        true_t = statistic(self.boundary_projection[:, None], np.array([self.boundary_phase]))
        rng = np.random.default_rng(seed)
        null_t: list[np.ndarray] = []
        for start in range(0, n_null_keys, 256):  # chunks keep the [n, keys] arrays small
            m = min(256, n_null_keys - start)
            v = rng.standard_normal((self.input_dim, m))
            v /= np.linalg.norm(v, axis=0)
            null_t.append(statistic(v, rng.uniform(0.0, 2 * np.pi, m)))
        wrong = np.concatenate(null_t)
        t0 = float(true_t[0])
        p = float((1 + np.sum(wrong >= t0)) / (n_null_keys + 1)) if moved else 1.0
        std = float(wrong.std(ddof=1)) if n_null_keys > 1 else 0.0
        z_score = (t0 - float(wrong.mean())) / std if std > 0 else 0.0
        return BoundaryEvidence(t0, p, z_score, int(band.sum()), moved, n_null_keys, alpha, p <= alpha)

    def _verify_hash_sides(
        self,
        x_probe: ArrayLike,
        z: np.ndarray,
        top: np.ndarray,
        runner: np.ndarray,
        band: np.ndarray,
        alpha: float,
        q: np.ndarray | None = None,
    ) -> BoundaryEvidence:
        """The per-input (hash) side's test: a fair coin per new input under the null, taken in logged order.

        Relevant probes: in the band, the key's side active, and the suspect answering one of the owner's top
        two (a, b); all three are known before the input's side bit is looked at. The keyed choice there is b
        when the side favours b's number (higher or lower), else a. Null: the suspect is independent of the key.
        The side of a new canonical input is a fresh HMAC bit, fair and independent of every earlier input,
        answer and side, and of whether the input is relevant; so, in the order the client sent them, each
        relevant probe matches the keyed choice with probability exactly 1/2 given everything before, whatever
        the client chose to query from what it had been served (an adaptive client included) and whenever it
        stopped. The uniform-mixture Bernoulli likelihood ratio (q ∈ [1/2, 1]) is then a test martingale, and
        p = 1 / max_t M_t is valid by Ville's inequality (P(p ≤ α) ≤ α). A fixed-n binomial on the same counts
        is reported for reading only: it is exact when the number of relevant probes does not depend on the
        key, which a client that stops on what it was served can break. Repeats of an input carry its first
        side again, not a new coin: pass distinct inputs (the audit de-duplicates by canonical form).

        With the suspect's probabilities ``q``: the same mixture written as bets, M_t = ∫₀¹ Π_{s≤t} (1 + λ·x_s) dλ
        (with x_s = ±1 it is exactly the Bernoulli mixture above, q = (1 + λ)/2), but x_s is the suspect's signed
        preference between the two, (q_keyed − q_other) / (q_keyed + q_other) ∈ [−1, 1], on every band probe
        whose side is active (whatever the suspect's top-1). Under the null the keyed one of the two is a fair
        coin given everything before and given q (the suspect does not know the key), so E[x_s | past] = 0 and
        M is again a test martingale: a copy that follows the mark confidently and misses it hesitantly gains,
        an independent model gains nothing in expectation. The integral over λ is the average over
        ``BET_GRID`` midpoints (an average of test martingales is one, so the grid costs no validity).
        """
        side = self._hash_sides(self._digests(x_probe))
        higher = np.maximum(top, runner)
        keyed = np.where(np.where(runner == higher, 1.0, -1.0) == side, runner, top)
        relevant = band & (side != 0) & ((z == top) | (z == runner))
        hit = (z == keyed)[relevant]
        n_rel = int(relevant.sum())
        matches = int(hit.sum())
        if q is not None:
            active = np.flatnonzero(band & (side != 0))
            other = np.where(keyed == top, runner, top)
            steps = _preference(q[active, keyed[active]], q[active, other[active]])
            lams = BET_LAMBDAS
            log_paths = np.cumsum(np.log1p(np.clip(steps, -1.0, 1.0)[:, None] * lams[None, :]), axis=0)
            from scipy.special import logsumexp

            best = float(np.max(logsumexp(log_paths, axis=1) - math.log(len(lams)))) if len(active) else 0.0
            p = float(min(1.0, math.exp(-max(0.0, best))))
        elif n_rel:
            log_m = mixture_log_wealth(np.cumsum(hit), np.arange(1, n_rel + 1), 0.5)
            p = float(min(1.0, math.exp(-max(0.0, float(np.max(log_m))))))
        else:
            p = 1.0
        from scipy import stats

        p_bin = float(stats.binom.sf(matches - 1, n_rel, 0.5)) if matches else 1.0
        z_score = (matches - n_rel / 2) / math.sqrt(n_rel / 4) if n_rel else 0.0
        return BoundaryEvidence(
            statistic=float(matches / n_rel) if n_rel else 0.0,
            p_value=p,
            z=z_score,
            n_probes=int(band.sum()),
            n_moved=n_rel,
            n_null_keys=0,
            alpha=alpha,
            claimed=p <= alpha,
            test=BOUNDARY_HASH_TEST if q is None else BOUNDARY_HASH_WEIGHTED_TEST,
            matches=matches,
            p_binomial=p_bin,
        )

    # --- probability answers ------------------------------------------------------------------------------

    def signal(self, x: ArrayLike) -> np.ndarray:
        """s(x) = cos(f·<v, x> + φ) in [−1, 1], on the float32 inputs (class c*'s signal)."""
        return np.asarray(np.cos(self.frequency * (self._rows(x).astype(np.float64) @ self.projection) + self.phase))

    def _marked_classes(self) -> list[tuple[int, float]]:
        """(class, phase offset) of each class the probability mark moves: c* with the cosine, then (with two
        classes) c₂ with the sine, cos(θ − π/2)."""
        pairs = [(self.target_class, 0.0)]
        if self.probability_classes == 2:
            pairs.append((self.second_class, -math.pi / 2))
        return pairs

    def mark_probabilities(self, x: ArrayLike, probabilities: ArrayLike) -> MarkedProbabilities:
        """Move amplitude·s(x) of mass into class c* (out of it when negative), and with two classes
        amplitude·sin(…) into c₂ after it, keeping the top-1 label."""
        p_in = np.asarray(probabilities)
        if p_in.ndim != 2 or p_in.shape[1] != self.n_classes:
            raise ValueError(f"probabilities must be [n, {self.n_classes}], got shape {p_in.shape}")
        out_dtype = p_in.dtype if np.issubdtype(p_in.dtype, np.floating) else np.dtype(np.float64)
        p = p_in.astype(np.float64)
        if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p.sum(axis=1) <= 0):
            raise ValueError("probabilities must be finite, non-negative, with a positive sum per row")
        angle = self.frequency * (self._rows(x).astype(np.float64) @ self.projection) + self.phase
        if len(angle) != len(p):
            raise ValueError(f"{len(angle)} inputs but {len(p)} probability rows")
        if len(p) == 0:
            return MarkedProbabilities(p_in.astype(out_dtype), 0.0, np.ones(0))
        current, scale = p_in, np.ones(len(p))
        for c, offset in self._marked_classes():
            current, step_scale = self._move_mass(current, np.cos(angle + offset), c, out_dtype)
            scale = np.minimum(scale, step_scale)
        max_change = float(np.max(np.abs(current.astype(np.float64) - p)))
        return MarkedProbabilities(probabilities=current, max_change=max_change, scale=scale)

    def served_for_signal(self, probabilities: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The probabilities the mark serves if class c*'s signal were ``s`` [n] (any key's: the solve
        template computes what every wrong key would have served, ``audit.solve_template``)."""
        p = np.asarray(probabilities, dtype=np.float64)
        return self._move_mass(p, s, self.target_class, np.dtype(np.float64))[0]

    def _move_mass(
        self, p_in: np.ndarray, s: np.ndarray, c: int, out_dtype: np.dtype[Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One class's move: amplitude·s of mass into class c, out of the others in proportion to them, shrunk
        per row so the top-1 label holds with ``margin_kept`` of its margin. Returns (answers, the shrink)."""
        p = p_in.astype(np.float64)
        n, k = len(p), self.n_classes
        rest = p.sum(axis=1) - p[:, c]
        delta = np.clip(self.amplitude * s, -p[:, c], rest)  # c stays within [0, row sum]
        share = np.where(rest[:, None] > 0, p / np.where(rest > 0, rest, 1.0)[:, None], 1.0 / (k - 1))
        share[:, c] = 0.0
        move = -delta[:, None] * share
        move[:, c] = delta

        # the largest λ ≤ 1 keeping top − rival ≥ margin_kept·gap for every rival; each difference is linear in λ
        rows = np.arange(n)
        top = np.argmax(p, axis=1)
        top_p = p[rows, top]
        rivals = np.where(np.arange(k)[None, :] == top[:, None], -np.inf, p)
        gap = top_p - rivals.max(axis=1)
        closing = move - move[rows, top][:, None]  # how fast each rival closes in on the top class
        room = (top_p - gap * self.margin_kept)[:, None] - p
        with np.errstate(divide="ignore", invalid="ignore"):
            limits = np.where(closing > 0, room / closing, np.inf)
        limits[rows, top] = np.inf
        scale = np.clip(np.min(limits, axis=1), 0.0, 1.0)

        out = np.maximum(p + scale[:, None] * move, 0.0).astype(out_dtype)
        bad = np.argmax(out, axis=1) != top
        for _ in range(60):  # float rounding at the boundary: halve until the argmax holds (then exact copy)
            if not bad.any():
                break
            scale[bad] *= 0.5
            out[bad] = np.maximum(p[bad] + scale[bad, None] * move[bad], 0.0).astype(out_dtype)
            bad = np.argmax(out, axis=1) != top
        if bad.any():
            scale[bad] = 0.0
            out[bad] = p_in[bad].astype(out_dtype)
        if not np.array_equal(np.argmax(out, axis=1), top):
            raise AssertionError("the probability mark changed a top-1 label")
        return out, scale

    def verify_probabilities(
        self,
        x_probe: ArrayLike,
        suspect: ArrayLike,
        *,
        baseline: ArrayLike | None = None,
        alpha: float = 1e-3,
        n_null_keys: int = 1999,
        seed: int = 0,
        solve: SolveReference | None = None,
    ) -> ProbabilityEvidence:
        """Is the keyed cosine in the suspect's class-c* probability on the probes?

        ``suspect``: [n, k] probabilities, or [n] labels (tested one-hot). ``baseline``: the owner's unmarked
        answers on the same probes (same forms), subtracted before the test; it must not depend on the key.
        ``n_null_keys`` 1999: the p-value's floor is 1/2000 = 5e-4, below α = 1e-3 with one rank to spare.
        ``alpha`` 1e-3: the rank p-value is exact on average over keys, but for a given key null models can be
        flagged together (module docstring).
        ``seed`` draws the wrong keys (only the p-value's Monte-Carlo noise depends on it).

        Three statistics, one calibration. *cosine*: T of the centred class-c* residual against s(x) on every
        probe. *half-wave* (with probability answers and a probability baseline): on the probes where the
        baseline gives c* less than ``QUIET_BELOW`` (where the served move is amplitude·max(s, 0), the
        negative half being clipped at zero probability), T of the log-residual log(q + ε) − log(b + ε) of c*
        against max(s, 0). *linear* (probability answers, ≥ ``LINEAR_MIN_PROBES`` probes): the correlation of
        the class-c* residual with s(x) after both are projected on the probes' linear span (a constant and
        their top principal directions, at most one per ``LINEAR_PROBES_PER_DIM`` probes): a copy that can only
        represent a linear function of the input (equation solving's logistic copy) learns the linear part of
        the cosine and nothing else, and the projection drops the part of its residual that no key explains
        (its own approximation error of the owner). The wrong keys share c* and draw (v, φ) (the test is
        conditional on c*, which is derived independently of v and φ, so the quiet probes are the same for
        every key); every key gets every statistic, each turned into its rank p-value among all N + 1 keys,
        and the combined statistic is the smallest of them, ties broken by their mean (a key at the floor of
        one statistic and strong on the others ranks above one at the floor of one alone). Its rank among the
        N + 1 keys is again exact, whatever the combination, as long as every key gets the same one: no
        Bonferroni factor, the wrong keys calibrate the statistics jointly. With two marked classes
        (``probability_classes`` 2) each statistic sums its numerator and squared normaliser over c* (cosine) and
        c₂ (sine), and the c*-only three are kept beside them: the smallest of six rank p-values, same rule.

        ``solve`` (the reference solve on the suspected clients' logged inputs, ``audit.solve_template``; with
        probability answers): a further statistic, the suspect's class-c* logit departure from the reference
        solve against each key's *solve template* (what a least-squares solve of that key's marked answers
        changes), calibrated with the others by the same rule.
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if n_null_keys < 1:
            raise ValueError(f"n_null_keys must be ≥ 1, got {n_null_keys}")
        x = self._rows(x_probe).astype(np.float64)
        if len(x) < 3:
            raise ValueError("need at least 3 probes")
        answers, labels_only = self._as_probabilities(suspect, len(x))
        base, base_labels = self._as_probabilities(baseline, len(x)) if baseline is not None else (None, True)
        residual = answers - (base if base is not None else 0.0)
        residual = residual - residual.mean(axis=0)
        basis = _linear_basis(x) if not labels_only and len(x) >= LINEAR_MIN_PROBES else None
        use_linear = basis is not None
        marked = [
            _ClassView.of(c, off, residual, answers, base, base_labels or labels_only, basis)
            for c, off in self._marked_classes()
        ]
        use_half = any(view.half for view in marked)

        def statistics(v: np.ndarray, phases: np.ndarray) -> list[np.ndarray]:
            """Per key: cosine, half-wave and linear statistics, summed over the marked classes (numerators and
            squared normalisers added), and with two classes the same three for c* alone (a copy that learnt
            one class's part better is not diluted by the other)."""
            angle = self.frequency * (x @ v) + phases
            parts = [view.parts(np.cos(angle + view.offset), basis) for view in marked]
            out = [_combine(parts)]
            if len(parts) == 2:
                out.append(_combine(parts[:1]))
            return [t for triple in out for t in triple]

        true_stats = statistics(self.projection[:, None], np.array([self.phase]))
        amplitude = self._correlation(marked[0].column, self.signal(x)[:, None])[1]
        rng = np.random.default_rng(seed)
        null_stats: list[list[np.ndarray]] = []
        keys_v, keys_phase = [self.projection[:, None]], [np.array([self.phase])]
        for start in range(0, n_null_keys, 256):  # chunks keep the [n, keys] arrays small
            m = min(256, n_null_keys - start)
            v = rng.standard_normal((self.input_dim, m))
            v /= np.linalg.norm(v, axis=0)
            phases = rng.uniform(0.0, 2 * np.pi, m)
            null_stats.append(statistics(v, phases))
            keys_v.append(v)
            keys_phase.append(phases)
        # index 0: the true key; per statistic: cosine, half-wave, linear (then the same for c* alone)
        columns = [np.concatenate([true_stats[i], *(t[i] for t in null_stats)]) for i in range(len(true_stats))]
        used = [i for i in range(len(columns)) if (i % 3 != 1 or use_half) and (i % 3 != 2 or use_linear)]
        use_solve = solve is not None and not labels_only
        if use_solve:
            assert solve is not None
            all_v, all_phase = np.concatenate(keys_v, axis=1), np.concatenate(keys_phase)
            angle = self.frequency * (solve.x @ all_v) + all_phase
            solve_templates = solve.templates(self.served_for_signal, self.target_class, angle, x)
            columns.append(solve_statistics(solve.departure(x, answers, self.target_class), solve_templates))
            used.append(len(columns) - 1)
        ranks = [_rank_p(columns[i]) for i in used]
        smallest, mean_rank = np.min(ranks, axis=0), np.mean(ranks, axis=0)
        # (1 + #{wrong keys at least as extreme}) / (N + 1), ordered by the smallest rank p, then by the mean
        as_extreme = (smallest < smallest[0]) | ((smallest == smallest[0]) & (mean_rank <= mean_rank[0]))
        p_mc = float(np.mean(as_extreme))
        all_cos, all_half, all_lin = columns[0], columns[1], columns[2]
        from scipy import stats

        def gaussian(values: np.ndarray) -> tuple[float, float, float]:
            mean, std = float(values[1:].mean()), float(values[1:].std(ddof=1)) if n_null_keys > 1 else 1.0
            tail = float(stats.norm.sf((values[0] - mean) / std)) if std > 0 else float(values[0] <= mean)
            return mean, std, tail

        mean, std, p_gauss = gaussian(all_cos)
        half_mean, half_std, p_half = gaussian(all_half) if use_half else (0.0, 0.0, 1.0)
        lin_mean, lin_std, p_lin = gaussian(all_lin) if use_linear else (0.0, 0.0, 1.0)
        p_gauss = min(1.0, len(ranks) * min(p_gauss, p_half, p_lin))  # Bonferroni over the approximate tails
        return ProbabilityEvidence(
            test=PROBABILITY_TEST,
            n_probes=len(x),
            n_null_keys=n_null_keys,
            statistic=float(all_cos[0]),
            null_mean=mean,
            null_std=std,
            p_value=p_mc,
            p_gaussian=p_gauss,
            amplitude=float(amplitude[0]),
            labels_only=labels_only,
            alpha=alpha,
            claimed=p_mc <= alpha,
            half_wave_probes=sum(int(view.quiet.sum()) for view in marked if view.half),
            half_wave_statistic=float(all_half[0]) if use_half else None,
            half_wave_null_mean=half_mean if use_half else None,
            half_wave_null_std=half_std if use_half else None,
            linear_rank=basis.shape[1] if basis is not None else 0,
            linear_statistic=float(all_lin[0]) if use_linear else None,
            linear_null_mean=lin_mean if use_linear else None,
            linear_null_std=lin_std if use_linear else None,
            solve_rows=len(solve.x) if solve is not None and use_solve else 0,
            solve_statistic=float(columns[-1][0]) if use_solve else None,
            solve_null_max=float(np.max(columns[-1][1:])) if use_solve and n_null_keys else None,
        )

    def _as_probabilities(self, answers: ArrayLike, n: int) -> tuple[np.ndarray, bool]:
        a = np.asarray(answers)
        if a.ndim == 1:
            labels = a.astype(np.int64)
            if len(labels) != n or (n and (labels.min() < 0 or labels.max() >= self.n_classes)):
                raise ValueError(f"labels must be {n} values in 0..{self.n_classes - 1}")
            return _one_hot(labels, self.n_classes), True
        if a.shape != (n, self.n_classes) or not np.all(np.isfinite(a)):
            raise ValueError(f"answers must be finite [{n}, {self.n_classes}] probabilities, got shape {a.shape}")
        return a.astype(np.float64), False

    @staticmethod
    def _correlation(residual: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per column: T = Σ r·s / √Σ (r·s)² and the least-squares amplitude Σ r·s / Σ s²."""
        prod = residual * signal
        total = prod.sum(axis=0)
        norm = np.sqrt(np.sum(prod**2, axis=0))
        t = np.divide(total, norm, out=np.zeros_like(total), where=norm > 0)
        return t, total / np.maximum(np.sum(signal**2, axis=0), 1e-300)


@dataclass(frozen=True)
class _ClassView:
    """What ``verify_probabilities`` needs of one marked class, computed once for every key."""

    offset: float  # the class's phase offset: 0 for c* (cosine), −π/2 for c₂ (sine)
    column: np.ndarray  # [n, 1] the centred residual of the class
    quiet: np.ndarray  # [n] bool: the baseline gives the class < QUIET_BELOW
    half: bool  # the half-wave statistic runs (≥ 3 quiet probes)
    log_residual: np.ndarray  # [quiet, 1] the centred log-residual on the quiet probes
    linear_residual: np.ndarray | None  # [rank, 1] the residual's coordinates in the probes' linear span

    @classmethod
    def of(
        cls,
        c: int,
        offset: float,
        residual: np.ndarray,
        answers: np.ndarray,
        base: np.ndarray | None,
        no_half: bool,
        basis: np.ndarray | None,
    ) -> _ClassView:
        column = residual[:, [c]]
        quiet = np.zeros(len(residual), dtype=bool) if base is None or no_half else base[:, c] < QUIET_BELOW
        half = int(quiet.sum()) >= 3 and base is not None
        log_residual = np.zeros((0, 1))
        if half and base is not None:
            log_residual = (np.log(answers[quiet, c] + LOG_FLOOR) - np.log(base[quiet, c] + LOG_FLOOR))[:, None]
            log_residual = log_residual - log_residual.mean()
        linear = basis.T @ column if basis is not None else None
        return cls(offset, column, quiet, half, log_residual, linear)

    def parts(self, s: np.ndarray, basis: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """[keys] numerators and squared normalisers of the cosine, half-wave and linear statistics for the
        class's signal ``s`` [n, keys] (summed over classes by ``_combine``)."""
        prod = self.column * s
        zero = np.zeros(s.shape[1])
        half_num, half_den = zero, zero
        if self.half:
            h = np.maximum(s[self.quiet], 0.0)
            h_prod = self.log_residual * (h - h.mean(axis=0))
            half_num, half_den = h_prod.sum(axis=0), np.sum(h_prod**2, axis=0)
        lin_num, lin_den = zero, zero
        if basis is not None and self.linear_residual is not None:
            s_coords = basis.T @ s  # <P r, P s> with P = B Bᵀ (B orthonormal, orthogonal to the constant)
            lin_num, lin_den = (self.linear_residual.T @ s_coords)[0], np.sum(s_coords**2, axis=0)
        return prod.sum(axis=0), np.sum(prod**2, axis=0), half_num, half_den, lin_num, lin_den


def _combine(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cosine (T = Σ rs / √Σ (rs)²), half-wave (the same on the log-residual) and linear (<P r, P s> / ‖P s‖)
    statistics over the classes in ``parts``: numerators and squared normalisers added (one class: exactly the
    single-class statistics)."""
    total = [sum(p[i] for p in parts) for i in range(6)]
    out = []
    for num, den in ((total[0], total[1]), (total[2], total[3])):
        norm = np.sqrt(den)
        out.append(np.divide(num, norm, out=np.zeros_like(num), where=norm > 0))
    out.append(total[4] / np.maximum(np.sqrt(total[5]), 1e-300))
    return out[0], out[1], out[2]


def _linear_basis(x: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning the probes' centred linear span: their top principal directions, at most
    one per ``LINEAR_PROBES_PER_DIM`` probes (with fewer probes than dimensions the span would hold every
    function of the probes and the projection would drop nothing). Depends on the probes only, not the key."""
    centred = x - x.mean(axis=0)
    u, sv, _ = np.linalg.svd(centred, full_matrices=False)
    keep = int(min(np.sum(sv > sv[0] * 1e-8), len(x) // LINEAR_PROBES_PER_DIM)) if len(sv) and sv[0] > 0 else 0
    return u[:, : max(keep, 1)]


def _rank_p(values: np.ndarray) -> np.ndarray:
    """Per entry, the share of all entries at least as large (itself included): the rank p-value of each key."""
    ordered = np.sort(values)
    return (len(values) - np.searchsorted(ordered, values, side="left")) / len(values)


def probability_probes(x_reference: ArrayLike, n: int, *, seed: int = 0, mix: float = 0.0) -> np.ndarray:
    """``n`` probe inputs drawn from the owner's reference data without looking at any key.

    Rows are drawn without replacement while they last; beyond that (or for a share ``mix`` of the probes)
    a probe is a convex combination of two random reference rows (weights uniform in [0.25, 0.75], so the
    probe stays between two natural inputs rather than on top of one).
    """
    x = np.asarray(x_reference, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("x_reference must be [m ≥ 2, d]")
    if n < 1 or not 0.0 <= mix <= 1.0:
        raise ValueError("need n ≥ 1 and mix in [0, 1]")
    rng = np.random.default_rng(seed)
    n_rows = min(len(x), int(round(n * (1.0 - mix))))
    rows = x[rng.choice(len(x), n_rows, replace=False)]
    n_mixed = n - n_rows
    a, b = rng.integers(0, len(x), n_mixed), rng.integers(0, len(x), n_mixed)
    lam = rng.uniform(0.25, 0.75, n_mixed).astype(np.float32)[:, None]
    return np.concatenate([rows, lam * x[a] + (1 - lam) * x[b]]).astype(np.float32)
