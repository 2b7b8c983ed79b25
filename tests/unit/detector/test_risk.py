"""Risk combination and threshold calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.detector.risk import calibrate, combine, gumbel_threshold
from services.detector.simulate import BenignStream


def test_combine() -> None:
    assert combine([0.01, 0.5, 0.9, 1.0]) == pytest.approx(0.04)
    assert combine([0.5, 0.9]) == 1.0  # Bonferroni caps at 1
    # Fisher: -2 ln(0.01) - 2 ln(0.01) = 18.42 on chi^2 with 4 df -> p ~ 1.0e-3
    assert combine([0.01, 0.01], "fisher") == pytest.approx(1.0e-3 * (1 - math.log(1e-4)) / 10, rel=1e-3)
    assert combine([]) == 1.0
    with pytest.raises(ValueError, match="method"):
        combine([0.1], "max")  # type: ignore[arg-type]


def test_gumbel_threshold_extrapolates_block_maxima() -> None:
    """Maxima of 1 block fitted; the threshold for 20 blocks must hold its FPR on fresh 20-block maxima."""
    rng = np.random.default_rng(10)

    def block_max(blocks: int, n: int) -> np.ndarray:  # a "stream" = 10 correlated evaluations per block
        return np.max(rng.gumbel(0.0, 1.0, size=(n, blocks * 10)), axis=1)

    fitted = block_max(1, 400)
    threshold, _, _ = gumbel_threshold(fitted, stretch=20.0, fpr=0.01)
    fresh = block_max(20, 20_000)
    assert 0.004 <= np.mean(fresh >= threshold) <= 0.02


def _streams(n: int, length: int) -> list[BenignStream]:
    return [BenignStream(np.zeros((length, 2)), None, np.zeros(length, dtype=np.int64), None, "shuffled")] * n


def test_calibrate_floors_and_levels() -> None:
    rng = np.random.default_rng(11)

    def scores(_: BenignStream) -> list[float]:
        return list(-np.log10(rng.uniform(size=6)))  # 6 evaluations of valid p-values

    th = calibrate(scores, _streams(200, 300), lifetime_queries=10_000, target_fpr=1e-3, high_fpr=1e-5, eval_every=50)
    assert th.alert >= -math.log10(1e-3 / 200)  # union bound over the 200 tests of a lifetime
    assert th.high > th.alert >= th.sim_max
    assert th.level(th.alert - 0.01) == "low" and th.level(th.alert) == "medium" and th.level(th.high) == "high"
    # Benign scores far more extreme than valid p-values: the Gumbel part raises the threshold.
    heavy = calibrate(lambda s: [float(x) for x in rng.gumbel(5.0, 2.0, size=6)], _streams(200, 300))
    assert heavy.alert > th.alert + 5
    with pytest.raises(ValueError, match="20 simulated"):
        calibrate(scores, _streams(5, 300))
    with pytest.raises(ValueError, match="high_fpr"):
        calibrate(scores, _streams(50, 300), target_fpr=1e-4, high_fpr=1e-3)
