"""PRADA: Jacobian augmentation makes the min-distance distribution non-normal; natural streams do not.
Also: retries are excluded, memory is bounded, and what the cap costs on an attack stream."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.prada import PradaSignal
from tests.unit.detector import streams
from tests.unit.detector.conftest import Digits, Victim


@pytest.fixture(scope="module")
def signal(digits: Digits, victim: Victim) -> PradaSignal:
    return PradaSignal.fit(digits.X_ref, victim.labels(digits.X_ref), n_features=64, n_classes=10, seed=0)


@pytest.fixture(scope="module")
def jbda_stream(digits: Digits, victim: Victim) -> np.ndarray:
    return streams.jbda(digits.X_fresh[:150], victim.labels, rounds=3)  # 150 seeds -> 1,200 queries


def test_jacobian_augmentation_is_flagged(signal: PradaSignal, jbda_stream: np.ndarray, victim: Victim) -> None:
    results = streams.replay_signal(signal, jbda_stream, None, victim.labels(jbda_stream))
    tested = [r for r in results if r.statistic == r.statistic]
    assert results[0].p_value == 1.0 and results[1].p_value == 1.0  # PRADA needs > 100 pooled distances
    assert min(r.statistic for r in tested) < signal.delta  # the paper's rule: W < 0.9
    assert streams.min_p(results) < 1e-6  # and the calibrated null agrees


@pytest.mark.parametrize("kind", ["fresh", "natural_long", "retries"])
def test_benign_streams_pass(kind: str, signal: PradaSignal, digits: Digits, victim: Victim) -> None:
    rng = np.random.default_rng(5)
    if kind == "fresh":
        X = digits.X_fresh[rng.permutation(len(digits.X_fresh))]
    elif kind == "natural_long":  # 899 natural digits no baseline was fitted on (the victim's own data)
        X = digits.X_victim[rng.permutation(len(digits.X_victim))]
    else:
        X = streams.with_retries(digits.X_fresh[rng.permutation(len(digits.X_fresh))], rng)
    results = streams.replay_signal(signal, X, None, victim.labels(X))
    tested = [r for r in results if r.statistic == r.statistic]
    assert tested, "long enough to test"
    assert min(r.statistic for r in tested) >= signal.delta
    assert streams.min_p(results) > 1e-3
    if kind == "retries":
        assert results[-1].evidence["retries_excluded"] > 50


def test_the_default_cap_costs_little_on_jbda(signal: PradaSignal, jbda_stream: np.ndarray, victim: Victim) -> None:
    # bench/detector_throughput.py reports the same for caps 8, 16, 32 (8 loses this attack).
    unbounded = PradaSignal(
        signal.baseline(), n_features=64, n_classes=10, **{**signal.params(), "max_set_size": len(jbda_stream)}
    )
    y = victim.labels(jbda_stream)
    capped_w = [r.statistic for r in streams.replay_signal(signal, jbda_stream, None, y) if r.statistic == r.statistic]
    full_w = [r.statistic for r in streams.replay_signal(unbounded, jbda_stream, None, y) if r.statistic == r.statistic]
    assert signal.max_set_size == 32
    assert min(capped_w) < signal.delta and min(full_w) < signal.delta
    assert abs(min(capped_w) - min(full_w)) < 0.1


def test_state_size_is_bounded(signal: PradaSignal, digits: Digits, victim: Victim) -> None:
    state = signal.new_state()
    X = np.vstack([digits.X_victim, digits.X_fresh, digits.X_ref])
    sizes = []
    for s in range(0, len(X), 100):
        signal.observe(state, X[s : s + 100], None, victim.labels(X[s : s + 100]))
        sizes.append(len(signal.state_to_bytes(state)))
    members = signal.max_set_size * 10 * 64 * 4
    assert max(sizes) <= members + signal.window * 6 + 4096  # members + distance window + header
    assert sizes[-1] == sizes[-2], "full sets: the state no longer grows"
    assert int(state.fill.sum()) == signal.max_set_size * 10


def test_identical_distances_give_w_zero(signal: PradaSignal) -> None:
    # A perfectly regular attack: each query one fixed step from the previous one, all one class.
    x0 = np.zeros(64)
    X = x0 + np.outer(np.arange(150), np.full(64, 0.75))  # step length 6 > the retry radius
    result = streams.replay_signal(signal, X, None, np.zeros(150, dtype=np.int64), batch=150)[-1]
    assert result.statistic == 0.0 and result.fired
