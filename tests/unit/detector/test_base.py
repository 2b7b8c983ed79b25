"""The shared pieces: state codec, ring buffer, Shapiro-Wilk W, the beta-binomial window test, validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sstats

from services.detector.base import pack, unpack
from services.detector.boundary import BoundarySignal
from services.detector.ood import OODSignal
from services.detector.prada import PradaSignal
from services.detector.stats import (
    binom_tail,
    class_beta_binomial_test,
    class_rate_posterior,
    ring_push,
    shapiro_w,
)
from services.detector.sweep import SweepSignal
from tests.unit.detector.conftest import Digits, Victim


def test_pack_roundtrip_and_refusals() -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], dtype=np.int16)}
    blob = pack("L1", {"x": ({"n": 3, "f": 0.25}, arrays), "y": ({}, {})})
    parts = unpack(blob, "L1")
    assert parts["x"][0] == {"n": 3, "f": 0.25}
    np.testing.assert_array_equal(parts["x"][1]["a"], arrays["a"])
    assert parts["x"][1]["b"].dtype == np.int16
    parts["x"][1]["a"][0, 0] = 9.0  # read back writable: states are mutated in place
    with pytest.raises(ValueError, match="layout"):
        unpack(blob, "L2")
    with pytest.raises(ValueError, match="magic"):
        unpack(b"XXXX" + blob[4:], "L1")
    with pytest.raises(ValueError, match="truncated"):
        unpack(blob[:-4], "L1")


def test_ring_push_wraps_and_keeps_the_latest() -> None:
    buf = np.zeros(5, dtype=np.int64)
    pos = ring_push(buf, 0, np.array([1, 2, 3]))
    pos = ring_push(buf, pos, np.array([4, 5, 6, 7]))
    assert pos == 2
    assert sorted(buf.tolist()) == [3, 4, 5, 6, 7]
    pos = ring_push(buf, pos, np.arange(10, 22))  # longer than the ring: only the last 5 survive
    assert sorted(buf.tolist()) == [17, 18, 19, 20, 21] and pos == 0


@pytest.mark.parametrize("n", [6, 11, 50, 101, 333, 500])
def test_shapiro_w_equals_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    for x in (rng.normal(size=n), rng.exponential(size=n), rng.uniform(size=n), np.round(rng.normal(size=n), 1)):
        assert shapiro_w(x) == pytest.approx(float(sstats.shapiro(x).statistic), abs=1e-7)
    assert shapiro_w(np.full(n, 3.0)) == 0.0


def test_beta_binomial_tends_to_binomial_and_is_valid_under_h0() -> None:
    flags = np.zeros(200, dtype=np.uint8)
    flags[:25] = 1
    classes = np.zeros(200, dtype=np.int64)
    # A posterior concentrated at 0.05 (1e8 reference rows) is the plain binomial test.
    a, b = np.array([5e6, 1.0]), np.array([95e6, 1.0])
    _, _, p, _ = class_beta_binomial_test(flags, classes, a, b, 1e-4)
    assert p == pytest.approx(binom_tail(25, 200, 0.05), rel=1e-3)
    # Under H0 (true per-class rates drawn from the posteriors) p-values are not too small too often.
    rng = np.random.default_rng(0)
    ref_flags = rng.random(600) < np.where(np.arange(600) % 2 == 0, 0.02, 0.12)
    ref_cls = np.arange(600) % 2
    a, b = class_rate_posterior(ref_flags, ref_cls, 2, prior_strength=20.0)
    ps = []
    for _ in range(400):
        rates = rng.beta(a[:2], b[:2])
        cls = rng.integers(0, 2, 200)
        ps.append(class_beta_binomial_test((rng.random(200) < rates[cls]).astype(np.uint8), cls, a, b, 1e-4)[2])
    assert np.mean(np.array(ps) <= 0.05) <= 0.08  # nominal 0.05; 400 draws -> +-0.02 of noise allowed


def test_signal_constructors_refuse_bad_parameters(digits: Digits, victim: Victim) -> None:
    X, y = digits.X_ref, victim.labels(digits.X_ref)
    bnd = BoundarySignal.fit(victim.margins(X), y, n_features=64, n_classes=10)
    with pytest.raises(ValueError, match="window"):
        BoundarySignal(bnd.baseline(), n_features=64, n_classes=10, window=0)
    with pytest.raises(ValueError, match="alpha"):
        BoundarySignal(bnd.baseline(), n_features=64, n_classes=10, alpha=1.5)
    with pytest.raises(ValueError, match="margin_quantile"):
        BoundarySignal.fit(victim.margins(X), y, n_features=64, n_classes=10, margin_quantile=0.0)
    with pytest.raises(ValueError, match="baseline"):
        PradaSignal(bnd.baseline(), n_features=64, n_classes=10)  # type: ignore[arg-type]
    prada = PradaSignal.fit(X, y, n_features=64, n_classes=10, null_streams=5)
    with pytest.raises(ValueError, match="delta"):
        PradaSignal(prada.baseline(), n_features=64, n_classes=10, delta=1.0)
    with pytest.raises(ValueError, match="min_distances"):
        PradaSignal(prada.baseline(), n_features=64, n_classes=10, window=50)
    with pytest.raises(ValueError, match="n_features"):
        PradaSignal(prada.baseline(), n_features=0, n_classes=10)
    with pytest.raises(ValueError, match="k="):
        OODSignal.fit(X[:4], X[4:], y[4:], n_features=64, n_classes=10)
    with pytest.raises(ValueError, match="max_changed"):
        SweepSignal.fit(X, y, n_features=64, n_classes=10, max_changed=64)
    with pytest.raises(ValueError, match="daily_volumes_ref"):
        SweepSignal.fit(X, y, n_features=64, n_classes=10, daily_volumes_ref=np.ones(3))
    with pytest.raises(ValueError, match="X must be"):
        bnd.observe(bnd.new_state(), np.zeros((3, 10)), None, np.zeros(3))
