"""The sequential watermark test on scripted suspects: no training, exact expectations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import integrate, stats

from audit.suspects.base import CallableSuspect
from audit.watermark import (
    CLAIMED,
    NOT_CLAIMED,
    NullCalibration,
    WatermarkVerifier,
    always_valid_p_values,
    calibrate_null,
    clopper_pearson_upper,
    log_wealth,
    select_key_inputs,
)
from audit.watermark_key import WatermarkKey

TARGET = 7


def make_key(n: int = 40) -> WatermarkKey:
    rng = np.random.default_rng(0)
    return WatermarkKey(
        source_class=1,
        target_class=TARGET,
        num_classes=10,
        image_shape=(8, 8),
        trigger_positions=((0, 6), (0, 7)),
        trigger_value=1.0,
        inputs=rng.random((n, 64)).astype(np.float32),
        seeds={"train": 0},
    )


def scripted(
    key: WatermarkKey, hits: np.ndarray, budget: int | None = None, identity: dict[str, str] | None = None
) -> CallableSuspect:
    """Answers TARGET exactly on the key rows flagged in ``hits`` (looked up by content), 0 elsewhere."""
    table = {row.tobytes(): bool(h) for row, h in zip(key.inputs, hits, strict=True)}

    def labels(x: np.ndarray) -> np.ndarray:
        return np.array([TARGET if table.get(row.tobytes(), False) else 0 for row in x])

    return CallableSuspect(labels, budget=budget, identity=identity)


@pytest.mark.parametrize("s,t", [(0, 0), (1, 1), (3, 10), (0, 50), (20, 30)])
def test_mixture_closed_form_matches_the_integral(s: int, t: int) -> None:
    p0 = 0.08
    f = t - s
    integral = integrate.quad(lambda q: (q / p0) ** s * ((1 - q) / (1 - p0)) ** f, p0, 1)[0] / (1 - p0)
    assert np.exp(log_wealth(s, t, p0, "mixture")) == pytest.approx(integral, rel=1e-6)


def test_sprt_is_walds_likelihood_ratio() -> None:
    lr = np.exp(log_wealth(3, 5, 0.1, "sprt", 0.5))
    assert lr == pytest.approx((0.5 / 0.1) ** 3 * (0.5 / 0.9) ** 2)


@pytest.mark.parametrize("test,alt", [("mixture", None), ("sprt", 0.4)])
def test_false_claims_stay_below_alpha_under_optional_stopping(test: str, alt: float | None) -> None:
    """Suspects at exactly the null rate, looked at after every one of 100 queries."""
    rng = np.random.default_rng(1)
    p0 = 0.1
    hits = rng.random((2000, 100)) < p0  # 2000 runs: standard error of the rate ~0.5 pp
    p = always_valid_p_values(hits, p0, test, alt)
    assert np.all(np.diff(p, axis=1) <= 0)  # always-valid p-values never go back up
    assert np.mean(p[:, -1] < 0.05) <= 0.05


def test_retesting_a_fixed_n_binomial_after_every_query_would_not() -> None:
    """Why the audit uses a martingale: the naive scheme claims several times more often than α."""
    rng = np.random.default_rng(1)
    p0 = 0.1
    hits = rng.random((2000, 100)) < p0
    naive = stats.binom.sf(np.cumsum(hits, axis=1) - 1, np.arange(1, 101), p0)
    assert np.mean(naive.min(axis=1) < 0.05) > 0.10


def test_claims_a_watermarked_suspect_and_stops_early() -> None:
    key = make_key()
    suspect = scripted(key, np.ones(len(key.inputs)), budget=1000, identity={"kind": "endpoint", "url": "x"})
    ev = WatermarkVerifier().run(suspect, key, 0.05)
    assert ev.decision == CLAIMED and ev.stopped_because == "claimed"
    assert ev.queries_used == suspect.queries_used == 2  # p0 = 0.05: one hit gives p = 0.095, two give 0.0071
    assert ev.successes == 2 and ev.success_rate == 1.0
    assert [q for q, _ in ev.trajectory] == [1, 2]
    assert ev.suspect == {"kind": "endpoint", "url": "x"}
    assert ev.null_rate is None and ev.null_calibration is None and ev.notes
    d = json.loads(json.dumps(ev.to_dict(), allow_nan=False))  # strict JSON: the report gets signed
    assert d["decision"] == CLAIMED and d["p_value"] < 0.05 and "mixture" in d["test"]


def test_does_not_claim_a_clean_suspect_and_spends_the_key() -> None:
    key = make_key(30)
    ev = WatermarkVerifier(max_queries=100).run(scripted(key, np.zeros(30)), key, 0.05)
    assert ev.decision == NOT_CLAIMED and ev.stopped_because == "key_exhausted"
    assert ev.queries_used == 30 and ev.p_value == 1.0


def test_budget_and_max_queries_stop_the_audit() -> None:
    key = make_key()
    hits = np.zeros(len(key.inputs))
    suspect = scripted(key, hits, budget=7)
    ev = WatermarkVerifier(batch_size=3).run(suspect, key, 0.05)
    assert ev.stopped_because == "budget_exhausted" and ev.queries_used == 7 == suspect.queries_used
    ev = WatermarkVerifier(max_queries=5).run(scripted(key, hits), key, 0.05)
    assert ev.stopped_because == "max_queries" and ev.queries_used == 5


def test_batches_use_every_answer() -> None:
    key = make_key()
    ev = WatermarkVerifier(batch_size=10).run(scripted(key, np.ones(len(key.inputs))), key, 0.05)
    assert ev.claimed and ev.queries_used == 10 and ev.successes == 10
    assert len(ev.trajectory) == 10


def test_null_calibration_bound_and_key_check() -> None:
    key = make_key(50)
    refs = [scripted(key, np.arange(50) < k) for k in (0, 2, 5)]
    null = calibrate_null(key, refs, confidence=0.99, margin=0.1)
    assert null.counts == (0, 2, 5) and null.n_inputs == 50
    assert null.pooled_rate == pytest.approx(7 / 150)
    assert null.bound == pytest.approx(clopper_pearson_upper(5, 50, 0.99) + 0.1)
    assert NullCalibration.from_dict(null.to_dict()) == null
    other = make_key(51)
    with pytest.raises(ValueError, match="different watermark key"):
        WatermarkVerifier().run(scripted(other, np.ones(51)), other, null)


def test_clopper_pearson_upper_matches_closed_form_at_zero() -> None:
    # 0 of n: the bound solves (1 - p)^n = 1 - confidence
    assert clopper_pearson_upper(0, 91, 0.99) == pytest.approx(1 - 0.01 ** (1 / 91))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"max_queries": 0},
        {"batch_size": 0},
        {"test": "t-test"},
        {"test": "sprt"},
        {"test": "sprt", "alternative_rate": 1.0},
        {"test": "mixture", "alternative_rate": 0.5},
    ],
)
def test_verifier_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WatermarkVerifier(**kwargs)  # type: ignore[arg-type]


def test_run_rejects_unusable_nulls() -> None:
    key = make_key()
    suspect = scripted(key, np.ones(len(key.inputs)))
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="null-rate bound"):
            WatermarkVerifier().run(suspect, key, bad)
    with pytest.raises(ValueError, match="must exceed the null bound"):
        WatermarkVerifier(test="sprt", alternative_rate=0.2).run(suspect, key, 0.3)


def test_select_key_inputs_keeps_what_the_owner_answers_and_no_selector_does() -> None:
    owner = np.array([1, 1, 1, 0, 1], dtype=bool)
    votes = np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=bool)
    assert select_key_inputs(owner, votes).tolist() == [0, 2]
    assert select_key_inputs(owner, votes, max_selector_hits=1).tolist() == [0, 1, 2, 4]
    with pytest.raises(ValueError):
        select_key_inputs(owner, votes[:, :4])


def test_a_selected_null_tests_only_the_selected_inputs() -> None:
    key = make_key(40)
    selected = list(range(0, 40, 2))
    hits = np.zeros(40)
    hits[selected] = 1  # the suspect answers target exactly on the selected inputs
    refs = [scripted(key, np.arange(40) % 2 == 1) for _ in range(3)]  # clean models: target on the others only
    null = calibrate_null(key, refs, selected=selected, selection={"rule": "test"})
    assert null.counts == (0, 0, 0) and null.n_inputs == 20
    assert NullCalibration.from_dict(null.to_dict()) == null
    ev = WatermarkVerifier(max_queries=100).run(scripted(key, hits), key, null)
    assert ev.claimed and ev.successes == ev.queries_used and ev.parameters["inputs_tested"] == 20
    # the same suspect against the whole key's null is answered on every input, half of them not "target"
    whole = calibrate_null(key, refs)
    assert whole.counts == (20, 20, 20) and whole.bound > null.bound


def test_selected_indices_must_fit_the_key() -> None:
    with pytest.raises(ValueError, match="distinct"):
        NullCalibration(counts=(0,), n_inputs=2, confidence=0.99, margin=0.1, selected=(1, 1))
    null = NullCalibration(counts=(0,), n_inputs=1, confidence=0.99, margin=0.1, selected=(99,))
    with pytest.raises(ValueError, match="does not have"):
        null.test_inputs(make_key(10))


def test_a_calibrated_bound_of_one_is_answered_without_queries_and_a_stated_one_is_refused() -> None:
    """Clean reference models that answer the key's target on every input make the calibrated bound 1: no
    number of target answers can reject it, so the verifier answers without querying (the audit then says
    inconclusive) instead of failing the audit; a bound of 1 stated by a caller is still refused."""
    key = make_key(10)
    null = NullCalibration(counts=(10, 10), n_inputs=10, confidence=0.99, margin=0.1)
    assert null.bound == 1.0
    suspect = scripted(key, np.ones(10, dtype=bool))
    ev = WatermarkVerifier(max_queries=100).run(suspect, key, null)
    assert not ev.claimed and ev.queries_used == 0 and ev.p_value == 1.0
    assert ev.stopped_because == "null_bound_is_one" and any("not queried" in n for n in ev.notes)
    with pytest.raises(ValueError, match="null-rate bound"):
        WatermarkVerifier(max_queries=100).run(suspect, key, 1.0)
