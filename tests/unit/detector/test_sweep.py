"""Sweeps: one-feature-at-a-time and line walks are flagged; coverage and volume sub-tests; benign passes."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.sweep import SweepSignal
from tests.unit.detector import streams
from tests.unit.detector.conftest import Digits, Victim


@pytest.fixture(scope="module")
def signal(digits: Digits, victim: Victim) -> SweepSignal:
    return SweepSignal.fit(digits.X_ref, victim.labels(digits.X_ref), n_features=64, n_classes=10)


def test_one_feature_at_a_time_is_flagged(signal: SweepSignal, digits: Digits, victim: Victim) -> None:
    X = streams.feature_sweep(digits.X_fresh[0], pixels=range(10, 50), values=(0.0, 4.0, 8.0, 12.0, 16.0))
    results = streams.replay_signal(signal, X, None, victim.labels(X))
    assert results[0].fired and results[0].evidence["sparse_p"] < 1e-20
    assert results[-1].evidence["sparse_steps"] > 0.9 * results[-1].evidence["window_pairs"]


def test_line_walk_is_flagged_by_collinear_steps(signal: SweepSignal, digits: Digits, victim: Victim) -> None:
    X = streams.line_walk(digits.X_fresh[0], np.random.default_rng(6), n=150)
    results = streams.replay_signal(signal, X, None, victim.labels(X))
    assert results[-1].evidence["sparse_steps"] == 0  # every step moves all 64 pixels...
    assert results[0].fired and results[0].evidence["collinear_p"] < 1e-20  # ...along one line


@pytest.mark.parametrize("kind", ["fresh", "retries_and_returns"])
def test_benign_streams_pass(kind: str, signal: SweepSignal, digits: Digits, victim: Victim) -> None:
    rng = np.random.default_rng(7)
    X = digits.X_fresh[rng.permutation(len(digits.X_fresh))]
    if kind == "retries_and_returns":
        X = streams.with_retries(X, rng, retry=0.3, rescan=0.4)  # A -> B -> A' is a return, not a line
    results = streams.replay_signal(signal, X, None, victim.labels(X))
    assert not any(r.fired for r in results)
    assert streams.min_p(results) > 1e-3
    if kind == "retries_and_returns":
        assert results[-1].evidence["repeats_skipped"] > 30


def test_coverage_flags_balanced_queries_on_a_skewed_prior(digits: Digits, victim: Victim) -> None:
    # Reference traffic where classes 0-4 are 5x as common as 5-9.
    y_ref = victim.labels(digits.X_ref)
    keep = np.isin(y_ref, [0, 1, 2, 3, 4]) | (np.arange(len(y_ref)) % 5 == 0)
    sig = SweepSignal.fit(digits.X_ref[keep], y_ref[keep], n_features=64, n_classes=10)
    X = np.vstack([digits.X_victim, digits.X_fresh])
    y = victim.labels(X)
    balanced = np.concatenate([np.flatnonzero(y == c)[:100] for c in range(10)])
    balanced = balanced[np.random.default_rng(8).permutation(len(balanced))]
    common = np.flatnonzero(np.isin(y, [0, 1, 2]))[:1000]  # benign skew towards common classes
    r_bal = streams.replay_signal(sig, X[balanced], None, y[balanced])[-1]
    r_com = streams.replay_signal(sig, X[common], None, y[common])[-1]
    assert r_bal.evidence["coverage_p"] < 1e-4 and r_bal.fired
    assert r_com.evidence["coverage_p"] == 1.0 and not r_com.fired
    # On digits' near-uniform prior the same balanced stream is unremarkable (the test is vacuous there).
    plain = SweepSignal.fit(digits.X_ref, y_ref, n_features=64, n_classes=10)
    assert streams.replay_signal(plain, X[balanced], None, y[balanced])[-1].evidence["coverage_p"] == 1.0


def test_volume_needs_a_baseline_and_flags_a_heavy_client(digits: Digits, victim: Victim) -> None:
    volumes = np.random.default_rng(9).lognormal(np.log(150.0), 0.8, size=500)  # benign: ~150 queries/day
    y_ref = victim.labels(digits.X_ref)
    sig = SweepSignal.fit(digits.X_ref, y_ref, n_features=64, n_classes=10, daily_volumes_ref=volumes)
    X = digits.X_fresh[:250]
    y = victim.labels(X)
    heavy, light = sig.new_state(), sig.new_state()
    for i in range(0, 40):  # the same 250 rows 40 times: 10,000 queries within 40 minutes
        sig.update(heavy, X, None, y, now=60.0 * i)
    r_heavy = sig.evaluate(heavy, now=2400.0)
    for day in range(4):  # 250 queries in four days
        sig.update(light, X[day * 60 : (day + 1) * 60], None, y[day * 60 : (day + 1) * 60], now=86_400.0 * day)
    r_light = sig.evaluate(light, now=86_400.0 * 3)
    assert r_heavy.evidence["volume_p"] < 1e-6 and r_heavy.fired
    assert r_light.evidence["volume_p"] > 0.05
    without = SweepSignal.fit(digits.X_ref, victim.labels(digits.X_ref), n_features=64, n_classes=10)
    state = without.new_state()
    without.update(state, X, None, y, now=0.0)
    assert not without.volume_enabled and "volume_p" not in without.evaluate(state, now=0.0).evidence
