"""Fixtures for the detector tests: digits, a small seeded victim, and one fitted engine for the session.

Digits (8x8, raw pixels 0..16, the gateway's input space) are split three ways, stratified and seeded:
half trains the victim, 600 rows are the owner's benign reference data, the remaining ~300 are *fresh*
benign queries no baseline has seen. Everything here is session-scoped: nothing is mutated.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from services.detector.engine import DetectionEngine, FitConfig
from services.detector.stats import top2_margin


@dataclass(frozen=True)
class Victim:
    model: MLPClassifier

    def proba(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(np.asarray(X, dtype=np.float64) / 16.0))

    def labels(self, X: np.ndarray) -> np.ndarray:
        return self.proba(X).argmax(axis=1)

    def margins(self, X: np.ndarray) -> np.ndarray:
        return top2_margin(self.proba(X))


@dataclass(frozen=True)
class Digits:
    X_victim: np.ndarray
    y_victim: np.ndarray
    X_ref: np.ndarray
    X_fresh: np.ndarray


@pytest.fixture(scope="session")
def digits() -> Digits:
    X, y = load_digits(return_X_y=True)
    Xv, Xr, yv, yr = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    Xref, Xfresh = train_test_split(Xr, test_size=1 / 3, random_state=0, stratify=yr)
    return Digits(Xv, yv, Xref, Xfresh)


@pytest.fixture(scope="session")
def victim(digits: Digits) -> Victim:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # One hidden layer of 32 units: ~0.95 held-out accuracy in well under a second.
        model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
        model.fit(digits.X_victim / 16.0, digits.y_victim)
    return Victim(model)


@pytest.fixture(scope="session")
def engine(digits: Digits, victim: Victim) -> DetectionEngine:
    # 100 simulated benign clients instead of 200: halves the fit; the tests check fresh benign data anyway.
    return DetectionEngine.fit(
        digits.X_ref, victim.proba(digits.X_ref), reference_model=victim.proba, config=FitConfig(n_sim_clients=100)
    )
