"""Scratch (issue 10, not product code): are dataset inference's null statistics representative of models outside
the null set? Digits registrations exactly as ``bench/audit_worlds.py`` makes them.

    python bench/scratch_di_outsiders.py --seeds 8 9 10 11 12 13 14 15 [--models 12]

Per seed: the registration (20 null models on 4 disjoint parts of the owner's reference rows, each normalised by
the other parts), then four kinds of models that are *not* in the null set, audited by ``run_audit`` exactly as a
suspect is (normalised by every null):

- ``pool_bench``: the benchmark's independents' recipe (``train_null_models`` on 0.6 of the attacker's pool, one
  data pool, 40 epochs);
- ``pool_parts``: the registration's null recipe (4 parts, 0.75 of a part, ≥ 200 optimiser steps) on the pool;
- ``reference_bench`` / ``reference_parts``: the same two recipes on the owner's reference rows, the data the
  null models were trained on (other seeds, so other subsets and partitions).

Also the registration's own null t-statistics and their random-effects fit, and (``--pool-parts 2 4``) 5 models
per disjoint part of the pool for each number of parts: how far the part means spread, by rows per model. If
the null statistics were representative, models on the reference rows would sit at the nulls' mean. Prints one
line per seed to stderr and one JSON object as its LAST stdout line. docs/audits.md ("Dataset inference: what the
held-out seeds show") has the figures.
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

from audit.methods import run_audit  # noqa: E402
from audit.null_models import train_null_models  # noqa: E402
from audit.protected import RegistrationConfig  # noqa: E402

RECIPES: dict[str, dict[str, Any]] = {
    "bench": {"subsample": 0.6},  # bench/audit_worlds.py's independents
    "parts": {"subsample": 0.75, "parts": 4, "min_steps": 200},  # the registration's null models
}


def one_seed(
    seed: int, n_models: int, pool_parts: list[int], reference_rows: int | None, from_pool: int | None = None
) -> dict[str, Any]:
    split, shape, patch = audit_worlds._world_data("digits", seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        audit_worlds._owner_model("digits", split, shape, patch, seed, tmp)
        perm = np.random.default_rng(seed).permutation(len(split.x_owner))
        private, spare = perm[: audit_worlds.N_PRIVATE], perm[audit_worlds.N_PRIVATE :]
        # --reference-rows R: the nulls get the first R spare rows; the rest are an own-half pool (rows of the
        # owner's half that no null saw), for outsiders drawn from the private samples' own half
        own_half = spare[reference_rows:] if reference_rows else spare[:0]
        spare = spare[:reference_rows] if reference_rows else spare
        x_ref, y_ref = split.x_owner[spare], split.y_owner[spare]
        x_pool, y_pool = split.x_pool, split.y_pool
        if from_pool:  # --reference-from-pool R: the nulls' rows are the pool's first R, outsiders use the rest
            x_ref, y_ref = x_pool[:from_pool], y_pool[:from_pool]
            x_pool, y_pool = x_pool[from_pool:], y_pool[from_pool:]
        cfg = RegistrationConfig(n_null_models=20, mingd=True, reference_seed=9000 + 100 * seed)
        pm = audit_worlds.register("digits", split, private, x_ref, y_ref, tmp, cfg)
        owner = pm.record["dataset_inference"]["owner"]
        sources = {"pool": (x_pool, y_pool), "reference": (x_ref, y_ref)}
        if len(own_half):
            sources["own_half"] = (split.x_owner[own_half], split.y_owner[own_half])
        out: dict[str, Any] = {"null_fit": owner.get("null_fit")}
        for source, (x, y) in sources.items():
            for recipe, kw in RECIPES.items():
                models = train_null_models(x, y, n=n_models, seed=55555 + seed, max_rows=3000, **kw)
                ts = [float(run_audit("dataset_inference", m, pm, {})["t_statistic"]) for m in models]
                out[f"{source}_{recipe}"] = {"mean_t": round(float(np.mean(ts)), 3), "t": [round(t, 3) for t in ts]}
        null_t = run_audit("dataset_inference", models[0], pm, {})["null_t_statistics"]
        out["null_t_mean"] = round(float(np.mean(null_t)), 3)
        for n_parts in pool_parts:  # disjoint parts of the pool: how far part means spread, by part size
            models = train_null_models(
                x_pool,
                y_pool,
                n=5 * n_parts,
                seed=77777 + seed,
                **RECIPES["parts"] | {"parts": n_parts},
            )
            ts = np.array([float(run_audit("dataset_inference", m, pm, {})["t_statistic"]) for m in models])
            groups = np.arange(len(ts)) % n_parts  # null i trains on part i % parts
            means = np.array([ts[groups == g].mean() for g in range(n_parts)])
            within = float(np.mean([ts[groups == g].var(ddof=1) for g in range(n_parts)]))
            out[f"pool_{n_parts}_parts"] = {
                "rows_per_model": int(0.75 * len(x_pool) / n_parts),
                "part_means": [round(float(m), 3) for m in means],
                "within_variance": round(within, 3),
            }
        return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[9])
    parser.add_argument("--models", type=int, default=12, help="models per (source, recipe)")
    parser.add_argument(
        "--reference-rows", type=int, default=None, help="nulls on this many spare rows; rest: own half"
    )
    parser.add_argument(
        "--reference-from-pool", type=int, default=None, help="nulls on the pool's first R rows instead"
    )
    parser.add_argument(
        "--pool-parts", type=int, nargs="*", default=[], help="also: 5 models per disjoint part of the pool, per count"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    seeds = {}
    for seed in args.seeds:
        seeds[str(seed)] = one_seed(seed, args.models, args.pool_parts, args.reference_rows, args.reference_from_pool)
        means = {k: v["mean_t"] for k, v in seeds[str(seed)].items() if isinstance(v, dict) and "mean_t" in v}
        print(f"[seed {seed}] nulls {seeds[str(seed)]['null_t_mean']:+.2f}; {means}", file=sys.stderr, flush=True)
    return {"di_outsiders": seeds, "wall_s": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    print(json.dumps(main()))
