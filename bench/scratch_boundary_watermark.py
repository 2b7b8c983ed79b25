"""Scratch spike (issue 10, not product code): does a *trained-in* keyed boundary region transfer to MNIST copies?

    PYTHONPATH=. python -m bench.scratch_boundary_watermark [--cycles-per-std 0.5]
        [--margin 0.5] [--strength 1.1] [--thief-queries 4000] [--independents 20] [--null-keys 3999]
        [--probes 1000] [--key 0] [--threads 2] [--save labels.npz]

(``-m``, not the path: run as a path, bench/audit.py shadows the ``audit`` package.) Results and reading:
docs/boundary_watermark_spike.md.

World: ``audit.data.split_mnist(0, 10,000 owner / 10,000 pool / 5,000 test)`` as bench/audit_worlds.py builds it.
Original owner model M0: the world's clean owner MLP (128, 64), ``WatermarkEmbedder(image_shape=(28, 28),
epochs=10, watermark_epochs=10).fit_clean(x_owner, y_owner, seed=0)`` (the model the world then EWE-marks; here
the keyed boundary embedding replaces EWE).

Key: ``AnswerWatermark(secret, boundary_side="smooth")``'s keyed region: σ(x) = sign cos(f·<u, x> + ψ), f from
``suggest_frequency(x_owner, cycles_per_std)``.

Embedding (owner side, fine-tuning M0 into M1 by distillation on M0's own answers, modified): per input, with
(a, b) M0's top two classes and hi/lo the higher/lower-numbered of them, M0's logit gap g = l_hi − l_lo is moved by
2·strength·L·tanh(3 cos(f·<u, x> + ψ))/tanh(3)·w(margin), L = ln((1 + m)/(1 − m)) (the gap of a two-class margin
m), w = 1 for M0's top-2 probability margin < m, tapering linearly to 0 at margin 2m (continuous: no jump at the
band's edge). So in the band the keyed class wins (where |cos| is not tiny), outside it the top-1 stays and only the
pair's probabilities move. With m = 0.8, 2m > 1: w ≥ 0.75 on every input, i.e. the keyed logit shift is applied
everywhere (only labels in the band change). Training inputs: the owner's 10,000 rows + 10,000 mixes of owner rows
M0 labels differently (λ ~ U[0.25, 0.75]) + 20,000 such pairs bisected to M0's boundary (seeded, not the probes' seed);
soft cross-entropy to the targets, 20 epochs, Adam lr 1e-3, batch 64. (Recipe picked on the victim alone, before
any copy was trained: with 4,000 bisected rows, 8 epochs at 5e-4 the victim followed the key on only 56 % of fresh
boundary probes.)

Copies (bench/audit_worlds.py's recipes): label and probability copies (``audit.self_test.train_copies``,
CopyRecipe seeds 3000/3010) on 2 × ``--thief-queries`` pool rows, a distilled copy (probabilities on 4,000 owner
rows, seed 4000), the fine-tuned copy (M1, 3 epochs on the pool, true labels). Independents:
``train_null_models(x_pool, y_pool, n, seed 7000, subsample 0.6, max_rows 3000)`` (the world's recipe) plus M0.

Verification probes (chosen without the key, from M0 and the owner's rows only, seed 11): the owner rows in M0's
band (up to a quarter of ``--probes``), then pairs of owner rows M0 labels differently bisected to M0's boundary
(12 steps) up to ``--probes``. Per probe (a, b) = M0's top two, e = +1 if the suspect answers hi, −1 lo, 0 another
class. Statistics, both computed for every suspect with the same wrong keys (u ~ uniform on the sphere,
ψ ~ U[0, 2π), seeded, ``--null-keys`` of them):

- ``agree`` (primary, the brief's): share of probes answering a or b where the answer is the key's choice
  (hi where σ = +1, lo where σ = −1);
- ``T`` (AnswerWatermark.verify_boundary's): Σ rσ / √Σ (rσ)², r = e − e_M0 centred.

p = (1 + #{wrong keys with statistic ≥ the true key's}) / (N + 1): exact under "suspect and probes independent of
the key". Claimed at α = 0.05 and 1e-3 (the floor at N = 3,999 is 2.5e-4).
Prints progress to stderr and one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import copy as copylib
import json
import math
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from audit.answer_watermark import AnswerWatermark
from audit.architectures import predict_logits, predict_proba
from audit.data import split_mnist
from audit.null_models import train_null_models
from audit.self_test import CopyRecipe, train_copies
from audit.suspects.base import Suspect
from audit.suspects.safetensors_loader import TorchModuleSuspect
from audit.watermark_embed import WatermarkEmbedder
from bench.audit_worlds import _fine_tune  # the world's fine-tuned copy recipe

SECRET = b"scratch-boundary-watermark-key-0"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def top_two(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-p, axis=1, kind="stable")
    rows = np.arange(len(p))
    a, b = order[:, 0], order[:, 1]
    return a, b, p[rows, a] - p[rows, b]


def bisect_pairs(
    model: torch.nn.Module, x: np.ndarray, n: int, rng: np.random.Generator, steps: int = 12
) -> np.ndarray:
    """``n`` points on the segments between random rows of ``x`` that ``model`` labels differently, bisected to
    where its label changes (key-independent: uses the model and the rows only)."""
    labels = predict_logits(model, x).argmax(axis=1)
    out: list[np.ndarray] = []
    while sum(len(o) for o in out) < n:
        i, j = rng.integers(0, len(x), 4 * n), rng.integers(0, len(x), 4 * n)
        keep = labels[i] != labels[j]
        i, j = i[keep][: n - sum(len(o) for o in out)], j[keep][: n - sum(len(o) for o in out)]
        lo, hi = np.zeros(len(i)), np.ones(len(i))  # t: x_i at 0 (label of i), x_j at 1
        for _ in range(steps):
            mid = (lo + hi) / 2
            pts = ((1 - mid)[:, None] * x[i] + mid[:, None] * x[j]).astype(np.float32)
            same = predict_logits(model, pts).argmax(axis=1) == labels[i]
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        t = (lo + hi) / 2
        out.append(((1 - t)[:, None] * x[i] + t[:, None] * x[j]).astype(np.float32))
    return np.concatenate(out)[:n]


def embed(
    m0: torch.nn.Module,
    x_owner: np.ndarray,
    wm: AnswerWatermark,
    margin: float,
    seed: int,
    epochs: int,
    lr: float,
    strength: float,
    n_bisected: int,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    labels = predict_logits(m0, x_owner).argmax(axis=1)
    i, j = rng.integers(0, len(x_owner), 40000), rng.integers(0, len(x_owner), 40000)
    keep = labels[i] != labels[j]
    i, j = i[keep][:10000], j[keep][:10000]
    lam = rng.uniform(0.25, 0.75, len(i)).astype(np.float32)[:, None]
    mixes = lam * x_owner[i] + (1 - lam) * x_owner[j]
    bis = bisect_pairs(m0, x_owner, n_bisected, rng)
    x = np.concatenate([x_owner, mixes, bis]).astype(np.float32)
    logits = predict_logits(m0, x).astype(np.float64)
    p = predict_proba(m0, x)
    a, b, mar = top_two(p)
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    s = np.cos(wm.frequency * (x.astype(np.float64) @ wm.boundary_projection) + wm.boundary_phase)
    sharp = np.tanh(3 * s) / math.tanh(3)
    w = np.clip((2 * margin - mar) / margin, 0.0, 1.0)
    gap_m = math.log((1 + margin) / (1 - margin))
    delta = strength * gap_m * sharp * w  # half the move to each class of the pair: the gap moves by 2·delta
    rows = np.arange(len(x))
    t = logits.copy()
    t[rows, hi] += delta
    t[rows, lo] -= delta
    t -= t.max(axis=1, keepdims=True)
    target = np.exp(t)
    target /= target.sum(axis=1, keepdims=True)
    info = {
        "embed_rows": {"owner": len(x_owner), "mixes": len(mixes), "bisected": len(bis)},
        "embed_target_label_changed_share": round(float(np.mean(target.argmax(1) != a)), 4),
        "embed_target_label_changed_share_owner_rows": round(
            float(np.mean(target.argmax(1)[: len(x_owner)] != a[: len(x_owner)])), 4
        ),
        "m0_band_share_owner_rows": round(float(np.mean(mar[: len(x_owner)] < margin)), 4),
    }
    m1 = copylib.deepcopy(m0).train()
    xt, tt = torch.as_tensor(x), torch.as_tensor(target, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.Adam(m1.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=gen).split(64):
                loss = -(tt[idx] * F.log_softmax(m1(xt[idx]), dim=1)).sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    m1.eval()
    got = predict_logits(m1, x).argmax(axis=1)
    info["embed_fit_share"] = round(float(np.mean(got == target.argmax(1))), 4)
    flip = target.argmax(1) != a
    info["embed_fit_share_on_flipped"] = (
        round(float(np.mean(got[flip] == target.argmax(1)[flip])), 4) if flip.any() else None
    )
    return m1, info


class Verifier:
    """The keyed-choice agreement and verify_boundary's T for the true key and ``n_null`` wrong keys."""

    def __init__(self, wm: AnswerWatermark, probes: np.ndarray, p0: np.ndarray, n_null: int, seed: int) -> None:
        self.probes = probes
        a, b, _ = top_two(p0)
        self.a, self.hi, self.lo = a, np.maximum(a, b), np.minimum(a, b)
        self.b = b
        rng = np.random.default_rng(seed)
        u = rng.standard_normal((probes.shape[1], n_null))
        u /= np.linalg.norm(u, axis=0)
        phases = rng.uniform(0, 2 * np.pi, n_null)
        u = np.concatenate([wm.boundary_projection[:, None], u], axis=1)  # column 0: the true key
        phases = np.concatenate([[wm.boundary_phase], phases])
        cos = np.cos(wm.frequency * (probes.astype(np.float64) @ u) + phases)
        self.sides = np.where(cos >= 0, 1.0, -1.0)  # boundary_share 1: θ = 0
        self.true_side_balance = float(np.mean(self.sides[:, 0] > 0))

    def key_p_values(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For a key-independent model: every key's rank p-value of ``agree`` and ``T`` among all N + 1 keys
        (each key in turn taken as the true one): how its false claims spread over keys."""
        e = (z == self.hi).astype(np.float64) - (z == self.lo).astype(np.float64)
        rel = e != 0
        agree = np.mean((e[rel, None] * self.sides[rel]) > 0, axis=0)
        r = e - np.where(self.a == self.hi, 1.0, -1.0)
        r = r - r.mean()
        prod = r[:, None] * self.sides
        norm = np.sqrt(np.sum(prod**2, axis=0))
        t = np.divide(prod.sum(axis=0), norm, out=np.zeros(prod.shape[1]), where=norm > 0)

        def ranks(v: np.ndarray) -> np.ndarray:
            o = np.sort(v)
            return (len(v) - np.searchsorted(o, v, side="left")) / len(v)

        return ranks(agree), ranks(t)

    def __call__(self, z: np.ndarray) -> dict[str, Any]:
        e = (z == self.hi).astype(np.float64) - (z == self.lo).astype(np.float64)
        rel = e != 0
        out: dict[str, Any] = {"relevant": int(rel.sum()), "departs_from_m0": int(np.sum(z != self.a))}
        if not rel.any():
            return {**out, "agree": None, "p_agree": 1.0, "T": None, "p_T": 1.0}
        agree = np.mean((e[rel, None] * self.sides[rel]) > 0, axis=0)
        r = e - np.where(self.a == self.hi, 1.0, -1.0)
        moved = bool(np.any(r != 0))
        r = r - r.mean()
        prod = r[:, None] * self.sides
        norm = np.sqrt(np.sum(prod**2, axis=0))
        t = np.divide(prod.sum(axis=0), norm, out=np.zeros(prod.shape[1]), where=norm > 0)
        n = len(agree) - 1
        p_agree = float((1 + np.sum(agree[1:] >= agree[0])) / (n + 1))
        p_t = float((1 + np.sum(t[1:] >= t[0])) / (n + 1)) if moved else 1.0
        z_agree = float((agree[0] - agree[1:].mean()) / max(agree[1:].std(ddof=1), 1e-12))
        return {
            **out,
            "agree": round(float(agree[0]), 4),
            "agree_wrong_keys_mean": round(float(agree[1:].mean()), 4),
            "z_agree": round(z_agree, 2),
            "p_agree": p_agree,
            "T": round(float(t[0]), 3),
            "p_T": p_t,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cycles-per-std", type=float, default=0.5)
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--strength", type=float, default=1.1, help="Δ = strength·L at |cos| = 1 (1.1: just past margin m)")
    ap.add_argument("--embed-epochs", type=int, default=20)
    ap.add_argument("--embed-lr", type=float, default=1e-3)
    ap.add_argument("--embed-bisected", type=int, default=20000)
    ap.add_argument("--thief-queries", type=int, default=4000)
    ap.add_argument("--independents", type=int, default=20)
    ap.add_argument("--null-keys", type=int, default=3999)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--key", type=int, default=0, help="which secret (0: the spike's fixed one)")
    ap.add_argument("--save", default="", help="npz of the probes and every suspect's labels on them")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    seed = args.seed

    split = split_mnist(seed, n_owner=10000, n_pool=10000, n_test=5000)
    m0 = WatermarkEmbedder(image_shape=(28, 28), epochs=10, watermark_epochs=10).fit_clean(
        split.x_owner, split.y_owner, seed=seed
    )
    freq = AnswerWatermark.suggest_frequency(split.x_owner, args.cycles_per_std)
    secret = SECRET if args.key == 0 else SECRET + f"/{args.key}".encode()
    wm = AnswerWatermark(
        secret, n_classes=10, input_dim=784, frequency=freq, boundary_margin=args.margin, boundary_side="smooth"
    )
    log(f"M0 ready ({time.perf_counter() - t_start:.0f} s); f = {freq:.3f}")
    m1, emb = embed(
        m0,
        split.x_owner,
        wm,
        args.margin,
        100 + seed,
        args.embed_epochs,
        args.embed_lr,
        args.strength,
        args.embed_bisected,
    )
    acc0 = float(np.mean(predict_logits(m0, split.x_test).argmax(1) == split.y_test))
    acc1 = float(np.mean(predict_logits(m1, split.x_test).argmax(1) == split.y_test))
    l0, l1 = predict_logits(m0, split.x_test).argmax(1), predict_logits(m1, split.x_test).argmax(1)
    p0_test = predict_proba(m0, split.x_test)
    band_test = top_two(p0_test)[2] < args.margin
    emb.update(
        accuracy_before=round(acc0, 4),
        accuracy_after=round(acc1, 4),
        accuracy_cost_pp=round(100 * (acc0 - acc1), 2),
        test_label_changed_share=round(float(np.mean(l0 != l1)), 4),
        test_m0_band_share=round(float(np.mean(band_test)), 4),
        test_label_changed_share_in_band=round(float(np.mean((l0 != l1)[band_test])), 4) if band_test.any() else None,
    )
    log(f"M1 ready ({time.perf_counter() - t_start:.0f} s): {emb}")

    # probes: key-independent (M0 and owner rows, own seed)
    prng = np.random.default_rng(11 + seed)
    p0_owner = predict_proba(m0, split.x_owner)
    band_rows = np.flatnonzero(top_two(p0_owner)[2] < args.margin)
    n_nat = min(len(band_rows), args.probes // 4)
    nat = split.x_owner[np.sort(prng.choice(band_rows, n_nat, replace=False))]
    bis = bisect_pairs(m0, split.x_owner, args.probes - n_nat, prng)
    probes = np.concatenate([nat, bis]).astype(np.float32)
    verifier = Verifier(wm, probes, predict_proba(m0, probes), args.null_keys, seed=12345)
    log(f"probes: {n_nat} natural band rows + {len(bis)} bisected; key side +1 share {verifier.true_side_balance:.2f}")

    victim = TorchModuleSuspect(m1, identity={"kind": "in-memory", "name": "victim"})
    suspects: list[tuple[str, str, Suspect]] = [("victim", "victim", victim)]
    suspects.append(("original_m0", "original_m0", TorchModuleSuspect(m0, identity={"kind": "in-memory"})))
    thief_stats = []
    for r in range(2):
        rows = np.random.default_rng(100 + seed * 10 + r).permutation(len(split.x_pool))[: args.thief_queries]
        xq = split.x_pool[rows]
        pq1, pq0 = predict_proba(m1, xq), predict_proba(m0, xq)
        thief_stats.append(
            {
                "queries": len(xq),
                "m1_band_share": round(float(np.mean(top_two(pq1)[2] < args.margin)), 4),
                "m0_band_share": round(float(np.mean(top_two(pq0)[2] < args.margin)), 4),
                "labels_changed_by_mark": int(np.sum(pq1.argmax(1) != pq0.argmax(1))),
            }
        )
        recipe = CopyRecipe(seed=3000 + 10 * r, max_rows=max(4000, args.thief_queries))
        for name, _, s in train_copies(victim, xq, recipe):
            suspects.append((name, f"{name}_{r}", s))
    suspects.append(("distilled", "distilled", train_copies(victim, split.x_owner, CopyRecipe(seed=4000))[-1][2]))
    tuned = _fine_tune(m1, split.x_pool, split.y_pool, seed=5000 + seed)
    suspects.append(("fine_tuned", "fine_tuned", TorchModuleSuspect(tuned, identity={"kind": "in-memory"})))
    log(f"copies ready ({time.perf_counter() - t_start:.0f} s); thief queries {thief_stats}")
    indep = train_null_models(
        split.x_pool, split.y_pool, n=args.independents, seed=7000 + 100 * seed, subsample=0.6, max_rows=3000
    )
    suspects += [("independent", f"independent_{i}", s) for i, s in enumerate(indep)]
    log(f"{len(suspects)} suspects ready ({time.perf_counter() - t_start:.0f} s)")

    v_test = l1
    rows_out = []
    probe_labels: dict[str, np.ndarray] = {}
    for kind, name, s in suspects:
        agreement = float(np.mean(s.labels(split.x_test) == v_test))
        probe_labels[name] = s.labels(probes)
        res = verifier(probe_labels[name])
        row = {"kind": kind, "name": name, "agreement": round(agreement, 4), **res}
        for alpha in (0.05, 1e-3):
            row[f"claimed_agree@{alpha:g}"] = res["p_agree"] <= alpha
            row[f"claimed_T@{alpha:g}"] = res["p_T"] <= alpha
        rows_out.append(row)
        log(
            f"{name:20s} agr {agreement:.3f} rel {res['relevant']:4d} keyed-agree {res['agree']} "
            f"(wrong keys {res.get('agree_wrong_keys_mean')}, z {res.get('z_agree')}) p {res['p_agree']:.4g} | "
            f"T {res['T']} p {res['p_T']:.4g}"
        )

    stolen = ("label_copy", "probability_copy", "distilled", "fine_tuned")
    copies80 = [r for r in rows_out if r["kind"] in stolen and r["agreement"] >= 0.8]
    ind = [r for r in rows_out if r["kind"] == "independent"]
    summary: dict[str, Any] = {}
    for stat in ("agree", "T"):
        for alpha in (0.05, 1e-3):
            key = f"claimed_{stat}@{alpha:g}"
            summary[f"{stat}@{alpha:g}"] = {
                "stolen_claim_rate_80": round(sum(r[key] for r in copies80) / len(copies80), 4) if copies80 else None,
                "n_copies_80": len(copies80),
                "independent_false_claims": f"{sum(r[key] for r in ind)} of {len(ind)}",
                "victim": next(r[key] for r in rows_out if r["kind"] == "victim"),
                "original_m0": next(r[key] for r in rows_out if r["kind"] == "original_m0"),
            }
    # independents over all N + 1 keys (each in turn as the true key): mean false-claim rate and clustering
    over_keys: dict[str, Any] = {}
    ind_p = [verifier.key_p_values(probe_labels[r["name"]]) for r in ind]
    for si, stat in enumerate(("agree", "T")):
        pm = np.stack([pv[si] for pv in ind_p])  # [independents, keys]
        for alpha in (0.05, 1e-3):
            claims = np.sum(pm <= alpha, axis=0)
            over_keys[f"{stat}@{alpha:g}"] = {
                "mean_false_claim_rate": round(float(np.mean(pm <= alpha)), 4),
                "share_of_keys_claiming_any": round(float(np.mean(claims >= 1)), 4),
                "share_of_keys_claiming_>=2": round(float(np.mean(claims >= 2)), 4),
                "share_of_keys_claiming_>=5": round(float(np.mean(claims >= 5)), 4),
                "max_claimed_by_one_key": int(claims.max()),
            }
    summary["independents_over_keys"] = over_keys
    if args.save:
        arrays = {"probes": probes, **{f"labels_{k}": v for k, v in probe_labels.items()}}
        np.savez_compressed(args.save, **arrays)  # type: ignore[arg-type]
    out = {
        "spike": "scratch_boundary_watermark",
        "args": vars(args),
        "frequency": round(freq, 4),
        "embedding": emb,
        "probes": {"natural_band": n_nat, "bisected": len(bis), "queries_per_suspect": len(probes)},
        "thief_queries": thief_stats,
        "summary": summary,
        "rows": rows_out,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    log(json.dumps(summary))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
