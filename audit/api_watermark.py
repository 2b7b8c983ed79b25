"""The ``api_watermark`` audit: is the suspect a copy trained on answers our gateway marked?

The gateway marks what it serves (``audit.answer_watermark``; ``services/gateway/answer_mark.py``). This audit
queries a suspect (a file or an endpoint) with inputs that carry the key's signal and tests for it:

1. **Label phase** (DAWN-style). Probes: the suspected clients' logged inputs whose served label the key
   replaced (query-log rows tagged ``label-flipped``), with the upstream label recovered from the served one
   (``AnswerWatermark.unmark_labels``). Test: the anytime-valid sequential test on the suspect's
   disagreements (``SequentialLabelTest``: P(answer = served label | answer ≠ upstream label) = 1/(k−1)
   under the null that the suspect never saw our marked answers). A suspect answering probabilities answers
   with its most likely class other than the upstream label (``top_other_labels``), on every probe: a copy
   that learned the replaced label as its second choice is found, and the null rate is the same 1/(k−1).
   It stops at the first query with p ≤ α.
2. **Boundary phase**, when the clients were served label answers and the owner answers probabilities.
   Probes: the clients' distinct logged label-answer inputs where the owner's top-2 margin is in the boundary
   band. Test: ``AnswerWatermark.verify_boundary``. With the smooth side (the keyed cosine region), the exact
   rank test of the suspect's departures from the owner's label against the key's region side, over wrong
   keys (exact when the logged queries did not depend on the key; docs/audits.md has the false-claim
   measurement on adaptive clients' logs); one look. With the hash side (a keyed coin per input), the probes
   stay in logged order and the test is a Bernoulli(1/2) test martingale, valid whatever the client adapted;
   when the suspect answers probabilities, the martingale bets on its signed preference between the owner's
   top two (``_verify_hash_sides``), same null, same validity.
3. **Probability phase** (CosWM-style), when the suspect answers probabilities. Probes: the suspected
   clients' logged inputs that were served marked probabilities (the thief trained on exactly these, so its
   copy carries the cosine there most strongly), or, with no log, fresh probes from the owner's reference
   data (``probability_probes``, chosen without looking at the key). Baseline: the owner's own unmarked
   probabilities on the probes, subtracted before the test (removes the class structure every accurate copy
   shares with the owner's model). Test: the exact Monte-Carlo rank test against random wrong keys
   (``verify_probabilities``: the best of the cosine, half-wave and linear statistics, calibrated jointly
   by the same wrong keys), looked at twice (half and all of the budget), the first look at the share
   ``first_look_share`` of the phase's α and the last at the rest (weighted Bonferroni over looks), so it
   stops early when the first half suffices.

False claims. With the hash side, the label and boundary phases are one test martingale: they test
independent bits of the key (DAWN's selection and offset, digest words 0–2; the side, word 3), so the boundary
phase multiplies on from the label phase's final value, M = M_label(end) × M_boundary(t), and Ville's
inequality bounds the pair at one share of α (a label phase with no disagreement leaves M at 1; one that
disagreed without matching costs its factor, one that matched gains it). Otherwise each phase that runs gets an
equal share of α (with the smooth side, a label phase whose replaced labels could not reach its share even all
reproduced is skipped first: that depends only on how many were logged); a claim by any share is a claim, so
the false-claim probability is at most α (union bound). The reported p-value is
the Bonferroni-adjusted minimum, min_i p_i·α/α_i, valid at the same level. *inconclusive* when the budget or
the probes available could not have reached α even on a perfect copy (e.g. no logged marked answers and a
suspect that answers labels only), so "no claim" never states a power the audit did not have.

What it cannot do: a copy trained on answers that did not pass through our gateway (or passed through it with
marking off for that client) carries no mark; a thief that trains on the argmax of probability answers learns
nothing of the probability mark (the label mark applies only to label answers). docs/audits.md has the
measured power and the removal attacks tried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.answer_watermark import (
    BOUNDARY_HASH_TEST,
    BOUNDARY_TEST,
    PROBABILITY_TEST,
    SEQUENTIAL_LABEL_TEST,
    AnswerWatermark,
    mixture_log_wealth,
    probability_probes,
)
from audit.configs import Progress
from audit.solve_template import SOLVE_MAX_FEATURES, SOLVE_MAX_ROWS, SolveReference
from audit.suspects.base import Suspect

# α 1e-3: the bar for a single-shot ownership claim; 500 queries: its bar for the suspect's cost.
# 7,999 wrong keys: the rank p-value's floor 1/8,000 is the smallest per-look level, α/2 (two phases) × 1/4.
API_WATERMARK_DEFAULTS: dict[str, Any] = {
    "alpha": 1e-3,
    "max_queries": 500,
    "clients": [],
    "probes": "auto",  # auto: the clients' logged inputs, else the owner's reference data; or "reference"
    "n_null_keys": 7999,
    # The probability phase's first look (half the probes) gets this share of the phase's α, the last look the
    # rest (weighted Bonferroni: any split summing to α is valid). 0.25 rather than 0.5: adopted by a rule
    # written before its run on 20 never-used digits keys (equation solving 5 → 6 claimed, every other copy and
    # the Knockoff copies' queries unchanged, no independent claimed; docs/benchmarks.md).
    "first_look_share": 0.25,
    "batch_size": 50,  # label probes per suspect call: the claim usually comes within a handful
    # The solve-template statistic (audit.solve_template) in the probability phase, with logged inputs and an
    # owner answering probabilities, up to SOLVE_MAX_FEATURES features; false: the three other statistics only.
    "solve_template": True,
    "seed": 0,
    "budget": None,
}
# Query-log tags of label answers (services/gateway/answer_mark.py): every one went through the boundary mark
# when the upstream answered probabilities.
LABEL_TAGS = ("label", "label-flipped", "label-boundary")
LOGGED_PROBES = "the suspected clients' logged inputs served marked probabilities"
NULL_HYPOTHESIS = "the suspect was trained without answers marked by this deployment's answer-watermark key"


@dataclass(frozen=True)
class LoggedAnswers:
    """What the gateway served the suspected clients, from the query log (one entry per answered row)."""

    inputs: np.ndarray  # [n, d]
    outputs: Sequence[Sequence[float] | None]  # as served
    tags: Sequence[str]  # QueryRecord.watermark
    clients: Sequence[str]

    def rows(self, tag: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.tags, dtype=object) == tag)


def validate_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters with defaults filled in; ValueError names what is wrong."""
    params = dict(params or {})
    unknown = set(params) - set(API_WATERMARK_DEFAULTS)
    if unknown:
        allowed = sorted(API_WATERMARK_DEFAULTS)
        raise ValueError(f"unknown api_watermark parameters {sorted(unknown)}; allowed: {allowed}")
    out = {**API_WATERMARK_DEFAULTS, **params}
    if not isinstance(out["alpha"], int | float) or not 0.0 < float(out["alpha"]) < 0.5:
        raise ValueError("alpha must be in (0, 0.5)")
    out["alpha"] = float(out["alpha"])
    share = out["first_look_share"]
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 < float(share) < 1.0:
        raise ValueError("first_look_share must be in (0, 1)")
    out["first_look_share"] = float(share)
    for name, low in (("max_queries", 3), ("n_null_keys", 1), ("batch_size", 1)):
        value = out[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}")
    if not isinstance(out["seed"], int) or isinstance(out["seed"], bool):
        raise ValueError("seed must be an integer")
    budget = out["budget"]
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise ValueError("budget must be a positive integer (queries) or null")
    clients = out["clients"]
    if not isinstance(clients, list) or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in clients):
        raise ValueError("clients must be a list of client ids (strings)")
    if len(clients) > 1000:
        raise ValueError("at most 1,000 suspected clients per audit")
    out["clients"] = sorted(set(clients))
    if out["probes"] not in ("auto", "reference"):
        raise ValueError("probes must be 'auto' (logged inputs first) or 'reference'")
    if not isinstance(out["solve_template"], bool):
        raise ValueError("solve_template must be true or false")
    return out


