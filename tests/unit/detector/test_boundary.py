"""Boundary proximity: bisection to the boundary is flagged, with or without probabilities; benign is not."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.boundary import BoundarySignal
from tests.unit.detector import streams
from tests.unit.detector.conftest import Digits, Victim

ALPHA = 1e-4  # the signal's default standalone level


@pytest.fixture(scope="module")
def signal(digits: Digits, victim: Victim) -> BoundarySignal:
    return BoundarySignal.fit(
        victim.margins(digits.X_ref),
        victim.labels(digits.X_ref),
        n_features=64,
        n_classes=10,
        reference_model=victim.proba,
    )


def test_line_search_is_flagged_with_probabilities_and_label_only(
    signal: BoundarySignal, digits: Digits, victim: Victim
) -> None:
    X = streams.line_search(digits.X_fresh, victim.labels, np.random.default_rng(1), pairs=20)
    P = victim.proba(X)
    with_probs = streams.replay_signal(signal, X, P, P.argmax(1))
    label_only = streams.replay_signal(signal, X, None, P.argmax(1))  # margins from the reference model
    for results in (with_probs, label_only):
        assert results[0].fired, "the first 50 queries of a bisection already hug the boundary"
        assert streams.min_p(results) < 1e-10
        assert results[-1].statistic > 0.3  # share of small margins; benign ~0.05
    assert label_only[-1].evidence["unscored_label_only"] == 0


def test_label_only_without_reference_model_is_not_scored(
    signal: BoundarySignal, digits: Digits, victim: Victim
) -> None:
    bare = BoundarySignal(signal.baseline(), n_features=64, n_classes=10, **signal.params())
    X = streams.line_search(digits.X_fresh, victim.labels, np.random.default_rng(1), pairs=10)
    results = streams.replay_signal(bare, X, None, victim.labels(X))
    assert all(r.p_value == 1.0 and not r.fired for r in results)
    assert results[-1].evidence["unscored_label_only"] == len(X)


@pytest.mark.parametrize("kind", ["fresh", "skewed_ambiguous", "retries"])
def test_benign_streams_pass(kind: str, signal: BoundarySignal, digits: Digits, victim: Victim) -> None:
    rng = np.random.default_rng(2)
    X = digits.X_fresh[rng.permutation(len(digits.X_fresh))]
    if kind == "skewed_ambiguous":
        # The classes with the most small-margin answers: a plain one-rate test would call this hugging.
        y = victim.labels(digits.X_ref)
        small = victim.margins(digits.X_ref) < signal.baseline().tau
        worst = np.argsort([-small[y == c].mean() for c in range(10)])[:3]
        X = streams.skewed(X, victim.labels(X), worst.tolist())
    elif kind == "retries":
        X = streams.with_retries(X, rng)
    P = victim.proba(X)
    results = streams.replay_signal(signal, X, P, P.argmax(1))
    assert not any(r.fired for r in results)
    assert streams.min_p(results) > ALPHA * 10
