"""Victims and data splits for the red-team tests: small sklearn models on sklearn's digits and breast cancer.

Digits are split three ways (stratified, seeded): half trains the victims, a quarter is the attacker's
natural pool (never seen by a victim) and a quarter is held-out test data for measuring fidelity.
Fixtures are session-scoped because every victim trains in well under a second and is never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from services.demo.redteam import Domain


@dataclass(frozen=True)
class Split:
    X_victim: np.ndarray
    y_victim: np.ndarray
    X_pool: np.ndarray
    y_pool: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    domain: Domain


@pytest.fixture(scope="session")
def digits() -> Split:
    X, y = load_digits(return_X_y=True)
    Xv, Xr, yv, yr = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    Xp, Xt, yp, yt = train_test_split(Xr, yr, test_size=0.5, random_state=0, stratify=yr)
    return Split(Xv, yv, Xp, yp, Xt, yt, Domain.box(0, 16, 64))


@pytest.fixture(scope="session")
def cancer() -> Split:
    X, y = load_breast_cancer(return_X_y=True)
    Xv, Xr, yv, yr = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    Xp, Xt, yp, yt = train_test_split(Xr, yr, test_size=0.5, random_state=0, stratify=yr)
    # The attacker's idea of the input range: what its own natural samples span.
    return Split(Xv, yv, Xp, yp, Xt, yt, Domain.of(Xp))


@pytest.fixture(scope="session")
def softmax_victim(digits: Split) -> Pipeline:
    """Multinomial logistic regression behind a scaler (still linear in the raw pixels): ~0.96 accuracy."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(digits.X_victim, digits.y_victim)


@pytest.fixture(scope="session")
def mlp_victim(digits: Split) -> MLPClassifier:
    """One hidden layer of 64: ~0.96 accuracy."""
    return MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0).fit(digits.X_victim, digits.y_victim)


@pytest.fixture(scope="session")
def tree_victim(digits: Split) -> DecisionTreeClassifier:
    """16 leaves, depth 8: ~0.76 accuracy, every leaf with a distinct class distribution."""
    return DecisionTreeClassifier(max_leaf_nodes=16, random_state=0).fit(digits.X_victim, digits.y_victim)


@pytest.fixture(scope="session")
def cancer_victim(cancer: Split) -> Pipeline:
    """Binary logistic regression on breast cancer (30 features of very different scales)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(cancer.X_victim, cancer.y_victim)
