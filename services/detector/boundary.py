"""Boundary proximity: how often a client's answers have a small top-1 minus top-2 margin.

Extraction attacks that learn the decision boundary put their queries on it: Tramèr et al.'s adaptive
retraining bisects segments between differently-labelled points (USENIX Security 2016, "line search"),
Lowd & Meek (KDD 2005) binary-search to the boundary along axes, and Jagielski et al. / Carlini et al.'s
critical-point searches and ActiveThief's uncertainty sampling (Pal et al., AAAI 2020) pick low-margin
inputs. Quiring, Arp & Rieck ("Forgotten Siblings", EuroS&P 2018) propose a closeness-to-the-boundary
monitor against such oracle attacks, and BDPL (Zheng et al., ESORICS 2019) treats the same near-boundary
band as the dangerous region (as a response policy, not an alarm). docs/research.md "Detection: boundary proximity".

Statistic: ``k`` = answers in the client's last ``window`` answers whose margin is below ``tau``, the
``margin_quantile`` (default 5 %) quantile of the reference model's margins on benign reference data.
Test: exact one-sided test of ``k`` under a per-class beta-binomial null (``stats.class_beta_binomial_test``):
H0: an answer of class c is small-margin independently at the benign rate of class c, known up to the
Beta posterior fitted on the reference data; H1: more often. n = answers in the window (<= ``window``).
``fired`` when p <= ``alpha``. The per-class null matters: benign margins differ by class (on digits the
small-margin rate is ~0 for 0s and ~10 % for 8s), so a client who mostly asks about 8s is not boundary
hugging; and the reference rates carry sampling error that a plain binomial test would ignore.

Where this differs from the papers: Quiring et al. measure distance to the boundary of a linear detector;
we use the probability margin, which every classifier has. For label-only answers the margin is that of a
supplied *reference model* (a callable X -> probabilities, normally the served model itself), because the
client saw no probabilities. Answers whose margins were changed by an output policy (rounding, noise)
are taken as answered. Benign rows are assumed independent: a benign client who retries one ambiguous
input many times adds correlated small margins and can look like boundary hugging (the risk calibration
simulates some retries, and PRADA's retry exclusion does not apply here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.validation import positive_float, positive_int, unit_interval
from services.detector.base import Record, Signal, SignalResult
from services.detector.stats import (
    cap_concentration,
    class_beta_binomial_test,
    class_rate_posterior,
    ring_push,
    top2_margin,
)

ReferenceModel = Callable[[np.ndarray], np.ndarray]

# Reported in the evidence so an analyst sees where the client's margins sit in the benign distribution.
_EVIDENCE_QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50)


@dataclass(slots=True)
class BoundaryBaseline(Record):
    tau: float  # margins below this are "small"
    p0: float  # benign share of small margins over all reference rows
    margin_quantile: float
    n_ref: int
    rate_a: np.ndarray  # [C + 1] Beta posterior of the benign small-margin rate per class (last: pooled)
    rate_b: np.ndarray
    benign_margin_quantiles: np.ndarray  # at _EVIDENCE_QUANTILES


@dataclass(slots=True)
class BoundaryState(Record):
    flags: np.ndarray  # uint8[window], 1 = small margin
    classes: np.ndarray  # int16[window], class of the answer (C = unknown)
    pos: int = 0
    count: int = 0
    small_total: int = 0
    answers_total: int = 0
    unscored: int = 0  # label-only rows seen while no reference model was configured


class BoundarySignal(Signal[BoundaryState, BoundaryBaseline]):
    name = "boundary"
    STATE = BoundaryState
    PARAMS = ("window", "alpha", "min_answers")

    def __init__(
        self,
        baseline: BoundaryBaseline,
        *,
        n_features: int,
        n_classes: int,
        window: int = 200,  # ~4 evaluations of 50 queries: long enough for small p, short enough to react
        alpha: float = 1e-4,  # standalone level of ``fired``; the engine's risk combiner sets the alert
        min_answers: int = 20,  # below this a binomial test cannot reach small p anyway; avoids noisy tiny windows
        reference_model: ReferenceModel | None = None,
    ) -> None:
        super().__init__(n_features=n_features, n_classes=n_classes)
        if not isinstance(baseline, BoundaryBaseline):
            raise ValueError("baseline must be a BoundaryBaseline (use BoundarySignal.fit)")
        self.window = positive_int("window", window)
        self.alpha = unit_interval("alpha", alpha)
        self.min_answers = positive_int("min_answers", min_answers)
        if self.min_answers > self.window:
            raise ValueError(f"min_answers ({min_answers}) cannot exceed window ({window})")
        if reference_model is not None and not callable(reference_model):
            raise ValueError("reference_model must be a callable X -> probabilities")
        self.reference_model = reference_model
        self._baseline = baseline

    @classmethod
    def fit(
        cls,
        margins_ref: np.ndarray,
        labels_ref: np.ndarray,
        *,
        n_features: int,
        n_classes: int,
        margin_quantile: float = 0.05,  # a 5 % benign rate: rare enough to stand out, common enough to estimate
        prior_strength: float = 20.0,  # pseudo-rows pulling a class's rate to the pooled one (~ rows per class)
        **params: Any,
    ) -> BoundarySignal:
        """Fit ``tau`` and ``p0`` on the reference model's margins for benign held-out data.

        The data must not be the model's training data: margins there are inflated (the model is more
        confident on what it memorised), which would make benign traffic look boundary-hugging.
        """
        q = unit_interval("margin_quantile", margin_quantile)
        m = np.asarray(margins_ref, dtype=np.float64).reshape(-1)
        y = np.asarray(labels_ref).reshape(-1).astype(np.int64)
        if m.size < 20:
            raise ValueError(f"need >= 20 reference margins, got {m.size}")
        if y.shape != m.shape:
            raise ValueError("margins_ref and labels_ref must have one entry per reference row")
        tau = float(np.quantile(m, q))
        # Count strictly-below like ``update`` does; floor at 1/n so ties at tau cannot make p0 zero.
        p0 = max(float(np.mean(m < tau)), 1.0 / m.size)
        a, b = class_rate_posterior(m < tau, y, n_classes, positive_float("prior_strength", prior_strength))
        base = BoundaryBaseline(
            tau=tau,
            p0=p0,
            margin_quantile=q,
            n_ref=int(m.size),
            rate_a=a,
            rate_b=b,
            benign_margin_quantiles=np.quantile(m, _EVIDENCE_QUANTILES),
        )
        return cls(base, n_features=n_features, n_classes=n_classes, **params)

    def dispersion_flags(self, X: np.ndarray, outputs: np.ndarray | None) -> dict[str, np.ndarray] | None:
        """The rows this signal's test counts (small margins), for the engine's dispersion fit."""
        m = self.margins(X, outputs)
        return None if m is None else {"small": m < self._baseline.tau}

    def widen(self, kind: str, concentration: float) -> None:
        """Let benign clients differ: per-class Beta nulls capped at ``concentration`` pseudo-rows.

        The engine estimates the concentration from simulated benign clients with capture variation
        (``stats.client_concentration``); without it the null is one rate for every client.
        """
        if kind == "small":
            b = self._baseline
            b.rate_a, b.rate_b = cap_concentration(b.rate_a, b.rate_b, positive_float("concentration", concentration))

    def layout(self) -> str:
        return f"{super().layout()},w={self.window}"

    def new_state(self) -> BoundaryState:
        return BoundaryState(flags=np.zeros(self.window, dtype=np.uint8), classes=np.zeros(self.window, dtype=np.int16))

    def margins(self, X: np.ndarray, outputs: np.ndarray | None) -> np.ndarray | None:
        """Margins of the answers, or of the reference model for label-only answers (None if neither)."""
        if outputs is not None:
            return top2_margin(outputs)
        if self.reference_model is None:
            return None
        probs = np.asarray(self.reference_model(X), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != X.shape[0]:
            raise ValueError(f"reference_model returned shape {probs.shape} for {X.shape[0]} rows")
        return top2_margin(probs)

    def update(
        self,
        state: BoundaryState,
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        *,
        now: float | None = None,
    ) -> None:
        if X.shape[0] == 0:
            return
        m = self.margins(X, outputs)
        if m is None:
            state.unscored += X.shape[0]
            return
        small = (m < self._baseline.tau).astype(np.uint8)
        pos = state.pos
        state.pos = ring_push(state.flags, pos, small)
        ring_push(state.classes, pos, np.where(labels >= 0, labels, self.n_classes).astype(np.int16))
        state.count += small.size
        state.small_total += int(small.sum())
        state.answers_total += small.size

    def evaluate(self, state: BoundaryState, *, now: float | None = None) -> SignalResult:
        b = self._baseline
        n_valid = min(state.count, self.window)
        k, n, p, k_crit = class_beta_binomial_test(
            state.flags[:n_valid], state.classes[:n_valid], b.rate_a, b.rate_b, self.alpha
        )
        evidence = {
            "small_margin_answers": k,
            "window_answers": n,
            "tau": b.tau,
            "benign_rate": b.p0,
            "lifetime_small_share": state.small_total / state.answers_total if state.answers_total else 0.0,
            "unscored_label_only": state.unscored,
        }
        test = "exact one-sided per-class beta-binomial, H0: small-margin (< tau) rate per class as in benign reference"
        return self.count_result(
            k, n, k_crit, p, min_n=self.min_answers, alpha=self.alpha, test=test, evidence=evidence
        )
