"""Scratch, exploratory (issue 10 spike; chosen after seeing the main runs, so not a pre-set test): the boundary
statistic T with its residual taken against the *consensus of reference null models* instead of the owner's own
pre-embedding model M0.

    PYTHONPATH=. python -m bench.scratch_boundary_watermark_posthoc <labels.npz> <cycles_per_std> <margin> <key>

Input: the ``--save`` file of bench/scratch_boundary_watermark.py (probes and every suspect's labels on them) and
that run's cycles-per-std, margin and key. The first 10 independents play the registration's null models (their
mean e = ±1 towards the owner's hi/lo class per probe is the baseline), the last 10 are the independent suspects.
Same probes and the same 3,999 seeded wrong keys as the main script, so p-values are exact rank p-values (the
baseline models and the probes do not depend on the key). Also: each of the 4,000 keys in turn as the true key,
how many of the 10 test independents it would claim (clustering of false claims over keys).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from audit.answer_watermark import AnswerWatermark
from audit.architectures import predict_proba
from audit.data import split_mnist
from audit.watermark_embed import WatermarkEmbedder
from bench.scratch_boundary_watermark import SECRET, Verifier


def main() -> None:
    torch.set_num_threads(1)
    path, cps, margin, key = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    d = np.load(path)
    probes = d["probes"]
    labels = {k[len("labels_") :]: d[k] for k in d.files if k.startswith("labels_")}
    split = split_mnist(0, n_owner=10000, n_pool=10000, n_test=5000)
    m0 = WatermarkEmbedder(image_shape=(28, 28), epochs=10, watermark_epochs=10).fit_clean(
        split.x_owner, split.y_owner, seed=0
    )
    freq = AnswerWatermark.suggest_frequency(split.x_owner, cps)
    secret = SECRET if key == 0 else SECRET + f"/{key}".encode()
    wm = AnswerWatermark(
        secret, n_classes=10, input_dim=784, frequency=freq, boundary_margin=margin, boundary_side="smooth"
    )
    v = Verifier(wm, probes, predict_proba(m0, probes), 3999, seed=12345)

    def e_of(z: np.ndarray) -> np.ndarray:
        return np.asarray((z == v.hi).astype(float) - (z == v.lo).astype(float))

    ind = sorted((k for k in labels if k.startswith("independent_")), key=lambda s: int(s.split("_")[1]))
    ref, test = ind[:10], ind[10:]
    base = np.mean([e_of(labels[k]) for k in ref], axis=0)

    def tstat(z: np.ndarray) -> np.ndarray:
        r = e_of(z) - base
        prod = (r - r.mean())[:, None] * v.sides
        norm = np.sqrt((prod**2).sum(axis=0))
        return np.divide(prod.sum(axis=0), norm, out=np.zeros(prod.shape[1]), where=norm > 0)

    def ranks(x: np.ndarray) -> np.ndarray:
        o = np.sort(x)
        return np.asarray((len(x) - np.searchsorted(o, x, side="left")) / len(x))

    p_true = {}
    for k in labels:
        if k not in ref:
            t = tstat(labels[k])
            p_true[k] = float((1 + np.sum(t[1:] >= t[0])) / len(t))
    pm = np.stack([ranks(tstat(labels[k])) for k in test])
    claims = {a: (pm <= a).sum(axis=0) for a in (0.05, 1e-3)}
    over = {
        f"@{a:g}": {
            "mean_false_claim_rate": round(float(np.mean(pm <= a)), 4),
            **{f"share_of_keys_claiming_>={c}": round(float(np.mean(claims[a] >= c)), 4) for c in (1, 2, 3)},
            "max_claimed_by_one_key": int(claims[a].max()),
        }
        for a in (0.05, 1e-3)
    }
    print(json.dumps({"labels": path, "p_consensus_T": p_true, "test_independents_over_keys": over}))


if __name__ == "__main__":
    main()
