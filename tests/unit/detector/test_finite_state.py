"""A client cannot poison its own detector state with extreme but finite values.

PRADA stores queries and distances as float32 and squares them. Before ``check_batch`` clipped inputs to
``INPUT_ABS_MAX``, one row at 3e38 (finite in float32) made every later distance of that class NaN and
PRADA's p-value 1 for the rest of the client's life: a Jacobian-augmentation attack behind one such row
went unseen by the signal built to catch it.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.base import unpack
from services.detector.prada import PradaSignal
from tests.unit.detector import streams
from tests.unit.detector.conftest import Digits, Victim


@pytest.fixture(scope="module")
def signal(digits: Digits, victim: Victim) -> PradaSignal:
    return PradaSignal.fit(digits.X_ref, victim.labels(digits.X_ref), n_features=64, n_classes=10, seed=0)


@pytest.mark.parametrize("value", [3e38, -3e38, 1e200, 1e16])
def test_one_extreme_row_does_not_blind_prada(
    signal: PradaSignal, digits: Digits, victim: Victim, value: float
) -> None:
    jbda = streams.jbda(digits.X_fresh[:50], victim.labels, rounds=2)  # 50 seeds -> 200 queries
    poison = np.full((1, 64), value)
    x = np.vstack([poison, jbda])
    y = np.concatenate([victim.labels(jbda[:1]), victim.labels(jbda)])  # the poison row joins a real class
    results = streams.replay_signal(signal, x, None, y)
    assert streams.min_p(results) < 1e-3  # still flagged
    assert all(np.isfinite(r.statistic) for r in results[2:])  # tested windows: no NaN statistic
    state = signal.new_state()
    signal.observe(state, x, None, y)
    for _, arrays in unpack(signal.state_to_bytes(state), signal.layout()).values():
        for arr in arrays.values():
            if arr.dtype.kind == "f":
                assert np.isfinite(arr).all()