def run_api_watermark(
    suspect: Suspect,
    mark: AnswerWatermark,
    params: Mapping[str, Any],
    *,
    logged: LoggedAnswers | None = None,
    reference: np.ndarray | None = None,
    owner: Suspect | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run both phases as far as they go; a JSON-ready evidence dict (``audit.methods`` conventions)."""
    params = validate_params(params)
    report = progress or (lambda f, m: None)
    alpha = params["alpha"]
    limit = params["max_queries"] if params["budget"] is None else min(params["max_queries"], params["budget"])
    notes: list[str] = []

    label_probes = None
    if logged is not None and params["probes"] == "auto":
        rows = logged.rows("label-flipped")
        if len(rows):
            x = logged.inputs[rows]
            served = np.array([int(logged.outputs[i][0]) for i in rows])  # type: ignore[index]
            label_probes = mark.label_probes(x, mark.unmark_labels(x, served))
    x_prob, prob_source = _probability_probes(mark, params, logged, reference, limit)
    x_band, own_band = _boundary_probes(mark, params, logged, owner, notes)
    run_label = label_probes is not None and len(label_probes) > 0 and mark.n_classes >= 3
    run_boundary = x_band is not None and len(x_band) >= 3
    run_prob = x_prob is not None and len(x_prob) >= 6 and suspect.has_probabilities
    if x_prob is not None and not suspect.has_probabilities:
        notes.append("the suspect answers labels only: the probability mark, invisible in the top-1, was not tested")
    if not run_label and logged is not None:
        notes.append("no logged answer of the suspected clients carries a replaced label")
    phases = [p for p, on in (("label", run_label), ("boundary", run_boundary), ("probabilities", run_prob)) if on]
    # The label and the hash-side boundary phases test independent bits of the key (DAWN's selection and offset:
    # digest words 0-2; the side: word 3), both with a test martingale, so the boundary phase continues the label
    # phase's martingale (M = M_label(end) x M_boundary(t), one Ville bound) and the two share one part of α.
    chained = run_label and run_boundary and mark.boundary_side_mode == "hash"
    if run_label and not chained and len(phases) > 1 and label_probes is not None:
        # A label phase that could not claim even if every replaced label were reproduced gets no share of α.
        # Valid: the choice depends only on how many replaced labels were logged (the key's selection bits),
        # not on the suspect's answers nor on the key parts the other phases test.
        n_label = min(len(label_probes), limit)
        perfect = float(mixture_log_wealth(np.array([n_label]), np.array([n_label]), 1.0 / (mark.n_classes - 1))[0])
        if perfect < math.log(len(phases) / alpha):
            run_label = False
            phases.remove("label")
            notes.append(
                f"{n_label} replaced labels could not reach p ≤ α/{len(phases) + 1} even if all were "
                "reproduced: the label phase was skipped and its share of α went to the other phases"
            )
    alpha_phase = alpha / max(1, len(phases) - (1 if chained else 0))

    evidence: dict[str, Any] = {"phases": {}}
    used = 0
    carried, p_label, chained_done = 0.0, 1.0, False
    p_adjusted: list[float] = []
    achievable = False
    claimed = False
    if run_label:
        assert label_probes is not None
        test = mark.sequential_label_test(alpha=alpha_phase)
        n_label = min(len(label_probes), limit)
        best = float(mixture_log_wealth(np.array([n_label]), np.array([n_label]), test.null_rate)[0])
        achievable |= best >= math.log(1.0 / alpha_phase)
        report(0.1, f"label phase: {n_label} probes")
        # A suspect answering probabilities is asked for them: its most likely class other than the upstream
        # label is an answer on every probe (a copy often keeps the upstream label first and the replaced one
        # second), where its top-1 answers only on the probes it disagrees on.
        ev = test.run(
            label_probes,
            _probabilities_of(suspect) if suspect.has_probabilities else suspect.labels,
            batch_size=params["batch_size"],
            max_queries=limit,
            probabilities=suspect.has_probabilities,
        )
        used += ev.queries
        claimed |= ev.claimed
        p_label = ev.p_value
        if chained and not ev.claimed:  # what the boundary phase carries on: the martingale's value at the end
            carried = float(mixture_log_wealth(np.array([ev.matches]), np.array([ev.disagreements]), ev.null_rate)[0])
        else:
            p_adjusted.append(min(1.0, ev.p_value * alpha / alpha_phase))
        evidence["phases"]["label"] = {
            **ev.to_dict(),
            "probes_available": len(label_probes),
            "alpha": alpha_phase,
            "false_claim_bound": alpha_phase,
        }
    if run_boundary and not claimed and used < limit:
        assert x_band is not None and own_band is not None
        x_band, own_band = x_band[: limit - used], own_band[: limit - used]
        if mark.boundary_side_mode == "hash":  # a perfect copy: every probe relevant and matching
            n_b = len(x_band)
            achievable |= float(mixture_log_wealth(np.array([n_b]), np.array([n_b]), 0.5)[0]) >= math.log(
                1.0 / alpha_phase
            )
        else:
            achievable |= 1.0 / (params["n_null_keys"] + 1) <= alpha_phase
        report(0.3, f"boundary phase: {len(x_band)} probes")
        # A suspect answering probabilities is asked once for them (its label is their argmax), and the hash
        # side's test then bets on its preference between the owner's top two instead of its top-1 alone.
        q_band = suspect.probabilities(x_band) if suspect.has_probabilities else None
        b_ev = mark.verify_boundary(
            x_band,
            suspect.labels(x_band) if q_band is None else np.argmax(q_band, axis=1),
            own_band,
            alpha=alpha_phase,
            n_null_keys=params["n_null_keys"],
            seed=params["seed"],
            suspect_probabilities=q_band if mark.boundary_side_mode == "hash" else None,
        )
        used += len(x_band)
        boundary = {
            **b_ev.to_dict(),
            "probes": "the suspected clients' logged label answers in the owner's boundary band",
            "queries": len(x_band),
        }
        if chained:
            p_continued = min(1.0, b_ev.p_value * math.exp(-carried))
            b_claimed = p_continued <= alpha_phase
            p_adjusted.append(min(1.0, min(p_label, p_continued) * alpha / alpha_phase))
            boundary.update(
                continues_label_phase=True,
                label_log_wealth_carried=carried,
                p_value_boundary_alone=b_ev.p_value,
                p_value=p_continued,
                alpha=alpha_phase,
                false_claim_bound=alpha_phase,
                decision="ownership claimed" if b_claimed else "not claimed",
            )
            chained_done = True
        else:
            b_claimed = b_ev.claimed
            p_adjusted.append(min(1.0, b_ev.p_value * alpha / alpha_phase))
        claimed |= b_claimed
        evidence["phases"]["boundary"] = boundary
    if chained and not chained_done and not claimed:  # the boundary phase had no budget left
        p_adjusted.append(min(1.0, p_label * alpha / alpha_phase))
    if run_prob and not claimed and used < limit:
        assert x_prob is not None
        x_prob = x_prob[: limit - used]
        looks = sorted({max(3, len(x_prob) // 2), len(x_prob)})
        shares = [1.0] if len(looks) == 1 else [params["first_look_share"], 1.0 - params["first_look_share"]]
        alpha_looks = [alpha_phase * share for share in shares]
        achievable |= 1.0 / (params["n_null_keys"] + 1) <= max(alpha_looks)
        answers = np.zeros((0, mark.n_classes))
        baseline = np.zeros((0, mark.n_classes)) if owner is not None else None
        solve = _solve_reference(mark, logged, owner, prob_source, notes) if params["solve_template"] else None
        prob_ev = None
        for i, n in enumerate(looks):
            report(0.4 + 0.5 * i / len(looks), f"probability phase: {n} probes")
            new = x_prob[len(answers) : n]
            got = suspect.probabilities(new)
            assert got is not None
            answers = np.concatenate([answers, got])
            if baseline is not None and owner is not None:
                own = owner.probabilities(new)
                if own is None:  # an owner answering labels: its one-hot answers are the baseline
                    own = np.eye(mark.n_classes)[owner.labels(new)]
                baseline = np.concatenate([baseline, own])
            prob_ev = mark.verify_probabilities(
                x_prob[:n],
                answers,
                baseline=baseline,
                alpha=alpha_looks[i],
                n_null_keys=params["n_null_keys"],
                # with the solve template the looks share their wrong keys, so its templates are computed once
                # (any wrong keys drawn without the key are valid at each look; the α split does the rest)
                seed=params["seed"] + (0 if solve is not None else i),
                solve=solve,
            )
            if prob_ev.claimed:
                break
        assert prob_ev is not None
        last_share = shares[looks.index(prob_ev.n_probes)]
        used += len(answers)
        claimed |= prob_ev.claimed
        p_adjusted.append(min(1.0, prob_ev.p_value / last_share * alpha / alpha_phase))
        evidence["phases"]["probabilities"] = {
            "test": PROBABILITY_TEST,
            "probes": prob_source,
            "baseline": "the owner's unmarked probabilities" if owner is not None else "none",
            "looks": looks,
            "alpha_per_look": alpha_looks,
            "queries": len(answers),
            "statistic": prob_ev.statistic,
            "null_mean": prob_ev.null_mean,
            "null_std": prob_ev.null_std,
            "p_value": prob_ev.p_value,
            "p_gaussian_approximate": prob_ev.p_gaussian,
            "amplitude": prob_ev.amplitude,
            "half_wave_probes": prob_ev.half_wave_probes,
            "half_wave_statistic": prob_ev.half_wave_statistic,
            "half_wave_null_mean": prob_ev.half_wave_null_mean,
            "half_wave_null_std": prob_ev.half_wave_null_std,
            "linear_rank": prob_ev.linear_rank,
            "linear_statistic": prob_ev.linear_statistic,
            "linear_null_mean": prob_ev.linear_null_mean,
            "linear_null_std": prob_ev.linear_null_std,
            "solve_rows": prob_ev.solve_rows,
            "solve_statistic": prob_ev.solve_statistic,
            "solve_null_max": prob_ev.solve_null_max,
            "n_null_keys": prob_ev.n_null_keys,
            "decision": "ownership claimed" if prob_ev.claimed else "not claimed",
        }
    if not phases:
        notes.append("nothing to test: no logged marked answers and no probability probes the suspect could answer")
    p_value = min(p_adjusted) if p_adjusted else 1.0
    if claimed:
        verdict = "claim"
    elif achievable:
        verdict = "no-claim"
    else:
        verdict = "inconclusive"
        if phases:
            notes.append(f"the {limit} queries allowed could not reach p < {alpha} even on a perfect copy")
    report(0.99, "done")
    evidence.update(
        verdict=verdict,
        decision="ownership claimed" if claimed else "not claimed",
        p_value=p_value,
        alpha=alpha,
        false_claim_bound=alpha,
        test_name=" / ".join(
            {
                "label": SEQUENTIAL_LABEL_TEST,
                "probabilities": PROBABILITY_TEST,
                "boundary": evidence["phases"].get("boundary", {}).get(
                    "test", BOUNDARY_HASH_TEST if mark.boundary_side_mode == "hash" else BOUNDARY_TEST
                ),
            }[p]
            for p in phases
        )
        or "none",
        combination=(
            "claim when any phase claims; the hash-side boundary phase continues the label phase's test martingale "
            "(one share of α for both); shares of α equal otherwise (union bound); p = min_i p_i·α/α_i"
        ),
        null_hypothesis=NULL_HYPOTHESIS,
        queries_used=used,
        suspected_clients=list(params["clients"]),
        logged_rows=0 if logged is None else len(logged.tags),
        watermark=mark.describe(),
        claim_achievable=achievable,
        notes=notes,
        parameters=params,
    )
    return evidence


def _probabilities_of(suspect: Suspect) -> Callable[[np.ndarray], np.ndarray]:
    def query(x: np.ndarray) -> np.ndarray:
        got = suspect.probabilities(x)
        assert got is not None  # only called when the suspect has probabilities
        return got

    return query


def _distinct_probability_rows(mark: AnswerWatermark, logged: LoggedAnswers) -> np.ndarray:
    """The distinct logged inputs served marked probabilities, in logged order (a repeat is one row), float32."""
    x = np.asarray(logged.inputs[logged.rows("probabilities")], dtype=np.float32)
    if not len(x):
        return x
    _, first = np.unique(mark.canonicalize(x), axis=0, return_index=True)
    return x[np.sort(first)]


def _solve_reference(
    mark: AnswerWatermark,
    logged: LoggedAnswers | None,
    owner: Suspect | None,
    prob_source: str,
    notes: list[str],
) -> SolveReference | None:
    """The reference solve for the solve-template statistic (``audit.solve_template``): the owner's unmarked
    probabilities on every distinct logged input the clients were served marked probabilities on, solved the way an
    equation-solving thief solves its answers. None without a log (fresh probes: no solve to mirror), without an
    owner answering probabilities, or above ``SOLVE_MAX_FEATURES`` features."""
    if logged is None or owner is None or not owner.has_probabilities or prob_source != LOGGED_PROBES:
        return None
    if mark.input_dim > SOLVE_MAX_FEATURES:
        notes.append(
            f"the solve-template statistic runs up to {SOLVE_MAX_FEATURES} input features ({mark.input_dim} here)"
        )
        return None
    x = _distinct_probability_rows(mark, logged)[:SOLVE_MAX_ROWS].astype(np.float64)  # the first rows solved
    if len(x) < 2:
        return None
    own = owner.probabilities(x)
    assert own is not None
    return SolveReference.fit(x, own)


def _probability_probes(
    mark: AnswerWatermark,
    params: Mapping[str, Any],
    logged: LoggedAnswers | None,
    reference: np.ndarray | None,
    limit: int,
) -> tuple[np.ndarray | None, str]:
    if logged is not None and params["probes"] == "auto":
        x = _distinct_probability_rows(mark, logged)
        if len(x):
            order = np.random.default_rng(params["seed"]).permutation(len(x))  # not keyed: any order is valid
            return x[order][:limit], LOGGED_PROBES
    if reference is not None and len(reference) >= 2:
        n = min(limit, 2 * len(reference))
        return probability_probes(reference, n, seed=params["seed"]), "fresh probes from the owner's reference data"
    return None, "none"


def _boundary_probes(
    mark: AnswerWatermark,
    params: Mapping[str, Any],
    logged: LoggedAnswers | None,
    owner: Suspect | None,
    notes: list[str],
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The clients' distinct logged label-answer inputs where the owner's top-2 margin is in the boundary band,
    with the owner's unmarked probabilities on them (the test needs both; without an owner answering
    probabilities the phase does not run)."""
    if logged is None or params["probes"] != "auto" or mark.boundary_margin <= 0:
        return None, None
    rows = np.flatnonzero(np.isin(np.asarray(logged.tags, dtype=object), LABEL_TAGS))
    if not len(rows):
        return None, None
    own_model = owner.probabilities if owner is not None and owner.has_probabilities else None
    if own_model is None:
        notes.append("the boundary mark was not tested: it needs the owner's probabilities")
        return None, None
    x = np.asarray(logged.inputs[rows], dtype=np.float32)
    _, first = np.unique(mark.canonicalize(x), axis=0, return_index=True)  # a repeat is one probe
    x = x[np.sort(first)]  # each input's first occurrence, in logged (time) order
    if mark.boundary_side_mode != "hash":  # the hash side's martingale needs the order the client sent them in
        x = x[np.random.default_rng(params["seed"]).permutation(len(x))]  # not keyed: any order is valid
    own = own_model(x)
    if own is None:
        notes.append("the boundary mark was not tested: the owner answered no probabilities")
        return None, None
    band = mark.boundary_band(own)
    return x[band], np.asarray(own)[band]
