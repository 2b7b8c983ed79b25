"""Attack and benign query streams synthesised for the detector tests (digits: 64 pixels in 0..16).

Attacks follow the signatures in docs/research.md "Detection: attack signatures": uniform random inputs (Tramèr's
equation
solving), bisection to the boundary between differently-labelled natural points (Tramèr's line search),
Jacobian-based augmentation with a logistic-regression substitute (Papernot's JBDA), one-feature-at-a-time
sweeps (tree path finding, Lowd-Meek), a walk along one random line (critical-point search), and natural
images from another distribution (Knockoff/CopycatCNN: shifted or rotated digits).
Benign streams: fresh held-out digits in random order, class-skewed selections, retries and re-scans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from services.detector.base import Signal, SignalResult
from services.detector.engine import Assessment, DetectionEngine

Labeller = Callable[[np.ndarray], np.ndarray]
LO, HI = 0.0, 16.0


def uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(LO, HI, size=(n, 64))


def line_search(X: np.ndarray, label: Labeller, rng: np.random.Generator, pairs: int, steps: int = 8) -> np.ndarray:
    """For random pairs of differently-labelled points: both ends, then ``steps`` bisection midpoints."""
    out: list[np.ndarray] = []
    y = label(X)
    for _ in range(pairs):
        i = int(rng.integers(len(X)))
        j = int(rng.choice(np.flatnonzero(y != y[i])))
        lo, hi = X[i], X[j]
        out += [lo, hi]
        for _ in range(steps):
            mid = (lo + hi) / 2.0
            out.append(mid)
            if label(mid[None, :])[0] == y[i]:
                lo = mid
            else:
                hi = mid
    return np.array(out)


def jbda(seeds: np.ndarray, label: Labeller, rounds: int, step: float = 1.6) -> np.ndarray:
    """Seeds, then each round x + step * sign(d p_y / d x) of a logistic-regression substitute (1.6 = 0.1 of
    the pixel range, cleverhans' λ), in the order an attacker sends them."""
    S = seeds.copy()
    sent = [seeds]
    for r in range(rounds):
        y = label(S)
        sub = LogisticRegression(max_iter=500).fit(S / HI, y)
        W, P = sub.coef_, sub.predict_proba(S / HI)
        ci = np.searchsorted(sub.classes_, y)
        grad = P[np.arange(len(S)), ci][:, None] * (W[ci] - P @ W)
        sign = -1.0 if r < 3 else 1.0  # cleverhans: -λ for three rounds, +λ afterwards
        new = np.clip(S + sign * step * np.sign(grad), LO, HI)
        sent.append(new)
        S = np.vstack([S, new])
    return np.vstack(sent)


def feature_sweep(x0: np.ndarray, pixels: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """From ``x0``, set one pixel at a time to each of ``values`` (path finding's per-feature probes)."""
    out = []
    for p in pixels:
        for v in values:
            x = x0.copy()
            x[p] = v
            out.append(x)
    return np.array(out)


def line_walk(x0: np.ndarray, rng: np.random.Generator, n: int, step: float = 0.05) -> np.ndarray:
    """Points x0 + t * v along one random dense direction v, t on a grid (a critical-point search)."""
    v = rng.normal(size=64)
    v /= np.linalg.norm(v)
    t = np.arange(n) * step * 16.0
    return x0[None, :] + t[:, None] * v[None, :]


def shifted(X: np.ndarray, pixels: int) -> np.ndarray:
    """Natural digits from another distribution: translated right by ``pixels``, zeros shifted in."""
    imgs = X.reshape(-1, 8, 8)
    out = np.zeros_like(imgs)
    out[:, :, pixels:] = imgs[:, :, : 8 - pixels]
    return out.reshape(-1, 64)


def rotated(X: np.ndarray) -> np.ndarray:
    return np.rot90(X.reshape(-1, 8, 8), 1, axes=(1, 2)).reshape(-1, 64)


def skewed(X: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Only rows labelled with ``classes``: a benign user interested in a few kinds of input."""
    return X[np.isin(y, classes)]


def with_retries(
    X: np.ndarray, rng: np.random.Generator, retry: float = 0.3, rescan: float = 0.2, noise: float = 0.3
) -> np.ndarray:
    """After each row: with prob ``retry`` the same row again, with prob ``rescan`` a noisy copy (sigma
    ``noise`` grey levels, clipped) of it or of a recent row (a re-scanned document)."""
    out: list[np.ndarray] = []
    for i, x in enumerate(X):
        out.append(x)
        if rng.random() < retry:
            out.append(x.copy())
        if rng.random() < rescan:
            base = X[max(0, i - int(rng.integers(0, 3)))]
            out.append(np.clip(base + rng.normal(0.0, noise, 64), LO, HI))
    return np.array(out)


def replay_signal(
    signal: Signal[Any],
    X: np.ndarray,
    outputs: np.ndarray | None,
    labels: np.ndarray,
    batch: int = 50,
    roundtrip: bool = True,
) -> list[SignalResult]:
    """One result per batch; the state goes through bytes between batches, as in the service."""
    state = signal.new_state()
    results = []
    for s in range(0, len(X), batch):
        out = None if outputs is None else outputs[s : s + batch]
        results.append(signal.observe(state, X[s : s + batch], out, labels[s : s + batch]))
        if roundtrip:
            state = signal.state_from_bytes(signal.state_to_bytes(state))
    return results


def replay_engine(
    engine: DetectionEngine,
    X: np.ndarray,
    outputs: np.ndarray | None,
    labels: np.ndarray,
    batch: int = 50,
    roundtrip: bool = True,
) -> list[Assessment]:
    """The evaluated assessments of a stream replayed in batches (state through bytes between batches)."""
    state = engine.new_client_state()
    out: list[Assessment] = []
    for s in range(0, len(X), batch):
        o = None if outputs is None else outputs[s : s + batch]
        a = engine.observe(state, X[s : s + batch], o, labels[s : s + batch], now=float(s))
        if roundtrip:
            state = engine.state_from_bytes(engine.state_to_bytes(state))
        if a.evaluated:
            out.append(a)
    return out


def first_alert(assessments: list[Assessment]) -> int | None:
    """The client's query count at the first alerting test, or None."""
    return next((a.tested_at for a in assessments if a.alert), None)


def min_p(results: list[SignalResult]) -> float:
    return min(r.p_value for r in results)
