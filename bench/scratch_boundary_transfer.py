"""Scratch (issue 10, not product code): where do MNIST extraction copies carry a trained-in keyed boundary mark?

    PYTHONPATH=. python -m bench.scratch_boundary_transfer --key 2 [--threads 1]

Follows bench/scratch_boundary_watermark.py (same world, M0, embedding recipe at its best setting: margin 0.8,
0.25 cycles/std, strength 1.1, 4,000 thief queries) with a new key, and asks where the copies' answers follow the
key: the statistic is the spike's exploratory one, T with the residual against the mean pair vote of null models
(here 20 models trained like the registration's: owner rows outside the 250 dataset-inference rows, 4 parts,
≤ 3,000 rows), p = exact rank among 1,999 seeded wrong keys. Probe sets, all key-independent:

- ``spike``: the spike's 1,000 probes (owner rows in M0's band + owner pairs bisected to M0's boundary);
- ``owner_band`` / ``test_band``: every owner / test row in M0's band (top-2 margin < 0.8);
- ``own_queries``: the copy's own training queries in M0's band (the thief's 4,000 pool rows; the owner rows for
  the distilled copy). An auditor knows these only from a query log.

Results and reading: docs/boundary_watermark_spike.md "Third and fourth keys: where copies carry the mark".
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from audit.answer_watermark import AnswerWatermark
from audit.architectures import predict_labels, predict_proba
from audit.data import split_mnist
from audit.null_models import train_null_models
from audit.self_test import CopyRecipe, train_copies
from audit.suspects.base import Suspect
from audit.suspects.safetensors_loader import TorchModuleSuspect
from audit.watermark_embed import WatermarkEmbedder
from bench.scratch_boundary_watermark import SECRET, Verifier, bisect_pairs, embed, top_two

MARGIN, CYCLES, STRENGTH = 0.8, 0.25, 1.1


def band_rows(m0: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return np.asarray(x[top_two(predict_proba(m0, x))[2] < MARGIN])


class BalancedVerifier(Verifier):
    """``--balanced``: every key's phase puts the owner data's mean on a zero crossing of its cosine,
    ψ = π/2 − f·<u, x̄> + π·b with b a fair bit, so the stripes split the data about evenly whatever u; the wrong
    keys are drawn by the same rule (the true key's bit from its secret's phase), so the rank test stays exact."""

    def __init__(self, wm: AnswerWatermark, probes: np.ndarray, p0: np.ndarray, n_null: int, seed: int,
                 centre: np.ndarray, bit: int) -> None:
        self.probes = probes
        a, b, _ = top_two(p0)
        self.a, self.b, self.hi, self.lo = a, b, np.maximum(a, b), np.minimum(a, b)
        rng = np.random.default_rng(seed)
        u = rng.standard_normal((probes.shape[1], n_null))
        u /= np.linalg.norm(u, axis=0)
        bits = np.r_[bit, rng.integers(0, 2, n_null)]
        u = np.concatenate([wm.boundary_projection[:, None], u], axis=1)
        phases = np.pi / 2 - wm.frequency * (centre @ u) + np.pi * bits
        cos = np.cos(wm.frequency * (probes.astype(np.float64) @ u) + phases)
        self.sides = np.where(cos >= 0, 1.0, -1.0)
        self.true_side_balance = float(np.mean(self.sides[:, 0] > 0))


def consensus_p(v: Verifier, labels: np.ndarray, baseline: np.ndarray) -> float:
    """Rank p of the true key's T (residual against ``baseline``) among the verifier's wrong keys."""
    e = (labels == v.hi).astype(np.float64) - (labels == v.lo).astype(np.float64)
    r = e - baseline
    r = r - r.mean()
    t = r @ v.sides
    return float((1 + np.sum(t[1:] >= t[0])) / len(t))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", type=int, default=2, help="secret index (0 and 1 were the spike's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--independents", type=int, default=12)
    ap.add_argument("--balanced", action="store_true", help="phases that split the owner's data evenly")
    ap.add_argument("--probes", type=int, default=1000, help="the spike's probe set size (a quarter natural rows)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    split = split_mnist(0, n_owner=10000, n_pool=10000, n_test=5000)
    m0 = WatermarkEmbedder(image_shape=(28, 28), epochs=10, watermark_epochs=10).fit_clean(
        split.x_owner, split.y_owner, seed=0
    )
    freq = AnswerWatermark.suggest_frequency(split.x_owner, CYCLES)
    wm = AnswerWatermark(
        SECRET + f"/{args.key}".encode(), n_classes=10, input_dim=784, frequency=freq, boundary_margin=MARGIN,
        boundary_side="smooth",
    )
    centre = split.x_owner.astype(np.float64).mean(axis=0)
    bit = int(wm.boundary_phase > np.pi)
    if args.balanced:  # the mark and the test use the balanced phase (BalancedVerifier)
        wm.boundary_phase = float(np.pi / 2 - freq * (centre @ wm.boundary_projection) + np.pi * bit)
    m1, info = embed(m0, split.x_owner, wm, MARGIN, 100, 20, 1e-3, STRENGTH, 20000)
    acc0 = float(np.mean(predict_labels(m0, split.x_test) == split.y_test))
    acc1 = float(np.mean(predict_labels(m1, split.x_test) == split.y_test))
    print(f"M1 ready, cost {100 * (acc0 - acc1):.2f} pp ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    victim = TorchModuleSuspect(m1)
    suspects: list[tuple[str, Suspect, np.ndarray]] = [("victim", victim, split.x_owner)]
    suspects.append(("original_m0", TorchModuleSuspect(m0), split.x_owner))
    for r in range(2):
        rows = np.random.default_rng(100 + r).permutation(len(split.x_pool))[:4000]
        for name, _, s in train_copies(victim, split.x_pool[rows], CopyRecipe(seed=3000 + 10 * r)):
            suspects.append((f"{name}_{r}", s, split.x_pool[rows]))
    suspects.append(("distilled", train_copies(victim, split.x_owner, CopyRecipe(seed=4000))[-1][2], split.x_owner))
    spare = np.random.default_rng(0).permutation(len(split.x_owner))[250:][:7500]
    nulls = train_null_models(
        split.x_owner[spare], split.y_owner[spare], n=20, seed=9000, subsample=0.75, max_rows=3000, parts=4,
        min_steps=200,
    )
    independents = train_null_models(
        split.x_pool, split.y_pool, n=args.independents, seed=7000, subsample=0.6, max_rows=3000
    )
    suspects += [(f"independent_{i}", s, split.x_pool[:0]) for i, s in enumerate(independents)]
    print(f"models ready ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    prng = np.random.default_rng(11)
    owner_band = band_rows(m0, split.x_owner)
    n_natural = min(len(owner_band), args.probes // 4)
    natural = owner_band[np.sort(prng.choice(len(owner_band), n_natural, replace=False))]
    spike_probes = np.concatenate([natural, bisect_pairs(m0, split.x_owner, args.probes - len(natural), prng)])

    def verifier(x: np.ndarray) -> tuple[Verifier, np.ndarray]:
        v = (
            BalancedVerifier(wm, x, predict_proba(m0, x), 1999, 12345, centre, bit)
            if args.balanced
            else Verifier(wm, x, predict_proba(m0, x), 1999, seed=12345)
        )
        e = [(n.labels(x) == v.hi).astype(float) - (n.labels(x) == v.lo).astype(float) for n in nulls]
        return v, np.mean(e, axis=0)

    shared = {
        "spike": verifier(spike_probes),
        "owner_band": verifier(owner_band),
        "test_band": verifier(band_rows(m0, split.x_test)),
    }
    rows: list[dict[str, Any]] = []
    for name, s, own in suspects:
        row: dict[str, Any] = {"suspect": name}
        for probe_set, (v, base) in shared.items():
            row[probe_set] = consensus_p(v, s.labels(v.probes), base)
        if len(own):
            v, base = verifier(band_rows(m0, own))
            row["own_queries"] = consensus_p(v, s.labels(v.probes), base)
            row["own_queries_n"] = len(v.probes)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(
        json.dumps(
            {
                "key": args.key,
                "balanced": args.balanced,
                "share_of_owner_rows_on_the_plus_side": round(
                    float(np.mean(np.cos(freq * (split.x_owner @ wm.boundary_projection) + wm.boundary_phase) > 0)),
                    3,
                ),
                "accuracy_cost_pp": round(100 * (acc0 - acc1), 2),
                "embedding": info,
                "probes": {k: len(v.probes) for k, (v, _) in shared.items()},
                "rows": rows,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
