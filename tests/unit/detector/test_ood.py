"""OOD probing: uniform noise, Jacobian steps and other-distribution images are far; benign data is not."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.ood import FEATURES, OODSignal, row_features
from tests.unit.detector import streams
from tests.unit.detector.conftest import Digits, Victim

ALPHA = 1e-4


@pytest.fixture(scope="module")
def signal(digits: Digits, victim: Victim) -> OODSignal:
    X = digits.X_ref
    return OODSignal.fit(X[:300], X[300:], victim.labels(X[300:]), n_features=64, n_classes=10)


@pytest.mark.parametrize("attack", ["uniform", "shifted", "rotated"])
def test_synthetic_and_foreign_inputs_are_flagged_in_the_first_batch(
    attack: str, signal: OODSignal, digits: Digits, victim: Victim
) -> None:
    rng = np.random.default_rng(3)
    X = {
        "uniform": streams.uniform(rng, 200),  # Tramèr's equation solving
        "shifted": streams.shifted(digits.X_fresh[:200], 2),  # natural images, another distribution
        "rotated": streams.rotated(digits.X_fresh[:200]),
    }[attack]
    results = streams.replay_signal(signal, X, None, victim.labels(X))
    assert results[0].fired and results[0].p_value < 1e-10
    assert results[-1].statistic > 0.5  # share of far queries; benign ~0.05


def test_jacobian_augmentation_is_flagged(signal: OODSignal, digits: Digits, victim: Victim) -> None:
    X = streams.jbda(digits.X_fresh[:100], victim.labels, rounds=3)
    results = streams.replay_signal(signal, X, None, victim.labels(X))
    assert not results[0].fired  # the natural seeds are not far...
    assert any(r.fired for r in results)  # ...the augmented points pile up far from the data
    assert streams.min_p(results) < 1e-6


@pytest.mark.parametrize("kind", ["fresh", "skewed", "rescans"])
def test_benign_streams_pass(kind: str, signal: OODSignal, digits: Digits, victim: Victim) -> None:
    rng = np.random.default_rng(4)
    X = digits.X_fresh[rng.permutation(len(digits.X_fresh))]
    if kind == "skewed":
        X = streams.skewed(X, victim.labels(X), [1, 8])  # sparse classes: larger neighbour distances
    elif kind == "rescans":
        X = streams.with_retries(X, rng, retry=0.1, rescan=0.4)
    results = streams.replay_signal(signal, X, None, victim.labels(X))
    assert not any(r.fired for r in results)
    assert streams.min_p(results) > ALPHA * 10


def test_row_features_ignore_what_they_claim_to_ignore(digits: Digits) -> None:
    X = digits.X_fresh[:20] / 16.0
    brighter = 0.05 + 0.8 * X  # gain and bias
    gamma = X**1.5  # a monotone map that is not affine
    assert np.allclose(row_features(X, FEATURES.index("standardised")), row_features(brighter, 1))
    assert not np.allclose(row_features(X, 1), row_features(gamma, 1))
    assert np.allclose(row_features(X, FEATURES.index("rank")), row_features(gamma, 2))
    assert np.allclose(row_features(X, 0), X)


def test_rank_ood_passes_a_contrast_change_and_still_sees_noise(digits: Digits, victim: Victim) -> None:
    X = digits.X_ref
    sig = OODSignal.fit(X[:300], X[300:], victim.labels(X[300:]), n_features=64, n_classes=10, features="rank")
    raw = OODSignal.fit(X[:300], X[300:], victim.labels(X[300:]), n_features=64, n_classes=10, features="raw")
    # another exposure: gain 1.3, gamma 0.6, background lifted to 1.6 (of 16)
    dim = np.clip(16.0 * 1.3 * (digits.X_fresh / 16.0) ** 0.6 + 1.6, 0.0, 16.0)
    assert streams.min_p(streams.replay_signal(raw, dim, None, victim.labels(dim))) < 1e-6  # raw: far
    assert streams.min_p(streams.replay_signal(sig, dim, None, victim.labels(dim))) > ALPHA
    U = streams.uniform(np.random.default_rng(3), 200)
    assert streams.replay_signal(sig, U, None, victim.labels(U))[0].p_value < 1e-10
