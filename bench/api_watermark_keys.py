"""The boundary label mark over keys: the digits JBDA and adaptive thieves re-run under several secrets.

    python bench/api_watermark_keys.py [--keys 7] [--independents 6] [--sides smooth hash]
    python bench/api_watermark_keys.py --all-copies [--worlds digits] [--first-key 0] [--keys 20] [--independents 6]

Why: on the benchmark's one key (``bench/api_watermark.py``) the digits JBDA and adaptive copies are claimed by
the boundary phase, but a single key says little about the claim rate over keys. Per secret and per boundary
side ("smooth": the keyed cosine region; "hash": a keyed coin per input), the same victim, thieves and seeds as
``bench/api_watermark.py``'s digits world; each copy is audited by ``run_api_watermark`` exactly as there (its
logged rows, the victim's unmarked probabilities as baseline, α = 1e-3, ≤ 500 suspect queries), and
``--independents`` MLPs trained on true labels (rows no thief queried) are audited against every re-run
thief's log: the false-claim side on the logs of clients that adapt to our answers. Key 0 is the benchmark's
secret. Prints one line per audit to stderr and one JSON object as its LAST stdout line.

``--all-copies``: every stolen copy of ``bench/api_watermark.py``'s world (Knockoff in-distribution on
probabilities and labels, other-domain Knockoff, JBDA, adaptive, equation solving on digits, the ensemble of
three Knockoff thieves) re-made under each secret by that benchmark's own ``run_world`` (its removal and
extra rows skipped), with ``--independents`` independents per key against its four logs: the
``stolen_claim_rate`` of the benchmark, over keys instead of on one key, at α = 1e-3 and read at 0.01.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_watermark import (  # noqa: E402  (beside this script)
    AGREEMENT_WORTH_STEALING,
    ALPHA_LOOSE,
    DEFAULT_FREQUENCY,
    K,
    MarkedOracle,
    audit_row,
    independent_model,
    key_secret,
    log,
    run_world,
    world,
)

from audit.api_watermark import API_WATERMARK_DEFAULTS  # noqa: E402
from audit.suspects.base import CallableSuspect  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.demo.redteam import AdaptiveRetraining, JacobianAugmentation  # noqa: E402
from services.gateway.answer_mark import AnswerMarker  # noqa: E402
from services.gateway.metrics import GatewayMetrics  # noqa: E402


def secrets(n: int) -> list[str]:
    return [key_secret(i) for i in range(n)]


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=7, help="secrets (the first is the benchmark's)")
    parser.add_argument("--independents", type=int, default=6)
    parser.add_argument("--sides", nargs="+", default=["smooth", "hash"], choices=["smooth", "hash"])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--null-keys", type=int, default=int(API_WATERMARK_DEFAULTS["n_null_keys"]))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-copies", action="store_true", help="every stolen copy of the benchmark, per key")
    parser.add_argument("--first-key", type=int, default=0, help="--all-copies: keys first .. first + keys - 1")
    parser.add_argument("--max-queries", type=int, default=500, help="--all-copies: suspect queries per audit")
    parser.add_argument(
        "--compare-solve",
        action="store_true",
        help="--all-copies: audit every probability-phase suspect again without the solve-template statistic",
    )
    parser.add_argument("--worlds", nargs="+", default=["digits"], choices=["digits", "mnist"], help="--all-copies")
    parser.add_argument(
        "--probability-classes",
        type=int,
        choices=[1, 2],
        default=int(Settings.model_fields["answer_watermark_probability_classes"].default),
        help="--all-copies: classes the probability mark moves",
    )
    parser.add_argument(
        "--first-look-share",
        type=float,
        default=float(API_WATERMARK_DEFAULTS["first_look_share"]),
        help="--all-copies: share of the probability phase's α at its first look",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.all_copies:
        return all_copies(args)
    started = time.perf_counter()
    w = world("digits", args.seed)
    x, parts, victim, domain = w["x"], w["parts"], w["victim"], w["domain"]
    x_test = x[parts["test"]]
    victim_test = victim.predict(x_test)
    owner = CallableSuspect(victim.predict, victim.predict_proba)
    pool = x[parts["pool"]]
    thieves_pool = np.array_split(np.random.default_rng(args.seed).permutation(len(pool)), 5)  # as the bench
    independents = [independent_model(w, i) for i in range(args.independents)]  # as the benchmark's
    bench_args = argparse.Namespace(null_keys=args.null_keys)
    rows: list[dict[str, Any]] = []
    for side in args.sides:
        for k, secret in enumerate(secrets(args.keys)):
            settings = Settings(env="test", answer_watermark_secret=secret, answer_watermark_boundary_side=side)
            marker = AnswerMarker(settings, GatewayMetrics(CollectorRegistry()))
            mark = settings.answer_watermark(K, x.shape[1])
            thieves = {
                "jbda_labels": lambda: JacobianAugmentation(
                    seed_set=pool[thieves_pool[2]][:100],
                    domain=domain,
                    n_classes=K,
                    budget=args.budget,
                    hidden=(128,),
                    seed=3,
                ),
                "adaptive_labels": lambda: AdaptiveRetraining(
                    domain=domain, n_classes=K, budget=args.budget, sampler=pool[thieves_pool[3]], seed=4
                ),
            }
            for kind, make in thieves.items():
                oracle = MarkedOracle(victim, marker, True)
                copy = make().run(oracle).copy
                logged = oracle.logged(kind)
                row = audit_row(kind, copy, logged, mark, owner, x_test, victim_test, True, bench_args)
                null = [
                    audit_row(f"independent_{i}", m, logged, mark, owner, x_test, victim_test, True, bench_args)
                    for i, m in enumerate(independents)
                ]
                rows.append(
                    {
                        "side": side,
                        "key": k,
                        **row,
                        "independent_claims": sum(r["claimed"] for r in null),
                        "independent_p": [r["p_value"] for r in null],
                        "independent_boundary_p": [r["boundary_p"] for r in null],
                    }
                )
                log(f"[{side} key {k}] {kind}: {rows[-1]}")
    summary: dict[str, Any] = {}
    for side in args.sides:
        for kind in ("jbda_labels", "adaptive_labels"):
            mine = [r for r in rows if r["side"] == side and r["kind"] == kind]
            summary[f"{side}/{kind}"] = {
                "claimed": sum(r["claimed"] for r in mine),
                "keys": len(mine),
                "p": [r["p_value"] for r in mine],
                "independent_claims": sum(r["independent_claims"] for r in mine),
                "independent_trials": len(mine) * args.independents,
                "independent_min_p": min(min(r["independent_p"]) for r in mine),
                # Read at the level of the false-claim target (bench/api_watermark.py: ALPHA_LOOSE), same audits.
                "claimed_at_0.01": sum(r["p_value"] <= 0.01 for r in mine),
                "independent_claims_at_0.01": sum(p <= 0.01 for r in mine for p in r["independent_p"]),
            }
    return {"api_watermark_keys": summary, "rows": rows, "wall_s": round(time.perf_counter() - started, 1)}


def all_copies(args: argparse.Namespace) -> dict[str, Any]:
    """Every stolen copy of the benchmark's world under each secret; claim rates over keys, per copy and in all."""
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in args.worlds:
        for side in args.sides:
            per_key = []
            for k, secret in list(enumerate(secrets(args.first_key + args.keys)))[args.first_key :]:
                ns = argparse.Namespace(
                    secret=secret,
                    stolen_only=True,
                    independents=args.independents,
                    budget=args.budget,
                    null_keys=args.null_keys,
                    seed=args.seed,
                    amplitude=0.1,
                    label_share=0.01,
                    frequency=DEFAULT_FREQUENCY,
                    boundary_margin=float(Settings.model_fields["answer_watermark_boundary_margin"].default),
                    boundary_share=float(Settings.model_fields["answer_watermark_boundary_share"].default),
                    boundary_side=side,
                    probability_classes=args.probability_classes,
                    first_look_share=args.first_look_share,
                    max_queries=args.max_queries,
                    compare_solve=args.compare_solve,
                )
                out = run_world(name, ns)
                worth = [r for r in out["rows"] if r["agreement"] >= AGREEMENT_WORTH_STEALING]
                per_key.append(out)
                for r in out["rows"]:
                    rows.append({"world": name, "side": side, "key": k, **{f: r[f] for f in ROW_FIELDS if f in r}})
                log(
                    f"[{name} {side} key {k}] claimed {sum(r['claimed'] for r in worth)} of {len(worth)} worth "
                    f"stealing; independents {out['independent_false_claim_rate']} ({out['wall_s']} s)"
                )
            mine = [r for r in rows if r["world"] == name and r["side"] == side]
            worth_rows = [r for r in mine if r["agreement"] >= AGREEMENT_WORTH_STEALING]
            kinds = sorted({r["kind"] for r in mine})
            summary[f"{name}/{side}"] = {
                "keys": f"{args.first_key}-{args.first_key + args.keys - 1}",
                "probability_classes": args.probability_classes,
                "first_look_share": args.first_look_share,
                "copies_worth_stealing": len(worth_rows),
                "stolen_claim_rate": sum(r["claimed"] for r in worth_rows) / len(worth_rows),
                "stolen_claim_rate_at_0.01": sum(r["p_value"] <= ALPHA_LOOSE for r in worth_rows) / len(worth_rows),
                "per_copy": {
                    kind: {
                        "worth_stealing": sum(r["kind"] == kind for r in worth_rows),
                        "claimed": sum(r["claimed"] for r in worth_rows if r["kind"] == kind),
                        "claimed_at_0.01": sum(r["p_value"] <= ALPHA_LOOSE for r in worth_rows if r["kind"] == kind),
                    }
                    for kind in kinds
                },
                "independent_trials": sum(o["independent_trials"] for o in per_key),
                "independent_claims": sum(
                    round(o["independent_false_claim_rate"] * o["independent_trials"]) for o in per_key
                ),
                "independent_claims_at_0.01": sum(
                    round(o["at_alpha_0.01"]["independent_false_claim_rate"] * o["independent_trials"]) for o in per_key
                ),
                "per_key_stolen_claim_rate": [o["stolen_claim_rate"] for o in per_key],
                **(
                    {
                        "without_solve": {
                            "stolen_claim_rate": sum(r["claimed_without_solve"] for r in worth_rows) / len(worth_rows),
                            "stolen_claim_rate_at_0.01": sum(r["p_without_solve"] <= ALPHA_LOOSE for r in worth_rows)
                            / len(worth_rows),
                            "per_copy_claimed": {
                                kind: sum(r["claimed_without_solve"] for r in worth_rows if r["kind"] == kind)
                                for kind in kinds
                            },
                            "independent_claims": sum(o["independent_claims_without_solve"] for o in per_key),
                            "independent_claims_at_0.01": sum(
                                o["independent_claims_at_0.01_without_solve"] for o in per_key
                            ),
                        }
                    }
                    if args.compare_solve
                    else {}
                ),
                "independent_claims_by_key_and_log": {
                    str(args.first_key + i): o["independent_claims_by_log"]
                    for i, o in enumerate(per_key)
                    if any(o["independent_claims_by_log"].values())
                },
            }
    return {"api_watermark_keys_all_copies": summary, "rows": rows, "wall_s": round(time.perf_counter() - started, 1)}


ROW_FIELDS = (
    "kind",
    "agreement",
    "claimed",
    "verdict",
    "p_value",
    "queries_used",
    "phases",
    "boundary_p",
    "p_without_solve",
    "claimed_without_solve",
)


if __name__ == "__main__":
    print(json.dumps(main()))
