"""The *solve template*: what an equation-solving thief's copy carries of a key's probability mark.

Why. The equation-solving attack (Tramèr, Zhang, Juels, Reiter, Ristenpart, USENIX Security 2016) fits a
softmax-linear model to the served probabilities by solving, per answered query x and class j, the linear
equations log p_j(x) − log p_r(x) = (w_j − w_r)·x + (b_j − b_r) (r: the row's most probable class; classes whose
probability underflowed skipped) in least squares. Its copy is linear in the input, so it can hold only the part
of the keyed cosine that a linear model can, and the probability statistics of ``AnswerWatermark
.verify_probabilities`` found it on the digits world for 5–9 of 20 keys (docs/benchmarks.md).

But the auditor knows what such a thief solved: the suspected clients' logged inputs are in the query log, and
the owner's unmarked answers on them can be asked again. The probability mark moves mass into one keyed class c*
and takes it from every other class in proportion, so the ratios among the other classes are unchanged: a solve
of the marked answers differs from the solve of the unmarked ones (the *reference solve*, key-independent)
essentially in class c*'s logit, by the least-squares fit, over the logged inputs, of the mark's change of the
equations that involve c* (the *template* of the key; with every other class's logit held at the reference
solve's). That change is computable for every key, the true one and the wrong ones alike, from the logged inputs
and the owner's unmarked answers. The test statistic of a key is the correlation, on the probes, of the
suspect's c*-logit departure from the reference solve (its log-ratio of c* to its most probable other class,
corrected by the reference solve's logits) with the key's template, after the direction every key's template
shares (lifting c* where it is small: the mean template over all keys, a symmetric function of the key set) is
projected out of both. On the digits equation-solving copy the true key's template and the copy's departure
correlate at 0.8–1.0 and the best of 1,999 wrong keys at 0.4–0.65 (12 design keys; the four the probability
statistics missed included): docs/benchmarks.md.

Validity. The template of a key is computed the same way for every key from key-independent inputs (the logged
inputs, the owner's unmarked answers), and the common direction is symmetric in the keys, so under the null
(suspect independent of the key) the true key's statistic is exchangeable with the wrong keys' and the rank
p-value stays exact, whatever the suspect is; a copy that is not linear simply gains nothing from it.

Cost and limits. One joint least-squares solve ((k − 1)(d + 1) unknowns) for the reference, and per key a
(d + 1)-dimensional weighted solve: applied up to ``SOLVE_MAX_FEATURES`` input features (digits: 64; at MNIST's
784 the per-key solves for thousands of wrong keys cost minutes, and the red team's equation-solving thief does
not run there either), on the first ``SOLVE_MAX_ROWS`` distinct logged inputs (a thief that solved more rows is
mirrored approximately: less power, the same validity). It needs the logged inputs: with fresh reference probes
there is no solve to mirror.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Memory bounds (an audit of a high-volume client must not exhaust the worker): the templates hold
# [rows, keys] angles and [rows, (d + 1)²] outer products, 128 MB and 270 MB at these caps with 7,999 wrong keys.
SOLVE_MAX_FEATURES = 128
SOLVE_MAX_ROWS = 2000
# The equation-solving thief's skip threshold for an underflowed probability (float32's normal range ends at
# 1.2e-38, so 1e-30 keeps every value a float32 transport carries with full relative precision).
UNDERFLOW = 1e-30
KEYS_PER_CHUNK = 128  # keys' served answers [chunk × n, k] and Gram matrices [chunk, d+1, d+1] stay small

# (probabilities [n, k], the signal s [n]) → the probabilities the mark serves for that signal (c*'s move)
MarkMove = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _design(x: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])


def _log(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(np.maximum(p, 1e-300)))


@dataclass(frozen=True)
class SolveReference:
    """The reference solve on the logged inputs: the softmax-linear model a least-squares solve of the owner's
    *unmarked* answers gives (class 0's logit fixed at zero), and what the templates need."""

    x: np.ndarray  # [n, d] the logged inputs the thief was served marked probabilities on
    owner: np.ndarray  # [n, k] the owner's unmarked probabilities on them
    theta: np.ndarray  # [k, d + 1] logit weights of the reference solve (row 0 zero)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def fit(cls, x: np.ndarray, owner_probabilities: np.ndarray) -> SolveReference:
        x = np.asarray(x, dtype=np.float64)
        p = np.asarray(owner_probabilities, dtype=np.float64)
        if x.ndim != 2 or p.ndim != 2 or len(x) != len(p) or len(x) < 2:
            raise ValueError("need logged inputs [n >= 2, d] and the owner's probabilities [n, k] on them")
        if x.shape[1] > SOLVE_MAX_FEATURES or len(x) > SOLVE_MAX_ROWS:
            raise ValueError(
                f"the solve template runs up to {SOLVE_MAX_FEATURES} features and {SOLVE_MAX_ROWS} rows, "
                f"got {x.shape}"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(p))):
            raise ValueError("logged inputs and probabilities must be finite")
        return cls(x, p, solve_softmax_linear(_design(x), p))

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(_design(x) @ self.theta.T)

    def departure(self, x_probe: np.ndarray, suspect: np.ndarray, c: int) -> np.ndarray:
        """[n] the suspect's class-c logit departure from the reference solve: its log-ratio of c to its most
        probable other class r, plus the reference's logit gap between r and c (zero for the reference itself)."""
        q = np.asarray(suspect, dtype=np.float64)
        rows = np.arange(len(q))
        others = q.copy()
        others[:, c] = -np.inf
        r = others.argmax(axis=1)
        ell = self.logits(x_probe)
        # floored at 1e-300, not at the solve's UNDERFLOW: a linear copy's c* goes far below 1e-30 on some probes
        # and its log there is exactly its linear logit (flooring at 1e-30 cut the departure: docs/benchmarks.md);
        # a float32 transport underflows below 1.2e-38, so an endpoint's answers lose those probes to the floor
        log_q = _log(q)
        return np.asarray(log_q[:, c] - log_q[rows, r] + ell[rows, r] - ell[:, c])

    def templates(self, move: MarkMove, c: int, angle: np.ndarray, x_probe: np.ndarray) -> np.ndarray:
        """[n_probe, keys] the change of class c's logit that a solve of the marked answers makes, per key,
        on the probes (``coefficients`` evaluated there)."""
        return np.asarray(_design(x_probe) @ self.coefficients(move, c, angle))

    def coefficients(self, move: MarkMove, c: int, angle: np.ndarray) -> np.ndarray:
        """[d + 1, keys] the change of class c's logit weights that a solve of the marked answers makes.

        ``angle`` [n, keys]: each key's cosine argument on the logged inputs; ``move`` serves the owner's
        probabilities for a given signal. Per key: the equations involving c of the thief's solve (rows whose
        most probable class is not c: c against that class; rows whose most probable class is c: c against every
        other class), with the other classes' logits held at the reference solve's, give targets for c's logit;
        their weighted least-squares fit minus the reference's c logit. The last result is kept: a sequential
        audit's looks share their wrong keys, so the second look costs nothing here."""
        fingerprint = (c, angle.shape, hashlib.sha256(np.ascontiguousarray(angle).tobytes()).hexdigest())
        cached = self._cache.get("coefficients")
        if cached is not None and cached[0] == fingerprint:
            return np.asarray(cached[1])
        p = self.owner
        n, k = p.shape
        z = _design(self.x)
        ell = z @ self.theta.T  # [n, k]
        ref = p.argmax(axis=1)
        base_c = ell[:, c]
        top_c = np.flatnonzero(ref == c)  # rows whose most probable class is c (few)
        rest = np.flatnonzero(ref != c)
        # Σ_n w_n z_n z_nᵀ for many weight vectors at once: one matrix product with the rows' outer products
        outer = (z[:, :, None] * z[:, None, :]).reshape(n, -1)
        dz = z.shape[1]
        ridge = 1e-9 * float(np.mean(np.sum(z * z, axis=0))) * np.eye(dz)
        out = np.zeros((dz, angle.shape[1]))
        for start in range(0, angle.shape[1], KEYS_PER_CHUNK):
            stop = min(angle.shape[1], start + KEYS_PER_CHUNK)
            m = stop - start
            s = np.cos(angle[:, start:stop]).T.reshape(-1)  # key-major
            served = move(np.tile(p, (m, 1)), s).reshape(m, n, k)
            pc = served[:, :, c]
            log_pc = _log(pc)
            total = np.zeros((m, n))
            weight = np.zeros((m, n))
            # rows whose top class r is not c: c against r, r's logit held at the reference's
            ok = pc[:, rest] >= UNDERFLOW
            target = log_pc[:, rest] - _log(served[:, rest, ref[rest]]) + (ell[rest, ref[rest]] - base_c[rest])[None]
            total[:, rest] = np.where(ok, target, 0.0)
            weight[:, rest] = ok
            for j in range(k) if len(top_c) else ():  # rows whose top class is c: c against each other class j
                if j == c:
                    continue
                pj = served[:, top_c, j]
                okj = (pj >= UNDERFLOW) & (pc[:, top_c] >= UNDERFLOW)
                tj = log_pc[:, top_c] - _log(pj) + (ell[top_c, j] - base_c[top_c])[None]
                total[:, top_c] += np.where(okj, tj, 0.0)
                weight[:, top_c] += okj
            gram = (weight @ outer).reshape(m, dz, dz) + ridge[None]
            rhs = total @ z
            beta = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]  # [m, d + 1]
            out[:, start:stop] = beta.T
        self._cache["coefficients"] = (fingerprint, out)
        return out


