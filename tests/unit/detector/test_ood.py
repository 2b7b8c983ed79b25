"""OOD probing: uniform noise, Jacobian steps and other-distribution images are far; benign data is not."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.ood import OODSignal
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
