"""The sign-step signal: JBDA's ±λ steps to an earlier query are seen; retries, re-scans and noise are not."""

from __future__ import annotations

import numpy as np
import pytest

from services.demo.redteam import Domain, JacobianAugmentation
from services.demo.redteam.benign import BenignClient, BenignProfile
from services.detector.augment import ImageVariation
from services.detector.steps import StepsSignal, reservoir_slot, sign_steps

from .conftest import Digits, Victim

VARIATION = ImageVariation(shape=(8, 8), low=0.0, high=16.0, max_shift_px=1.0)


@pytest.fixture(scope="module")
def signal(digits: Digits) -> StepsSignal:
    return StepsSignal.fit(digits.X_ref, n_features=64, n_classes=10, variation=VARIATION, seed=0)


def feed(signal: StepsSignal, X: np.ndarray) -> tuple[float, int]:
    state = signal.new_state()
    worst = 1.0
    for start in range(0, len(X), 50):
        signal.update(state, X[start : start + 50], None, np.zeros(len(X[start : start + 50]), dtype=np.int64))
        worst = min(worst, signal.evaluate(state).p_value)
    return worst, state.steps_total


def test_shape_rule_on_constructed_differences() -> None:
    rng = np.random.default_rng(0)
    sign = 0.1 * np.sign(rng.normal(size=(1, 784)))
    brighter = np.full((1, 784), 0.1)  # the same image re-scanned brighter: one sign
    noisy = rng.normal(0.0, 0.01, size=(1, 784))  # re-scanned with pixel noise: magnitudes spread out
    few = np.zeros((1, 784))
    few[0, :50] = sign[0, :50]  # a sign pattern on 6 % of the pixels only
    rule = {"eps": 1e-9, "min_support": 0.2, "same_share": 0.8, "tolerance": 0.05, "minority": 0.02}
    flags = sign_steps(np.concatenate([sign, brighter, noisy, few, np.zeros((1, 784))]), **rule)
    assert flags.tolist() == [True, False, False, False, False]


def test_jbda_is_seen_before_its_second_round_ends(signal: StepsSignal, digits: Digits, victim: Victim) -> None:
    sent: list[np.ndarray] = []

    def oracle(X: np.ndarray) -> np.ndarray:
        sent.append(np.asarray(X, dtype=np.float64))
        return victim.proba(X)

    attack = JacobianAugmentation(
        seed_set=digits.X_fresh[:100], domain=Domain.box(0.0, 16.0, 64), n_classes=10, budget=300, seed=0
    )
    for _ in attack.steps(oracle):
        pass
    p, steps = feed(signal, np.concatenate(sent))
    assert steps >= 40 and p < 1e-20


@pytest.mark.parametrize("near_duplicate_rate", [0.05, 0.3])
def test_benign_clients_with_retries_near_duplicates_and_noise_are_not_sign_steps(
    signal: StepsSignal, digits: Digits, near_duplicate_rate: float
) -> None:
    profile = BenignProfile(near_duplicate_rate=near_duplicate_rate, retry_rate=0.2, noise_scale=0.02)
    domain = Domain.box(0.0, 16.0, 64)
    labels = np.zeros(len(digits.X_fresh), dtype=np.int64)
    worst = 1.0
    for i in range(30):
        client = BenignClient(pool=digits.X_fresh, labels=labels, domain=domain, profile=profile, seed=i)
        client.variation = VARIATION.for_client(np.random.default_rng(i), "noise" if i % 2 else None)
        X = np.concatenate([b.X for b in client.batches(300)])
        worst = min(worst, feed(signal, X)[0])
    # A client re-sending earlier images at another exposure (every pixel brighter by the same amount).
    rng = np.random.default_rng(1)
    rows = list(digits.X_fresh[:200])
    for i in range(100):
        rows.insert(2 * i + 1, np.clip(rows[2 * i] + rng.uniform(0.5, 2.0) * rng.choice([-1, 1]), 0.0, 16.0))
    worst = min(worst, feed(signal, np.asarray(rows))[0])
    assert worst > 1e-3  # 31 clients x 300 queries: no test comes near an alert


def test_reservoir_does_not_depend_on_batching_and_state_roundtrips(signal: StepsSignal, digits: Digits) -> None:
    X = np.concatenate([digits.X_ref[:150], np.clip(digits.X_ref[:150] + 1.6, 0, 16)])
    one, many = signal.new_state(), signal.new_state()
    signal.update(one, X, None, np.zeros(len(X), dtype=np.int64))
    for start in range(0, len(X), 7):
        signal.update(many, X[start : start + 7], None, np.zeros(len(X[start : start + 7]), dtype=np.int64))
    assert np.array_equal(one.memory, many.memory) and one.seen == many.seen == 300
    back = signal.state_from_bytes(signal.state_to_bytes(many))
    assert np.array_equal(back.memory, many.memory) and back.steps_total == many.steps_total
    kept = [reservoir_slot(i, 64) for i in range(64, 6400)]
    assert 64 * np.log(100) * 0.7 < sum(k >= 0 for k in kept) < 64 * np.log(100) * 1.3  # Algorithm R's rate


def test_bad_parameters_are_refused(signal: StepsSignal) -> None:
    with pytest.raises(ValueError, match="min_queries"):
        StepsSignal(signal.baseline(), n_features=64, n_classes=10, window=10, min_queries=20)


def test_a_requantised_rescan_is_not_a_step_a_jacobian_step_from_a_quantised_image_is() -> None:
    rng = np.random.default_rng(1)
    rule = {"eps": 1e-9, "min_support": 0.2, "same_share": 0.8, "tolerance": 0.05, "minority": 0.02}
    level = 16.0 / 7  # an 8-level sensor on digits' 0..16
    image = rng.integers(0, 8, size=64) * level
    rescan = np.clip(image + level * rng.choice([-1.0, 1.0], size=64), 0.0, 16.0)  # one level off, both signs
    parent = rng.integers(0, 17, size=64).astype(np.float64)  # a natural digit: integer grey levels
    child = np.clip(parent + 1.6 * rng.choice([-1.0, 1.0], size=64), 0.0, 16.0)  # JBDA's step, λ = 1.6
    diff = np.stack([rescan - image, child - parent])
    assert sign_steps(diff, **rule).tolist() == [True, True]  # by shape alone both are steps
    assert sign_steps(diff, rows=np.stack([rescan, child]), **rule).tolist() == [False, True]