def solve_softmax_linear(z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """[k, d + 1] the least-squares solve of log p_j − log p_r = (θ_j − θ_r)·z over rows and classes j ≠ r
    (r: the row's most probable class; probabilities below ``UNDERFLOW`` skipped), θ_0 = 0: the equation-solving
    attack's solve (docs/audits.md)."""
    n, k = p.shape
    dz = z.shape[1]
    ref = p.argmax(axis=1)
    logp = _log(p)
    gram = np.zeros(((k - 1) * dz,) * 2)
    rhs = np.zeros((k - 1) * dz)
    for j in range(k):
        ok = (p[:, j] >= UNDERFLOW) & (ref != j)
        if not ok.any():
            continue
        a = np.zeros((int(ok.sum()), (k - 1) * dz))
        if j > 0:
            a[:, (j - 1) * dz : j * dz] += z[ok]
        for r in np.unique(ref[ok]):
            if r > 0:
                sel = ref[ok] == r
                a[sel, (r - 1) * dz : r * dz] -= z[ok][sel]
        gram += a.T @ a
        rhs += a.T @ (logp[ok, j] - logp[ok, ref[ok]])
    theta = np.linalg.lstsq(gram, rhs, rcond=None)[0].reshape(k - 1, dz)
    return np.vstack([np.zeros((1, dz)), theta])


def solve_statistics(departure: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """[keys] T = <r', t'_K> / ‖t'_K‖: the departure r and each key's template t_K centred over the probes, with
    the direction of the mean template over all keys (what every key's template shares) projected out of both."""
    t = templates - templates.mean(axis=0, keepdims=True)
    r = departure - departure.mean()
    common = t.mean(axis=1)
    norm = float(np.linalg.norm(common))
    if norm > 0:
        common = common / norm
        t = t - common[:, None] * (common @ t)[None, :]
        r = r - common * float(common @ r)
    return np.asarray((r @ t) / np.maximum(np.linalg.norm(t, axis=0), 1e-300))
