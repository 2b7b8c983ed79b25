"""Watermark verification (EWE): is a suspect answering the owner's watermarked inputs with the target class?

Jia, Choquette-Choo, Chandrasekaran, Papernot, "Entangled Watermarks as a Defense against Model Extraction",
USENIX Security 2021 (arXiv 2002.12200). EWE claims ownership "with 95% confidence with less than 100 queries"
to a stolen copy. The official code contains no verification (docs/research.md "Audit: EWE watermark"); the paper is
reported (unverified) to use a one-sided test of the suspect's watermark success rate against the rate of
models without the watermark. What we do:

1. **Null rate, from reference models** (``calibrate_null``). The owner trains a few models *without* the
   watermark and counts how many of the key's n watermarked inputs each answers with the target class,
   k_r of n. The null bound is the CONSERVATIVE

       p0 = min(1, max_r CP_upper(k_r, n; 99%) + margin),

   the largest one-sided 99% Clopper–Pearson upper bound over the reference models (covers each model's
   sampling error on n inputs; taking the max rather than pooling covers part of the spread between models),
   plus an additive ``margin`` for models unlike the references. The references must be trained on data the
   victim was NOT trained on: models that trained on the key's source images, or on the same data the
   triggers were optimised against, answer them "source" more reliably than an outsider's model does
   (measured on digits: up to 0.74 target rate for an independent model vs 0.00 for owner-data references,
   on the 3→8 pair). The calibration is only as good as the reference population: see ``NullCalibration``.

   **Key selection** (``select_key_inputs``; the registration does it by default): part of the reference models
   choose the key inputs the test uses (those the owner answers "target" and they do not), and the bound is
   computed on the *other* references only, on the chosen inputs. A bound on the choosing models would be
   biased low; on held-out ones it is as valid as on the whole key. What it cannot do is replace the model as
   the unit of replication: per-input null rates with a Poisson-binomial test assume a clean model's answers are
   independent across inputs, and on MNIST the nulls' key counts were 300× overdispersed against that
   (docs/audits.md "Key selection at registration").

2. **Sequential test** (``WatermarkVerifier``). The key's inputs are queried one at a time (or in batches) in
   a seeded random order; X_i = 1 when the answer is the target class. H0: the suspect answers target with
   probability ≤ p0 per query, independently (the inputs are i.i.d. draws of the trigger distribution, as
   EWE and a binomial test assume; strictly, the triggers are optimised in one batch, which couples them
   a little). Re-testing a fixed-n binomial p-value after every query would inflate
   the false-claim rate (optional stopping), so the evidence is a test martingale instead:

   - ``test="mixture"`` (default): the likelihood ratio of Bernoulli(q) to Bernoulli(p0) averaged over
     q ~ Uniform[p0, 1] (Robbins' mixture SPRT), in closed form through the regularised incomplete beta;
   - ``test="sprt"``: Wald's likelihood ratio for one stated alternative q = ``alternative_rate``.

   Under H0 either is a non-negative supermartingale starting at 1, so by Ville's inequality
   P(sup_t M_t ≥ 1/α) ≤ α, and p_t = min(1, 1 / max_{s≤t} M_s) is an always-valid p-value: we may stop the
   moment p_t < α ("ownership claimed") at any data-dependent time. Otherwise the audit stops when
   ``max_queries``, the key or the suspect's budget is exhausted ("not claimed").

Differences from EWE / the research notes: EWE reports the number of queries a fixed-n test needs (notes
§2.3, unverified); ours is sequential and stays valid under early stopping, at a small price in queries
against a fixed-n test planned for the right rate. docs/research.md ("Audit: published bars") suggests an exact
binomial test on a null calibrated on ≥ 30 clean models; we calibrate on however many references the owner
provides (the tests use 6) and say so in the evidence. The Clopper–Pearson interval reported for the
suspect's success rate is descriptive and not adjusted for the data-dependent stopping.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import special, stats

from audit.suspects.base import BudgetExceeded, Suspect
from audit.watermark_key import WatermarkKey

CLAIMED = "ownership claimed"
NOT_CLAIMED = "not claimed"
TESTS = ("mixture", "sprt")


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided upper confidence bound of a binomial rate (exact; 1.0 when every trial succeeded)."""
    return 1.0 if k >= n else float(stats.beta.ppf(confidence, k + 1, n - k))


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    lo = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1.0 - tail, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class NullCalibration:
    """The target-class rate of non-watermarked reference models on a key, and the bound the test uses.

    ``bound`` = min(1, max_r CP_upper(k_r, n; ``confidence``) + ``margin``). A null this conservative still
    only covers models like the references: with R references, an unseen independent model exceeds the
    largest reference rate with probability up to 1/(R+1) before the Clopper–Pearson and margin terms.
    More, and more varied, references (WRT uses 20–30) make the claim stronger. Measured on one digits key,
    independent 32-unit MLPs answered up to 0.52 of the key "target" while (128, 64) MLPs on the same data
    answered ≤ 0.02: the null depends on who the independent party is, so the references should span the
    architectures and data sizes a plausible independent model would have.
    """

    counts: tuple[int, ...]  # per reference model: key inputs answered with the target class
    n_inputs: int
    confidence: float
    margin: float
    key_fingerprint: str | None = None
    references: tuple[str, ...] = ()  # what each reference model was (free text, for the report)
    # Key inputs the test queries (indices into the key; None: all of them), chosen at registration by
    # ``select_key_inputs`` on models that are NOT among the ``counts`` references; ``selection`` says how.
    selected: tuple[int, ...] | None = None
    selection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.counts:
            raise ValueError("need at least one reference model")
        if self.selected is not None and (
            len(self.selected) != self.n_inputs
            or len(set(self.selected)) != len(self.selected)
            or any(i < 0 for i in self.selected)
        ):
            raise ValueError("selected must list n_inputs distinct key indices")
        if self.n_inputs <= 0 or any(not 0 <= k <= self.n_inputs for k in self.counts):
            raise ValueError("every count must be within 0..n_inputs and n_inputs positive")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")

    @property
    def rates(self) -> list[float]:
        return [k / self.n_inputs for k in self.counts]

    @property
    def pooled_rate(self) -> float:
        return sum(self.counts) / (len(self.counts) * self.n_inputs)

    @property
    def bound(self) -> float:
        worst = max(clopper_pearson_upper(k, self.n_inputs, self.confidence) for k in self.counts)
        return min(1.0, worst + self.margin)

    def test_inputs(self, key: WatermarkKey) -> np.ndarray:
        """The key inputs the test queries: the selected ones, or the whole key."""
        if self.selected is None:
            return key.inputs
        if max(self.selected, default=-1) >= len(key.inputs):
            raise ValueError("the null calibration selects key inputs this key does not have")
        return key.inputs[np.asarray(self.selected, dtype=np.int64)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": f"max over reference models of the one-sided {self.confidence:.0%} Clopper–Pearson upper "
            f"bound, plus margin {self.margin}",
            "counts": list(self.counts),
            "n_inputs": self.n_inputs,
            "n_reference_models": len(self.counts),
            "rates": self.rates,
            "pooled_rate": self.pooled_rate,
            "confidence": self.confidence,
            "margin": self.margin,
            "bound": self.bound,
            "key_fingerprint": self.key_fingerprint,
            "references": list(self.references),
            "selected": None if self.selected is None else list(self.selected),
            "selection": self.selection,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NullCalibration:
        return cls(
            counts=tuple(int(k) for k in d["counts"]),
            n_inputs=int(d["n_inputs"]),
            confidence=float(d["confidence"]),
            margin=float(d["margin"]),
            key_fingerprint=d.get("key_fingerprint"),
            references=tuple(d.get("references", ())),
            selected=None if d.get("selected") is None else tuple(int(i) for i in d["selected"]),
            selection=d.get("selection"),
        )


def calibrate_null(
    key: WatermarkKey,
    references: Sequence[Suspect],
    *,
    confidence: float = 0.99,
    margin: float = 0.10,
    descriptions: Sequence[str] | None = None,
    selected: Sequence[int] | None = None,
    selection: dict[str, Any] | None = None,
) -> NullCalibration:
    """Query every reference model (trained without the watermark, on data the victim did not see) on all
    key inputs and build the null bound.

    ``confidence`` 0.99: per-model sampling error is bounded at 1%, well inside the test's α = 5%.
    ``margin`` 0.10: on digits (1→7, three keys, 30 independent models on other data), the worst independent
    model answered 0.21 "target" where the references' largest Clopper–Pearson bound was 0.14, i.e. 0.07
    above; 0.10 covers that with some room. It does not cover everything: see ``NullCalibration``.
    """
    chosen = None if selected is None else tuple(int(i) for i in selected)
    inputs = key.inputs if chosen is None else key.inputs[np.asarray(chosen, dtype=np.int64)]
    counts = tuple(int(np.sum(ref.labels(inputs) == key.target_class)) for ref in references)
    return NullCalibration(
        counts=counts,
        n_inputs=len(inputs),
        confidence=confidence,
        margin=margin,
        key_fingerprint=key.fingerprint(),
        references=tuple(descriptions or ()),
        selected=chosen,
        selection=selection,
    )


def select_key_inputs(owner_hits: np.ndarray, selector_hits: np.ndarray, *, max_selector_hits: int = 0) -> np.ndarray:
    """Indices of the key inputs a registration keeps: the owner answers them "target" (``owner_hits`` [n], bool)
    and at most ``max_selector_hits`` of the selection models answer them "target" (``selector_hits`` [m, n]).

    Triggers that clean models already answer "target" carry no evidence (a clean suspect answers them so too),
    and they set the null bound. The selection models must be models the null bound is NOT computed on: the
    kept inputs are, by construction, ones the selection models rarely answer "target", so a bound on those
    same models would be biased low; on held-out reference models it is as valid as on the whole key.
    """
    owner = np.asarray(owner_hits, dtype=bool)
    votes = np.asarray(selector_hits, dtype=bool)
    if owner.ndim != 1 or votes.ndim != 2 or votes.shape[1] != len(owner):
        raise ValueError(f"need owner_hits [n] and selector_hits [m, n], got {owner.shape} and {votes.shape}")
    if max_selector_hits < 0:
        raise ValueError("max_selector_hits must be >= 0")
    return np.flatnonzero(owner & (votes.sum(axis=0) <= max_selector_hits))


def log_wealth(
    successes: np.ndarray | int, trials: np.ndarray | int, p0: float, test: str, alternative_rate: float | None = None
) -> np.ndarray:
    """log M_t of the test martingale after ``successes`` target answers in ``trials`` queries (vectorised)."""
    s = np.asarray(successes, dtype=np.float64)
    f = np.asarray(trials, dtype=np.float64) - s
    if test == "sprt":
        if alternative_rate is None:
            raise ValueError("test='sprt' needs alternative_rate")
        q = alternative_rate
        return np.asarray(s * np.log(q / p0) + f * (np.log1p(-q) - np.log1p(-p0)))
    if test != "mixture":
        raise ValueError(f"unknown test {test!r}")
    # ∫_{p0}^1 q^s (1-q)^f dq / (1-p0), divided by the null likelihood p0^s (1-p0)^f
    with np.errstate(divide="ignore"):
        tail = np.log(special.betaincc(s + 1, f + 1, p0))
    return np.asarray(special.betaln(s + 1, f + 1) + tail - np.log1p(-p0) - s * np.log(p0) - f * np.log1p(-p0))


def always_valid_p_values(
    answers_hit: np.ndarray, p0: float, test: str = "mixture", alternative_rate: float | None = None
) -> np.ndarray:
    """p_t = min(1, 1/max_{s≤t} M_s) along a 0/1 sequence of target hits (last axis = time)."""
    hits = np.asarray(answers_hit, dtype=np.float64)
    s = np.cumsum(hits, axis=-1)
    t = np.arange(1, hits.shape[-1] + 1)
    best = np.maximum.accumulate(np.maximum(log_wealth(s, t, p0, test, alternative_rate), 0.0), axis=-1)
    return np.asarray(np.exp(-best))


@dataclass
class WatermarkEvidence:
    """What a watermark audit found; ``to_dict`` is the report body."""

    decision: str
    p_value: float
    test: str
    alpha: float
    queries_used: int
    successes: int
    success_rate: float | None  # None when no query could be made
    success_rate_ci95: tuple[float, float]
    null_rate: float | None  # pooled rate of the reference models; None when the caller stated a bound
    null_rate_bound: float  # p0 of the test
    stopped_because: str
    trajectory: list[tuple[int, float]]  # (queries used, always-valid p-value) after every answer
    key_fingerprint: str
    source_class: int
    target_class: int
    suspect: dict[str, str]
    parameters: dict[str, Any]
    null_calibration: dict[str, Any] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def claimed(self) -> bool:
        return self.decision == CLAIMED

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "ewe-watermark",
            "decision": self.decision,
            "p_value": self.p_value,
            "test": self.test,
            "null_hypothesis": f"P(answer = target class {self.target_class} | watermarked input) <= "
            f"{self.null_rate_bound:.6g}, independently per query",
            "alpha": self.alpha,
            "queries_used": self.queries_used,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "success_rate_ci95": list(self.success_rate_ci95),
            "success_rate_ci95_note": "Clopper–Pearson, descriptive: not adjusted for sequential stopping",
            "null_rate": self.null_rate,
            "null_rate_bound": self.null_rate_bound,
            "null_calibration": self.null_calibration,
            "stopped_because": self.stopped_because,
            "trajectory": [[q, p] for q, p in self.trajectory],
            "key_fingerprint": self.key_fingerprint,
            "source_class": self.source_class,
            "target_class": self.target_class,
            "suspect": dict(self.suspect),
            "parameters": dict(self.parameters),
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


class WatermarkVerifier:
    """Sequentially test whether a suspect carries the owner's watermark.

    ``alpha`` 0.05: EWE's "95% confidence". ``max_queries`` 100: EWE's claim is "< 100 queries".
    ``batch_size`` 1 stops at the first sufficient answer; larger batches save round trips to an HTTP
    suspect and are equally valid (every answer received is used), at the cost of up to batch_size − 1
    queries past the point where the claim became possible.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        max_queries: int = 100,
        test: Literal["mixture", "sprt"] = "mixture",
        alternative_rate: float | None = None,
        batch_size: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if max_queries < 1:
            raise ValueError(f"max_queries must be at least 1, got {max_queries}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if test not in TESTS:
            raise ValueError(f"test must be one of {TESTS}, got {test!r}")
        if test == "sprt" and (alternative_rate is None or not 0.0 < alternative_rate < 1.0):
            raise ValueError("test='sprt' needs alternative_rate in (0, 1)")
        if test == "mixture" and alternative_rate is not None:
            raise ValueError("alternative_rate only applies to test='sprt'")
        self.alpha = alpha
        self.max_queries = max_queries
        self.test = test
        self.alternative_rate = alternative_rate
        self.batch_size = batch_size
        self.seed = seed

    def describe_test(self, p0: float) -> str:
        if self.test == "sprt":
            return (
                f"Wald SPRT likelihood ratio, Bernoulli({self.alternative_rate}) vs Bernoulli({p0:.4g}), one-sided; "
                "always-valid p = 1/max LR (Ville)"
            )
        return (
            f"mixture SPRT: Bernoulli(q) vs Bernoulli({p0:.4g}) likelihood ratio averaged over q ~ U[p0, 1], "
            "one-sided; always-valid p = 1/max LR (Ville)"
        )

    def run(self, suspect: Suspect, key: WatermarkKey, null: NullCalibration | float) -> WatermarkEvidence:
        started = time.perf_counter()
        notes: list[str] = []
        if isinstance(null, NullCalibration):
            if null.key_fingerprint is not None and null.key_fingerprint != key.fingerprint():
                raise ValueError("the null calibration was measured on a different watermark key")
            p0, calibration = null.bound, null.to_dict()
            pooled: float | None = null.pooled_rate
        else:
            p0, pooled, calibration = float(null), None, None
            notes.append("null-rate bound stated by the caller, not calibrated on reference models")
        # A calibrated bound of 1 (clean reference models answer the key's target that often) is a fact about
        # the registration, not a caller's error: the audit answers without querying, and the caller reports
        # it inconclusive. A bound a caller states outside (0, 1) is refused.
        untestable = isinstance(null, NullCalibration) and p0 >= 1.0
        if untestable:
            notes.append(
                f"the reference models answer the key's target class so often that the null-rate bound is {p0:.4g}:"
                " no number of target answers can reject it, so the suspect was not queried"
            )
        elif not 0.0 < p0 < 1.0:
            raise ValueError(f"the null-rate bound must be in (0, 1), got {p0}; no test can claim against it")
        if self.test == "sprt" and self.alternative_rate is not None and self.alternative_rate <= p0:
            raise ValueError(f"alternative_rate {self.alternative_rate} must exceed the null bound {p0:.4g}")

        inputs = null.test_inputs(key) if isinstance(null, NullCalibration) else key.inputs
        order = np.random.default_rng(self.seed).permutation(len(inputs))
        limit = 0 if untestable else min(self.max_queries, len(order))
        used = successes = 0
        best = 0.0  # max log-wealth so far; the martingale starts at 1
        trajectory: list[tuple[int, float]] = []
        stopped = "null_bound_is_one" if untestable else "max_queries" if limit == self.max_queries else "key_exhausted"
        start_count = suspect.queries_used
        while used < limit:
            size = min(self.batch_size, limit - used)
            if suspect.budget is not None:
                size = min(size, suspect.budget - suspect.queries_used)
            if size <= 0:
                stopped = "budget_exhausted"
                break
            try:
                answers = suspect.labels(inputs[order[used : used + size]])
            except BudgetExceeded:
                stopped = "budget_exhausted"
                break
            if len(answers) != size:
                raise ValueError(f"suspect returned {len(answers)} labels for {size} inputs")
            for answer in answers:
                used += 1
                successes += int(answer == key.target_class)
                best = max(best, float(log_wealth(successes, used, p0, self.test, self.alternative_rate)))
                trajectory.append((used, float(min(1.0, np.exp(-best)))))
            if trajectory[-1][1] < self.alpha:
                stopped = "claimed"
                break
        p_value = trajectory[-1][1] if trajectory else 1.0
        return WatermarkEvidence(
            decision=CLAIMED if p_value < self.alpha else NOT_CLAIMED,
            p_value=p_value,
            test=self.describe_test(p0),
            alpha=self.alpha,
            queries_used=suspect.queries_used - start_count,
            successes=successes,
            success_rate=successes / used if used else None,
            success_rate_ci95=clopper_pearson_interval(successes, used),
            null_rate=pooled,
            null_rate_bound=p0,
            stopped_because=stopped,
            trajectory=trajectory,
            key_fingerprint=key.fingerprint(),
            source_class=key.source_class,
            target_class=key.target_class,
            suspect=dict(suspect.identity),
            parameters={
                "alpha": self.alpha,
                "max_queries": self.max_queries,
                "test": self.test,
                "alternative_rate": self.alternative_rate,
                "batch_size": self.batch_size,
                "seed": self.seed,
                "key_size": len(key.inputs),
                "inputs_tested": len(inputs),
            },
            null_calibration=calibration,
            seconds=time.perf_counter() - started,
            notes=notes,
        )
