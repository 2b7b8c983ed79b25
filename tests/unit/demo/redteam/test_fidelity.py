"""Fidelity measures on hand-made answers, and their reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from services.demo.redteam import Domain, fidelity


def test_agreement_mixes_labels_and_probabilities() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert fidelity.agreement(probs, np.array([0, 1, 1, 1])) == 0.75
    assert fidelity.agreement(np.array([[0], [1]]), np.array([0, 0])) == 0.5  # a [n, 1] label column
    with pytest.raises(ValueError, match="compare"):
        fidelity.agreement(np.array([0, 1]), np.array([0]))


def test_total_variation_is_half_the_l1_distance() -> None:
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    q = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert fidelity.total_variation(p, q) == pytest.approx(0.5)  # rows: 1.0 and 0.0
    assert fidelity.total_variation(p, p) == 0.0
    with pytest.raises(ValueError, match="equal shape"):
        fidelity.total_variation(p, q[:, :1])


def test_measure_uses_seeded_uniform_points_and_skips_tvd_for_labels() -> None:
    dom = Domain.box(-1, 1, 3)

    def victim(X: np.ndarray) -> np.ndarray:
        return (X[:, 0] > 0).astype(int)

    def copy(X: np.ndarray) -> np.ndarray:  # wrong on 0 < x0 <= 0.5: a quarter of the domain
        return (X[:, 0] > 0.5).astype(int)

    X_test = np.array([[0.7, 0, 0], [-0.2, 0, 0], [0.3, 0, 0], [0.9, 0, 0]])
    f = fidelity.measure(copy, victim, X_test, dom, n_uniform=4000, seed=3)
    assert f.test_agreement == 0.75 and f.test_tvd is None
    assert f.uniform_agreement == pytest.approx(0.75, abs=0.03)  # 3 standard errors at n = 4,000
    assert fidelity.uniform_agreement(copy, victim, dom, n=4000, seed=3) == f.uniform_agreement
    assert fidelity.heldout_agreement(copy, victim, X_test) == 0.75
