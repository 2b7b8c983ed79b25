"""scikit-learn's digits for audit tests and benchmarks: 8×8 images flattened to 64 features scaled to [0, 1].

One seeded, stratified three-way split that every audit agrees on:

- ``owner``: the owner's private training data (half of the rows);
- ``pool``: natural data the owner never trained on (a quarter): what an extraction attacker queries and what
  independent models are trained on;
- ``test``: held out from everyone (a quarter): clean accuracy and fidelity.

The proportions match the red-team test split (tests/unit/redteam/conftest.py) so numbers are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DIGITS_MAX = 16.0  # load_digits pixels are integers 0..16
DIGITS_SHAPE = (8, 8)
DIGITS_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    x_owner: np.ndarray
    y_owner: np.ndarray
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_scaled() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float32 [n, 64] in [0, 1] and int64 labels."""
    x, y = load_digits(return_X_y=True)
    return (x / DIGITS_MAX).astype(np.float32), y.astype(np.int64)


def split_digits(seed: int = 0, owner_fraction: float = 0.5) -> DigitsSplit:
    """Owner / pool / test; what the owner does not get is halved between pool and test."""
    if not 0.0 < owner_fraction < 1.0:
        raise ValueError(f"owner_fraction must be in (0, 1), got {owner_fraction}")
    x, y = load_digits_scaled()
    xo, xr, yo, yr = train_test_split(x, y, train_size=owner_fraction, random_state=seed, stratify=y)
    xp, xt, yp, yt = train_test_split(xr, yr, test_size=0.5, random_state=seed, stratify=yr)
    return DigitsSplit(xo, yo, xp, yp, xt, yt)
