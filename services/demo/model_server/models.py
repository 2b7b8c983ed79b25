"""The demo victim models: scikit-learn classifiers on scikit-learn's digits (8×8 images, 64 features 0..16).

The split is fixed by seed so every component (model server, detector reference data, red-team,
benchmarks) agrees on which rows the owner trained on ("private") and which it never saw ("holdout").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

DIGITS_MAX = 16.0  # pixel intensities in load_digits are integers 0..16


@dataclass(frozen=True)
class ServingSplit:
    """The demo model server's split of raw digits (pixels 0..16): the owner's private training half and the
    holdout benign users and attackers draw from. (``audit.data.DigitsSplit`` is another split: scaled to
    [0, 1], owner / pool / test, for the ownership audits' experiments.)"""

    x_private: np.ndarray  # the owner's training data
    y_private: np.ndarray
    x_holdout: np.ndarray  # same distribution, never used for training (benign users, test data)
    y_holdout: np.ndarray


def digits_split(seed: int = 0, private_fraction: float = 0.5) -> ServingSplit:
    x, y = load_digits(return_X_y=True)
    xp, xh, yp, yh = train_test_split(
        x.astype(np.float64), y, train_size=private_fraction, random_state=seed, stratify=y
    )
    return ServingSplit(xp, yp, xh, yh)


def holdout_halves(split: ServingSplit, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The holdout cut in two stratified halves: (x_reference, y_reference, x_traffic, y_traffic).

    The *reference* half is the owner's benign reference data: the detector's baselines are fitted on it, and
    benchmarks use it as the fidelity test set, because no client ever queries it. The *traffic* half is what
    demo and benchmark clients (benign users and attackers' natural data) draw their queries from. Keeping
    the two apart means the detector is always scored on queries its baselines never saw.
    """
    x_ref, x_traffic, y_ref, y_traffic = train_test_split(
        split.x_holdout, split.y_holdout, test_size=0.5, random_state=seed, stratify=split.y_holdout
    )
    return x_ref, y_ref, x_traffic, y_traffic


def _scale(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) / DIGITS_MAX


def train_model(kind: str, split: ServingSplit, seed: int = 0) -> Pipeline:
    """A fitted pipeline taking raw digits features (0..16) and giving class probabilities."""
    if kind == "mlp":
        # One hidden layer of 64: ~0.97 holdout accuracy, trains in ~1 s on one core.
        est = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=seed)
    elif kind == "logreg":
        est = LogisticRegression(max_iter=2000, C=1.0)
    elif kind == "tree":
        # 32 leaves: a tree the path-finding attack can map in a few thousand queries (~0.75 accuracy).
        est = DecisionTreeClassifier(max_leaf_nodes=32, random_state=seed)
    elif kind == "binary":
        # "is it a 5 or more?": a binary linear model, the target Lowd-Meek's line search is defined for.
        # Balanced classes (~50/50), so test agreement measures the copy (for "is it a 3?" a constant
        # "no" would already agree on 90 % of digits).
        model = make_pipeline(FunctionTransformer(_scale), LogisticRegression(max_iter=2000))
        model.fit(split.x_private, (split.y_private >= 5).astype(int))
        return model
    else:
        raise ValueError(f"unknown model kind '{kind}' (mlp, logreg, tree, binary)")
    model = make_pipeline(FunctionTransformer(_scale), est)
    model.fit(split.x_private, split.y_private)
    return model


MODEL_KINDS = {"digits-mlp": "mlp", "digits-logreg": "logreg", "digits-tree": "tree", "digits-binary": "binary"}
