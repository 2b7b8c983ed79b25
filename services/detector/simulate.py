"""Benign client streams simulated from reference data: what the detector's null distributions are fitted on.

Every stream draws reference rows without replacement, so no stream repeats a row unless it simulates a
retry. Profiles cover the benign behaviours a signal could mistake for an attack:
- ``shuffled``: an i.i.d. sample of the reference distribution;
- ``skewed``: a client interested in a few classes (class weights ~ Dirichlet(0.3): typically 2-3 classes
  carry most of the stream), drawn without replacement with probability proportional to the weight;
- retries: after any row, with probability ``retry_rate``, the same row again (a client retrying after a
  timeout);
- timestamps, when benign daily volumes are known: a Poisson stream at a rate drawn from those volumes.

These are simplifications of real traffic (no sessions, no topical bursts, no near-duplicates with
noise): the calibrated thresholds are only as representative as these streams and the reference data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from audit.validation import positive_int, unit_interval

DAY_S = 86_400.0
SKEW_CONCENTRATION = 0.3  # Dirichlet concentration: < 1 puts most weight on a few classes


@dataclass(frozen=True, slots=True, eq=False)
class BenignStream:
    X: np.ndarray
    outputs: np.ndarray | None
    labels: np.ndarray
    times: np.ndarray | None  # unix-like seconds from 0, or None
    profile: str
    source: int = 0  # which calibration fold the rows came from (cross-fitting)


def benign_streams(
    X: np.ndarray,
    outputs: np.ndarray | None,
    labels: np.ndarray,
    *,
    n_streams: int,
    length: int | None = None,
    skew_fraction: float = 0.3,  # ~a third of clients concentrate on a few classes
    retry_rate: float = 0.03,  # 3 % of rows retried: timeouts and double clicks
    daily_volumes: np.ndarray | None = None,
    seed: int = 0,
    source: int = 0,
) -> Iterator[BenignStream]:
    """Yield ``n_streams`` seeded benign streams of ``length`` distinct rows (default: all rows) plus retries."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    n = X.shape[0]
    if labels.shape[0] != n or (outputs is not None and outputs.shape[0] != n):
        raise ValueError("X, outputs and labels must have the same number of rows")
    positive_int("n_streams", n_streams)
    length = n if length is None else min(positive_int("length", length), n)
    unit_interval("skew_fraction", skew_fraction, open_low=False, open_high=False)
    unit_interval("retry_rate", retry_rate, open_low=False)
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1 if n else 1
    volumes = None if daily_volumes is None else np.asarray(daily_volumes, dtype=np.float64).reshape(-1)
    for _ in range(n_streams):
        if rng.random() < skew_fraction:
            profile = "skewed"
            w = rng.dirichlet(np.full(n_classes, SKEW_CONCENTRATION))[np.maximum(labels, 0)]
            w = np.maximum(w, 1e-12)  # every row stays drawable once the favourite classes run out
            rows = rng.choice(n, size=length, replace=False, p=w / w.sum())
        else:
            profile = "shuffled"
            rows = rng.permutation(n)[:length]
        repeat = np.where(rng.random(length) < retry_rate, 2, 1)
        rows = np.repeat(rows, repeat)
        times = None
        if volumes is not None and volumes.size:
            rate = float(rng.choice(volumes)) / DAY_S
            times = np.cumsum(rng.exponential(1.0 / max(rate, 1e-9), size=rows.size))
        yield BenignStream(
            X=X[rows],
            outputs=None if outputs is None else outputs[rows],
            labels=labels[rows],
            times=times,
            profile=profile,
            source=source,
        )
