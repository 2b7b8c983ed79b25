"""Scratch (issue 10, not product code): does the way a suspect and the null models are *normalised* explain why
models outside the null set sit above the nulls in dataset inference on digits?

    python bench/scratch_di_reference.py --seeds 8 9 10 11 12 13 14 15 [--models 8]

Per seed: the digits registration exactly as ``bench/audit_worlds.py`` makes it (old layout: reference rows = the
owner's spare rows), then outsiders walked once on the registration's revealed samples: ``reference`` (the nulls'
recipe on the nulls' own rows, other seeds: same data, outside the null set) and ``pool`` (the benchmark's
independents' recipe on the attacker's pool). From the stored walks, the Welch t of every outsider and every null
under three normalisations (a model's features are its log-distances minus a reference's mean):

- ``current``: a null by the nulls of the other data parts *and the suspect*; the suspect by every null
  (``audit.di_statistics.statistic``);
- ``no_suspect``: a null by the nulls of the other parts only (the nulls' statistics then do not depend on the
  suspect); the suspect by every null;
- ``matched``: as ``no_suspect`` for the nulls; the suspect by the nulls of all parts but one, once per left-out
  part, its t the mean of those (the same three-part references a null has).

Per variant: the outsiders' mean t minus the nulls' mean t, and the share claimed at 0.05 (Welch p and the
registration's random-effects parametric p both below 0.05, or the rank when the fit is rejected, as the audit
decides). Prints a line per seed to stderr and one JSON object as its LAST stdout line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import audit_worlds  # noqa: E402  (beside this script)

from audit.dataset_inference import _walk_both  # noqa: E402
from audit.di_statistics import decide, features, null_groups_of, parametric_null, welch  # noqa: E402
from audit.null_models import train_null_models  # noqa: E402
from audit.protected import RegistrationConfig  # noqa: E402

VARIANTS = ("current", "no_suspect", "matched")


def t_of(
    log_d: np.ndarray, correct: np.ndarray, ref_log_d: np.ndarray, ref_correct: np.ndarray, art: Any, m: int
) -> float:
    scores = art.regressor.score(features(log_d, correct, ref_log_d, ref_correct, art.config))
    return float(welch(scores[:m], scores[m:])[0])


def variant_stats(s_log: np.ndarray, s_cor: np.ndarray, art: Any, variant: str) -> tuple[float, float, np.ndarray]:
    """(suspect t, its Welch p, null t's) under ``variant``."""
    n_log, n_cor = art.null_log_distances, art.null_correct.astype(np.float64)
    n = len(n_log)
    m = n_log.shape[1] // 2
    groups = null_groups_of(art.null_groups, n)
    null_t = np.empty(n)
    for i in range(n):
        others = groups != groups[i]
        ref_l, ref_c = n_log[others].mean(axis=0), n_cor[others].mean(axis=0)
        if variant == "current":  # the suspect joins every null's reference
            k = int(others.sum())
            ref_l, ref_c = (ref_l * k + s_log) / (k + 1), (ref_c * k + s_cor) / (k + 1)
        null_t[i] = t_of(n_log[i], n_cor[i], ref_l, ref_c, art, m)
    if variant == "matched":
        ts = [t_of(s_log, s_cor, n_log[groups != g].mean(axis=0), n_cor[groups != g].mean(axis=0), art, m)
              for g in np.unique(groups)]
        t = float(np.mean(ts))
    else:
        t = t_of(s_log, s_cor, n_log.mean(axis=0), n_cor.mean(axis=0), art, m)
    scores = art.regressor.score(features(s_log, s_cor, n_log.mean(axis=0), n_cor.mean(axis=0), art.config))
    return t, float(welch(scores[:m], scores[m:])[1]), null_t


def claimed(t: float, p_welch: float, null_t: np.ndarray, groups: np.ndarray) -> bool:
    p_param, fit = parametric_null(t, null_t, groups)
    use = p_param is not None and fit is not None and bool(fit["accepted"])
    p_rank = (1.0 + float(np.sum(null_t >= t))) / (len(null_t) + 1.0)
    p_cal = float(p_param) if use and p_param is not None else p_rank
    return decide(p_welch, p_cal, len(null_t), 0.05, "parametric" if use else "rank")[0] == "claimed"


def registration(seed: int) -> tuple[Any, Any, np.ndarray, np.ndarray, Any]:
    """(split, owner model, reference x, reference y, Blind Walk artifacts) of the digits world's registration."""
    split, shape, patch = audit_worlds._world_data("digits", seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        owner = audit_worlds._owner_model("digits", split, shape, patch, seed, tmp)["model"]
        split, x_ref, y_ref = audit_worlds._reference_rows("digits", split, seed, "owner")
        private = np.random.default_rng(seed).permutation(len(split.x_owner))[: audit_worlds.N_PRIVATE]
        cfg = RegistrationConfig(n_null_models=20, mingd=False, reference_seed=9000 + 100 * seed)
        pm = audit_worlds.register("digits", split, private, x_ref, y_ref, tmp, cfg)
        return split, owner, x_ref, y_ref, pm.dataset_inference_artifacts("blind_walk")


def walk(model: Any, art: Any) -> tuple[np.ndarray, np.ndarray]:
    """The model's log-distances and correctness on the registration's revealed samples."""
    m = art.null_log_distances.shape[1] // 2
    emb = _walk_both(model, art.x_private[:m].astype(np.float64), art.y_private[:m], art.private_ids[:m],
                     art.x_public[:m].astype(np.float64), art.y_public[:m], art.public_ids[:m], art.config)
    return emb.log_distances(), emb.correct.astype(np.float64)


def one_seed(seed: int, n_models: int) -> dict[str, Any]:
    split, _, x_ref, y_ref, art = registration(seed)
    groups = null_groups_of(art.null_groups, len(art.null_log_distances))
    sources = {
        "reference": train_null_models(x_ref, y_ref, n=n_models, seed=55555 + seed, max_rows=3000, subsample=0.75,
                                       parts=4, min_steps=200),
        "pool": train_null_models(split.x_pool, split.y_pool, n=n_models, seed=7000 + 100 * seed, subsample=0.6,
                                  max_rows=3000),
    }
    out: dict[str, Any] = {}
    for source, models in sources.items():
        rows: dict[str, list[Any]] = {v: [] for v in VARIANTS}
        for model in models:
            s_log, s_cor = walk(model, art)
            for v in VARIANTS:
                t, p_w, null_t = variant_stats(s_log, s_cor, art, v)
                rows[v].append((t - float(null_t.mean()), claimed(t, p_w, null_t, groups)))
        out[source] = {
            v: {"mean_shift": round(float(np.mean([r[0] for r in rows[v]])), 3),
                "claimed": int(sum(r[1] for r in rows[v]))}
            for v in VARIANTS
        }
    return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[9])
    parser.add_argument("--models", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    seeds = {}
    for seed in args.seeds:
        seeds[str(seed)] = one_seed(seed, args.models)
        print(f"[seed {seed}] {json.dumps(seeds[str(seed)])}", file=sys.stderr, flush=True)
    total = {
        f"{src}_{v}": {
            "mean_shift": round(float(np.mean([s[src][v]["mean_shift"] for s in seeds.values()])), 3),
            "claimed": sum(s[src][v]["claimed"] for s in seeds.values()),
            "of": args.models * len(seeds),
        }
        for src in ("reference", "pool")
        for v in VARIANTS
    }
    return {"di_reference": seeds, "total": total, "wall_s": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    print(json.dumps(main()))
