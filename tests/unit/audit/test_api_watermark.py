"""The api_watermark audit's logic on in-process suspects: phases, α split, early stop, verdicts (no server).

The suspects here are stand-ins with known behaviour (a copy that reproduces exactly what it was served, a
model independent of the key); trained copies are measured in tests/unit/audit/test_answer_watermark.py and
bench/audit.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from audit.answer_watermark import AnswerWatermark
from audit.api_watermark import LoggedAnswers, run_api_watermark, validate_params
from audit.methods import normalise_params
from audit.suspects.base import CallableSuspect

K, D = 10, 16
SECRET = b"api-watermark-unit-test-secret!!"


def _world(n: int = 3000, seed: int = 0) -> tuple[AnswerWatermark, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, D)).astype(np.float32)
    w = rng.normal(0, 4, (D, K))
    logits = x.astype(np.float64) @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    return AnswerWatermark(SECRET, n_classes=K, input_dim=D, frequency=8.0), x, p / p.sum(1, keepdims=True)


def test_a_copy_of_served_labels_is_claimed_in_a_few_queries_and_an_independent_model_is_not() -> None:
    mark, x, p = _world()
    upstream = p.argmax(1)
    served = mark.mark_labels(x, upstream)
    np.testing.assert_array_equal(mark.unmark_labels(x, served.labels), upstream)
    tags = ["label-flipped" if m else "label" for m in served.marked]
    logged = LoggedAnswers(x.astype(np.float64), served.labels[:, None].tolist(), tags, ["thief"])
    table = {row.tobytes(): int(label) for row, label in zip(x, served.labels, strict=True)}
    copy = CallableSuspect(lambda q: np.array([table[r.astype(np.float32).tobytes()] for r in q]))
    ev = run_api_watermark(copy, mark, {"clients": ["thief"], "batch_size": 1}, logged=logged)
    assert ev["verdict"] == "claim" and ev["p_value"] <= 1e-3
    assert ev["queries_used"] <= 8  # every answer matches: log(1/α) of wealth comes within a handful
    assert ev["suspected_clients"] == ["thief"] and ev["false_claim_bound"] == 1e-3

    rng = np.random.default_rng(1)
    noisy = np.where(rng.uniform(size=len(x)) < 0.3, rng.integers(0, K, len(x)), upstream)  # 30 % errors
    independent_table = {row.tobytes(): int(label) for row, label in zip(x, noisy, strict=True)}
    independent = CallableSuspect(lambda q: np.array([independent_table[r.astype(np.float32).tobytes()] for r in q]))
    ev0 = run_api_watermark(independent, mark, {"clients": ["thief"]}, logged=logged)
    assert ev0["verdict"] == "no-claim" and ev0["p_value"] > 1e-3
    assert ev0["queries_used"] == ev0["phases"]["label"]["probes_available"]  # used what there was, no more


def test_the_probability_phase_uses_logged_inputs_and_the_owners_baseline() -> None:
    mark, x, p = _world(seed=2)
    served = mark.mark_probabilities(x, p).probabilities
    logged = LoggedAnswers(x.astype(np.float64), served.tolist(), ["probabilities"] * len(x), ["thief"])
    table = {row.tobytes(): a for row, a in zip(x, served, strict=True)}
    rng = np.random.default_rng(3)
    copy_answers = lambda q: np.array([table[r.astype(np.float32).tobytes()] for r in q])  # noqa: E731
    copy = CallableSuspect(lambda q: copy_answers(q).argmax(1), copy_answers)
    owner_table = {row.tobytes(): a for row, a in zip(x, p, strict=True)}
    owner_answers = lambda q: np.array([owner_table[r.astype(np.float32).tobytes()] for r in q])  # noqa: E731
    owner = CallableSuspect(lambda q: owner_answers(q).argmax(1), owner_answers)
    params = {"clients": ["thief"], "n_null_keys": 3999, "max_queries": 400}
    ev = run_api_watermark(copy, mark, params, logged=logged, owner=owner)
    phase = ev["phases"]["probabilities"]
    assert ev["verdict"] == "claim" and phase["queries"] == 200  # claimed at the first look (half the budget)
    assert phase["alpha_per_look"] == pytest.approx([2.5e-4, 7.5e-4]) and phase["baseline"].startswith("the owner's")
    assert ev["p_value"] == pytest.approx(min(1.0, phase["p_value"] / 0.25))  # adjusted by the first look's share
    # an even split: the looks' levels follow it
    even = run_api_watermark(copy, mark, {**params, "first_look_share": 0.5}, logged=logged, owner=owner)
    looked = even["phases"]["probabilities"]
    assert looked["alpha_per_look"] == pytest.approx([5e-4, 5e-4])
    assert even["p_value"] == pytest.approx(min(1.0, looked["p_value"] / 0.5))

    def other_model(q: np.ndarray) -> np.ndarray:  # close to the owner, but never saw a marked answer
        a = owner_answers(q) + rng.uniform(0, 0.05, (len(q), K))
        return a / a.sum(1, keepdims=True)

    ev0 = run_api_watermark(
        CallableSuspect(lambda q: other_model(q).argmax(1), other_model), mark, params, logged=logged, owner=owner
    )
    assert ev0["verdict"] == "no-claim" and ev0["queries_used"] == 400


@pytest.mark.parametrize("side", ["hash", "smooth"])
def test_the_boundary_phase_claims_a_label_copy_with_too_few_dawn_marks(side: str) -> None:
    """DAWN at a 0.15 % share leaves a 3,000-answer thief 2 replaced labels (too few for α/2); the boundary
    mark moved hundreds of its near-boundary answers, and a copy that fits them is claimed by the boundary phase:
    with the hash side as the continuation of the label phase's martingale (its two reproduced labels carried
    on), with the smooth side alone after the label phase is skipped.
    A model that answers the owner's labels with noise of its own is not, and without the owner's probabilities
    the phase does not run."""
    _, x, p = _world(seed=4)
    mark = AnswerWatermark(
        SECRET, n_classes=K, input_dim=D, frequency=8.0, label_share=0.0015, boundary_margin=0.5, boundary_side=side
    )
    near = mark.mark_boundary_labels(x, p)
    served = mark.mark_labels(x, near.labels)
    tags = np.where(served.marked, "label-flipped", np.where(near.marked, "label-boundary", "label")).tolist()
    logged = LoggedAnswers(x.astype(np.float64), served.labels[:, None].tolist(), tags, ["thief"])
    table = {row.tobytes(): int(label) for row, label in zip(x, served.labels, strict=True)}
    copy = CallableSuspect(lambda q: np.array([table[r.astype(np.float32).tobytes()] for r in q]))
    owner = CallableSuspect(lambda q: p_of(q).argmax(1), lambda q: p_of(q))
    index = {row.tobytes(): i for i, row in enumerate(x)}

    def p_of(q: np.ndarray) -> np.ndarray:
        return p[[index[r.astype(np.float32).tobytes()] for r in q]]

    params = {"clients": ["thief"], "n_null_keys": 1999}
    ev = run_api_watermark(copy, mark, params, logged=logged, owner=owner)
    assert ev["verdict"] == "claim" and "boundary" in ev["phases"]
    phase = ev["phases"]["boundary"]
    if side == "hash":
        # one test martingale: the boundary phase continues from the label phase's value, at the whole α
        assert set(ev["phases"]) == {"label", "boundary"} and phase["continues_label_phase"]
        assert phase["p_value"] <= phase["alpha"] == 1e-3
        label = ev["phases"]["label"]
        assert phase["p_value"] == pytest.approx(
            min(1.0, phase["p_value_boundary_alone"] * np.exp(-phase["label_log_wealth_carried"]))
        )
        assert label["matches"] == label["disagreements"] > 0 and phase["label_log_wealth_carried"] > 0
    else:
        # the few replaced labels could not reach α/2 even all reproduced: the label phase gave its α away
        assert set(ev["phases"]) == {"boundary"} and phase["p_value"] <= phase["alpha"] == 1e-3
        assert any("label phase was skipped" in n for n in ev["notes"])
    assert ev["queries_used"] <= 500

    rng = np.random.default_rng(1)
    upstream = p.argmax(1)
    noisy = np.where(rng.uniform(size=len(x)) < 0.3, rng.integers(0, K, len(x)), upstream)
    noisy_table = {row.tobytes(): int(label) for row, label in zip(x, noisy, strict=True)}
    independent = CallableSuspect(lambda q: np.array([noisy_table[r.astype(np.float32).tobytes()] for r in q]))
    ev0 = run_api_watermark(independent, mark, params, logged=logged, owner=owner)
    assert ev0["verdict"] == "no-claim" and ev0["phases"]["boundary"]["p_value"] > 1e-3
    labels_owner = CallableSuspect(lambda q: p_of(q).argmax(1))
    ev1 = run_api_watermark(copy, mark, params, logged=logged, owner=labels_owner)
    assert "boundary" not in ev1["phases"] and any("owner's probabilities" in n for n in ev1["notes"])


def test_chained_label_and_boundary_phases_false_claims_over_keys() -> None:
    """The label phase's martingale carried into the boundary phase's, at one share of α: models independent
    of the key (the owner's labels with noise of their own, and with noise favouring the runner-up, which
    disagrees on DAWN probes and sits in the band) audited against label thieves' logs under 200 keys at
    α = 0.05 claim within sampling error of α."""
    _, x, p = _world(n=1500, seed=7)
    rng = np.random.default_rng(2)
    upstream = p.argmax(1)
    runner = np.argsort(-p, axis=1)[:, 1]
    suspects = {
        "noisy": np.where(rng.uniform(size=len(x)) < 0.3, rng.integers(0, K, len(x)), upstream),
        "runner-up": np.where(rng.uniform(size=len(x)) < 0.4, runner, upstream),
    }
    owner_index = {row.tobytes(): i for i, row in enumerate(x)}

    def rows_of(q: np.ndarray) -> list[int]:
        return [owner_index[r.astype(np.float32).tobytes()] for r in q]

    owner = CallableSuspect(lambda q: p[rows_of(q)].argmax(1), lambda q: p[rows_of(q)])
    alpha, trials = 0.05, 200
    claims = dict.fromkeys(suspects, 0)
    chained = 0
    for i in range(trials):
        mark = AnswerWatermark(
            f"chained-null-{i:04d}".encode().ljust(32, b"."),
            n_classes=K,
            input_dim=D,
            frequency=8.0,
            label_share=0.01,
            boundary_margin=0.5,
            boundary_side="hash",
        )
        near = mark.mark_boundary_labels(x, p)
        served = mark.mark_labels(x, near.labels)
        tags = np.where(served.marked, "label-flipped", np.where(near.marked, "label-boundary", "label")).tolist()
        logged = LoggedAnswers(x.astype(np.float64), served.labels[:, None].tolist(), tags, ["thief"])
        for name, answers in suspects.items():
            model = CallableSuspect(lambda q, a=answers: a[rows_of(q)])
            ev = run_api_watermark(model, mark, {"clients": ["thief"], "alpha": alpha}, logged=logged, owner=owner)
            claims[name] += ev["verdict"] == "claim"
            chained += bool(ev["phases"].get("boundary", {}).get("continues_label_phase"))
    bound = alpha * trials + 3 * np.sqrt(alpha * (1 - alpha) * trials)
    print(f"\nchained label + boundary phases: false claims {claims} of {trials} keys each at α = {alpha}")
    assert chained > trials  # the chain ran on most audits (both phases had probes)
    assert max(claims.values()) <= bound


def test_inconclusive_when_the_audit_could_not_have_claimed() -> None:
    mark, x, p = _world(seed=4)
    served = mark.mark_probabilities(x, p).probabilities
    logged = LoggedAnswers(x.astype(np.float64), served.tolist(), ["probabilities"] * len(x), ["thief"])
    labels_only = CallableSuspect(lambda q: np.zeros(len(q), dtype=np.int64))
    ev = run_api_watermark(labels_only, mark, {"clients": ["thief"]}, logged=logged)
    assert ev["verdict"] == "inconclusive" and ev["queries_used"] == 0
    assert any("labels only" in note for note in ev["notes"])
    few_keys = run_api_watermark(
        CallableSuspect(lambda q: p[: len(q)].argmax(1), lambda q: p[: len(q)]),
        mark,
        {"clients": ["thief"], "n_null_keys": 99},
        logged=logged,
    )
    assert few_keys["verdict"] == "inconclusive"  # a rank p-value cannot go below 1/100 > α/4


def test_parameters_are_checked_with_reasons() -> None:
    assert normalise_params("api_watermark", {})["alpha"] == 1e-3
    assert validate_params({"clients": ["b", "a", "a"]})["clients"] == ["a", "b"]
    for bad, reason in [
        ({"alpha": 0.7}, "alpha"),
        ({"max_queries": 0}, "max_queries"),
        ({"clients": "thief"}, "clients"),
        ({"probes": "random"}, "probes"),
        ({"budget": -1}, "budget"),
        ({"first_look_share": 1.0}, "first_look_share"),
        ({"first_look_share": True}, "first_look_share"),
        ({"lambda": 1}, "unknown"),
    ]:
        with pytest.raises(ValueError, match=reason):
            normalise_params("api_watermark", bad)
