"""Scratch: variants of the label thieves' audit (boundary bet, label phase), over keys, on the same copies.

    python bench/scratch_label_audit.py [--world digits] [--first-key 0] [--keys 20] [--independents 6]
        [--variants current previous_label_phase labels pref_c2 ...]

Per key (the secrets of ``bench/api_watermark_keys.py``, hash side), the label thieves of
``bench/api_watermark.py`` (Knockoff labels, JBDA, adaptive) are re-run through the gateway's marking, and each
copy, and ``--independents`` MLPs trained on true labels against each of those logs, is audited by
``run_api_watermark`` once per variant (``audit.answer_watermark`` functions replaced here for the run):
``current`` is the audit as it stands; ``previous_label_phase`` the label phase on the suspect's top-1 (before
``top_other_labels``); the hash-side boundary test's bet sharpened, (a^c − b^c)/(a^c + b^c) with a and b the
suspect's probabilities of the keyed and the other of the owner's top two (``pref_c…``; c = 1 is the audit's
bet), the same times a + b (``diff``, ``mass_c…``), with other priors over the bet (``prior_…``); and the label
answers alone (``labels``: the unweighted tests). The copies do not depend on the audit, so every variant is read
on the same copies.
Prints one line per key to stderr and one JSON object as its LAST stdout line: per variant and copy kind,
claims at α = 1e-3 and at 0.01, and the independents' claims.
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

from api_watermark import (
    AGREEMENT_WORTH_STEALING,
    ALPHA,
    ALPHA_LOOSE,
    K,
    MarkedOracle,
    independent_model,
    log,
    world,
)  # noqa: E402
from api_watermark_keys import secrets  # noqa: E402

from audit import answer_watermark  # noqa: E402
from audit.api_watermark import run_api_watermark  # noqa: E402
from audit.suspects.base import CallableSuspect  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.demo.redteam import AdaptiveRetraining, JacobianAugmentation, Knockoff, image_shifts  # noqa: E402
from services.gateway.answer_mark import AnswerMarker  # noqa: E402
from services.gateway.metrics import GatewayMetrics  # noqa: E402


def _sharpened(c: float) -> Any:
    """(a^c − b^c) / (a^c + b^c) = tanh(c/2 · log(a/b)); c = 1 is the audit's bet."""

    def bet(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        tiny = np.finfo(np.float64).tiny
        log_ratio = np.log(np.maximum(a, tiny)) - np.log(np.maximum(b, tiny))
        return np.where((a + b) > 0, np.tanh(0.5 * c * log_ratio), 0.0)

    return bet


def _mass(c: float) -> Any:
    """The sharpened bet times the two's mass: a suspect whose top-1 is a third class bets little."""
    return lambda a, b: _sharpened(c)(a, b) * np.minimum(1.0, a + b)


U = answer_watermark.BET_LAMBDAS  # the uniform prior's quantile midpoints
ORIGINAL = {name: getattr(answer_watermark, name) for name in ("_preference", "BET_LAMBDAS", "top_other_labels")}
# name → the module attributes replaced for the variant's audits; None: the suspect answers labels alone
VARIANTS: dict[str, dict[str, Any] | None] = {
    "current": {},
    "previous_label_phase": {"top_other_labels": lambda q, y, k: np.argmax(q, axis=1)},
    "labels": None,
    "prior_beta21": {"BET_LAMBDAS": np.sqrt(U)},
    "prior_beta31": {"BET_LAMBDAS": np.cbrt(U)},
    "prior_u25": {"BET_LAMBDAS": 0.25 + 0.75 * U},
    "pref_c2": {"_preference": _sharpened(2.0)},
    "pref_c3": {"_preference": _sharpened(3.0)},
    "pref_c5": {"_preference": _sharpened(5.0)},
    "pref_c16": {"_preference": _sharpened(16.0)},
    "diff": {"_preference": _mass(1.0)},
    "mass_c3": {"_preference": _mass(3.0)},
    "mass_c16": {"_preference": _mass(16.0)},
}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--first-key", type=int, default=0)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--independents", type=int, default=6)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    w = world(args.world, args.seed)
    x, parts, victim, domain = w["x"], w["parts"], w["victim"], w["domain"]
    x_test = x[parts["test"]]
    victim_test = victim.predict(x_test)
    owner = CallableSuspect(victim.predict, victim.predict_proba)
    pool = x[parts["pool"]]
    thieves_pool = np.array_split(np.random.default_rng(args.seed).permutation(len(pool)), 5)  # as the bench
    side = int(round(np.sqrt(x.shape[1])))
    independents = [independent_model(w, i) for i in range(args.independents)]  # as the benchmark's
    thieves = {
        "knockoff_labels": lambda: Knockoff(
            pool=pool[thieves_pool[1]],
            domain=domain,
            n_classes=K,
            budget=args.budget,
            use_probabilities=False,
            transform=image_shifts(side, side),
            hidden=(128,),
            epochs=60,
            refit_epochs=25,
            seed=2,
        ),
        "jbda_labels": lambda: JacobianAugmentation(
            seed_set=pool[thieves_pool[2]][:100], domain=domain, n_classes=K, budget=args.budget, hidden=(128,), seed=3
        ),
        "adaptive_labels": lambda: AdaptiveRetraining(
            domain=domain, n_classes=K, budget=args.budget, sampler=pool[thieves_pool[3]], seed=4
        ),
    }
    rows: list[dict[str, Any]] = []
    for k, secret in list(enumerate(secrets(args.first_key + args.keys)))[args.first_key :]:
        settings = Settings(env="test", answer_watermark_secret=secret, answer_watermark_boundary_side="hash")
        marker = AnswerMarker(settings, GatewayMetrics(CollectorRegistry()))
        mark = settings.answer_watermark(K, x.shape[1])
        for kind, make in thieves.items():
            oracle = MarkedOracle(victim, marker, True)
            copy = make().run(oracle).copy
            logged = oracle.logged(kind)
            agreement = float(np.mean(copy.predict(x_test) == victim_test))
            suspects = [("copy", copy)] + [(f"independent_{i}", m) for i, m in enumerate(independents)]
            for who, model in suspects:
                suspect = CallableSuspect(model.predict, model.predict_proba)
                p_by_variant = {}
                for name in args.variants:
                    patch = VARIANTS[name]
                    params = {"clients": [kind], "alpha": ALPHA, "max_queries": 500, "batch_size": 10}
                    asked = CallableSuspect(model.predict) if patch is None else suspect
                    for attribute, value in (patch or {}).items():  # scratch only: the variant under study
                        setattr(answer_watermark, attribute, value)
                    ev = run_api_watermark(asked, mark, params, logged=logged, owner=owner)
                    for attribute, value in ORIGINAL.items():
                        setattr(answer_watermark, attribute, value)
                    p_by_variant[name] = ev["p_value"]
                rows.append({"key": k, "kind": kind, "who": who, "agreement": agreement, "p": p_by_variant})
        mine = [r for r in rows if r["key"] == k and r["who"] == "copy"]
        log(f"[key {k}] " + "; ".join(f"{r['kind']} {r['agreement']:.2f} {r['p']}" for r in mine))
    summary: dict[str, Any] = {}
    for key in args.variants:
        per_kind = {}
        for kind in thieves:
            copies = [r for r in rows if r["kind"] == kind and r["who"] == "copy"]
            worth = [r for r in copies if r["agreement"] >= AGREEMENT_WORTH_STEALING]
            nulls = [r for r in rows if r["kind"] == kind and r["who"] != "copy"]
            per_kind[kind] = {
                "worth_stealing": len(worth),
                "claimed": sum(r["p"][key] <= ALPHA for r in worth),
                "claimed_at_0.01": sum(r["p"][key] <= ALPHA_LOOSE for r in worth),
                "independent_trials": len(nulls),
                "independent_claims": sum(r["p"][key] <= ALPHA for r in nulls),
                "independent_claims_at_0.01": sum(r["p"][key] <= ALPHA_LOOSE for r in nulls),
                "independent_min_p": min(r["p"][key] for r in nulls),
            }
        summary[key] = per_kind
    return {
        "scratch_label_audit": summary,
        "world": args.world,
        "keys": f"{args.first_key}-{args.first_key + args.keys - 1}",
        "rows": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
