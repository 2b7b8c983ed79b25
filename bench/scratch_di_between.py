"""Scratch (issue 10, not product code): dataset inference's null with an allowance for another party's data.

    python bench/scratch_di_between.py --seeds 0 1 2 ... [--independents 20] [--taus 0 0.5 0.75 1]

Per seed, the digits registration exactly as ``bench/audit_worlds.py`` makes it (old layout) and the world's
independents (``train_null_models`` on 0.6 of the attacker's pool, seeds 7000 + 100·seed), the owner and the
world's distilled copy (the one copy dataset inference has claimed on digits); each walked once on the
registration's revealed samples, its Welch t and one-sided Welch p as the audit computes them
(``audit.di_statistics.statistic``). Then, offline, the decision under:

- ``tau`` τ: the registration's random-effects prediction variance plus τ² (a between-data variance the
  registration cannot estimate from the owner's rows: models on the attacker's half move together by about ±1
  from seed to seed, docs/audits.md), the same Student-t degrees of freedom; and the rank p-value either used
  as now when Shapiro–Wilk rejects the normal fit (``rank``) or not (``no_rank``: the audit is inconclusive).

Prints a line per seed to stderr and one JSON object (per seed: the null t's and groups, every model's t and p)
as its LAST stdout line, which ``--analyse FILE`` reads back to tabulate the rules without re-training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratch_di_reference import registration, walk  # noqa: E402  (beside this script)

from audit.di_statistics import parametric_null, statistic  # noqa: E402
from audit.null_models import train_null_models  # noqa: E402
from audit.self_test import CopyRecipe, train_copies  # noqa: E402
from audit.suspects.safetensors_loader import TorchModuleSuspect  # noqa: E402


def one_seed(seed: int, n_independents: int) -> dict[str, Any]:
    split, owner, _, _, art = registration(seed)
    m = art.null_log_distances.shape[1] // 2
    owner_suspect = TorchModuleSuspect(owner)
    models = [("owner", owner_suspect)]
    models.append(("distilled", train_copies(owner_suspect, split.x_owner, CopyRecipe(seed=4000))[-1][2]))
    independents = train_null_models(
        split.x_pool, split.y_pool, n=n_independents, seed=7000 + 100 * seed, subsample=0.6, max_rows=3000
    )
    models += [(f"independent_{i}", s) for i, s in enumerate(independents)]
    out: dict[str, Any] = {"models": {}}
    for name, model in models:
        log_d, correct = walk(model, art)
        st = statistic(log_d, correct, art.null_log_distances, art.null_correct.astype(np.float64), art.regressor,
                       art.config, m, art.null_groups)
        out["models"][name] = {"t": st.t, "p_ttest": st.p_ttest}
        out["null_t"] = st.null_t.tolist()  # the same for every suspect up to its 1/16 share of the references
        out["groups"] = np.asarray(art.null_groups).tolist()
    return out


def p_with_tau(t: float, null_t: np.ndarray, groups: np.ndarray, tau: float) -> tuple[float | None, bool]:
    """(p, fit accepted) of the random-effects prediction with τ² added to its variance."""
    p, fit = parametric_null(t, null_t, groups)
    if p is None or fit is None:
        return None, False
    var = float(fit["sd"]) ** 2 + tau**2
    z = (t - float(fit["mean"])) / math.sqrt(var)
    return float(stats.t.sf(z, float(fit["degrees_of_freedom"]))), bool(fit["accepted"])


def analyse(seeds: dict[str, Any], taus: list[float]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for tau in taus:
        for rank in (True, False):
            counts = {"independent": 0, "owner": 0, "distilled": 0, "n_independent": 0, "seeds": len(seeds)}
            per_seed = []
            for s in seeds.values():
                null_t, groups = np.asarray(s["null_t"]), np.asarray(s["groups"])
                claimed_here = 0
                for name, row in s["models"].items():
                    p, accepted = p_with_tau(row["t"], null_t, groups, tau)
                    if accepted and p is not None:
                        p_cal = p
                    elif rank:
                        p_cal = (1.0 + float(np.sum(null_t >= row["t"]))) / (len(null_t) + 1.0)
                    else:
                        p_cal = 1.0
                    claim = row["p_ttest"] < 0.05 and p_cal < 0.05
                    kind = name.split("_")[0]
                    counts[kind] += int(claim)
                    if kind == "independent":
                        counts["n_independent"] += 1
                        claimed_here += int(claim)
                per_seed.append(claimed_here)
            table[f"tau={tau:g},{'rank' if rank else 'no_rank'}"] = {**counts, "independents_per_seed": per_seed}
    return table


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[9])
    parser.add_argument("--independents", type=int, default=20)
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0])
    parser.add_argument("--analyse", nargs="*", default=None, help="JSON files of earlier runs: tabulate only")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.analyse:
        seeds: dict[str, Any] = {}
        for path in args.analyse:
            seeds.update(json.loads(Path(path).read_text().strip().splitlines()[-1])["seeds"])
        return {"analysis": analyse(seeds, args.taus), "seeds": sorted(seeds, key=int)}
    torch.set_num_threads(1)
    seeds = {}
    for seed in args.seeds:
        seeds[str(seed)] = one_seed(seed, args.independents)
        print(f"[seed {seed}] {json.dumps({k: round(v['t'], 2) for k, v in seeds[str(seed)]['models'].items()})}",
              file=sys.stderr, flush=True)
    return {"seeds": seeds, "analysis": analyse(seeds, args.taus), "wall_s": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    print(json.dumps(main()))
