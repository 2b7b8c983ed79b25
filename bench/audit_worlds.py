"""Audits through the owner's path, per world (digits, MNIST): register the owner's model exactly as
``modelcustody protect register`` does (``audit.protected.register_protected_model``: the same null models, the
same dataset-inference artifacts, the self-test), then audit stolen copies and independent models through
``audit.methods.run_audit`` (the worker's function: low-power methods answer inconclusive).

Called by bench/audit.py (``--worlds``); its keys go under ``dataset_inference.<world>``,
``watermark.<world>`` and ``registration_cpu_s.<world>`` of that script's last-line JSON.

Per world (one seed each; the digits world of bench/audit.py's main part adds seeds):

- **Owner model.** digits: ``WatermarkEmbedder.fit`` on the owner half (EWE from scratch, the demo path).
  MNIST: the owner's own (128, 64) MLP trained clean on 10,000 private images, then watermarked by the
  **keyed boundary watermark** (``audit.boundary_watermark``, fine-tuning; the default since the third rule of
  docs/benchmarks.md, audited at α = 0.01 by bench/audit.py; embedded with the fine-tuning attack rehearsed,
  ``REHEARSED_EMBEDDING``, since the seventh rule, ``boundary_rehearsal``) or, with ``watermark="ewe"``, by
  **owner-side EWE**
  (``audit.watermark_owner.embed_owner_model``, with ``MNIST_EWE`` and three guard models, docs/audits.md);
  accuracy cost on 5,000 test images.
- **Registration.** reference data = owner rows outside the dataset-inference private samples (digits: 648
  rows; MNIST: 7,500 rows, nulls capped at 3,000 rows each); DI private = 250 owner rows, public = the test
  split; 20 null models (the registration's default key selection: 10 choose the key inputs, 10 set the
  watermark bound, docs/audits.md "Key selection at registration"); MinGD off for MNIST (its white-box walks
  cost more than the rest of the registration; digits keeps it). CPU seconds are ``time.process_time`` of the
  registration call. ``--reference-source outside`` (bench/audit.py) draws the reference rows from data the owner
  never trained on instead (digits: half of the pool; MNIST: 7,500 further images): tried and not adopted
  (docs/benchmarks.md, "The benchmark's reference rows").
- **Stolen copies.** label and probability copies (``audit.self_test.train_copies``, the self-test's recipe,
  other seeds) on attacker data: the pool (natural data the owner never trained on), 2 each; a distilled copy
  (probabilities on up to 4,000 of the owner's own training inputs); a fine-tuned copy (the owner model, 3 epochs
  on the pool).
- **Independent models.** 60 (``--world-independents``) MLPs on random subsets of the pool, the registration's
  recipe (``audit.null_models.train_null_models``, other seeds).

Watermark ``stolen_claim_rate`` counts copies with at least 80 % test agreement with the owner (the issue's
bar: a copy that disagrees more is not much of a copy); the rate over all copies is reported beside it.
"""

from __future__ import annotations

import copy as copylib
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.architectures import predict_labels, save_model
from audit.boundary_watermark import (
    REHEARSED_EMBEDDING,
    BoundaryEmbedConfig,
    BoundaryKey,
    embed_boundary_watermark,
    verify_boundary_watermark,
)
from audit.data import split_digits, split_mnist
from audit.methods import run_audit
from audit.null_models import train_null_models
from audit.protected import ProtectedModel, RegistrationConfig, RegistrationInputs, register_protected_model
from audit.self_test import CopyRecipe, train_copies
from audit.suspects.base import CallableSuspect, Suspect
from audit.suspects.safetensors_loader import TorchModuleSuspect
from audit.watermark_embed import WatermarkEmbedder
from audit.watermark_owner import embed_owner_model

AGREEMENT_BAR = 0.80  # a "copy" below 80 % test agreement is not counted for the watermark's stolen rate
STOLEN = ("label_copy", "probability_copy", "distilled", "fine_tuned")
N_PRIVATE = 250
# Owner-side EWE on MNIST (docs/audits.md "Watermark transfer on MNIST"): EWE's trigger steps without its bound on
# the perturbation and without the five closing steps away from the target, the false-watermark check held after
# every step on the owner and three clean guard models (not only the pre-trained owner), at 0.3 per judge;
# 10 watermark epochs. Measured on one seed's quick loop: copies 0.17-0.86 of the key "target", independents
# <= 0.08; EWE's order (checks before each step, five closing steps, perturbation <= 0.25): copies 0.00.
MNIST_EWE: dict[str, Any] = {
    "watermark_epochs": 10,
    "max_perturbation": 1.0,
    "closing_steps": 0,
    "trigger_steps": 30,
    "false_rate_threshold": 0.3,
    "hold_false_rate": True,
}
MNIST_GUARDS = 3  # DI private samples: 100 regressor + 150 revealed (BlindWalkConfig defaults)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fine_tune(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 3) -> torch.nn.Module:
    m = copylib.deepcopy(model).train()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=gen).split(64):
                loss = torch.nn.functional.cross_entropy(m(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return m.eval()


def _world_data(world: str, seed: int) -> tuple[Any, tuple[int, int], int]:
    if world == "digits":
        return split_digits(seed), (8, 8), 2
    return split_mnist(seed, n_owner=10000, n_pool=10000, n_test=5000), (28, 28), 4


REFERENCE_SOURCES = ("owner", "outside")


def _reference_rows(world: str, split: Any, seed: int, source: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """(split with the attacker's pool, reference x, reference y) for the registration.

    "outside": rows the owner never trained on and the attacker never holds, drawn like a third party's data
    (digits: the first half of the non-owner pool, the attacker keeps the rest; MNIST: 7,500 further training
    images beyond the attacker's 10,000, which stay as they were). "owner": the owner's own training rows
    outside the dataset-inference private samples (the earlier layout; the registration asks for data the model
    was not trained on, and on digits these rows sit in the private samples' half of the split, which biased
    dataset inference's null: docs/audits.md)."""
    if source == "owner":
        spare = np.random.default_rng(seed).permutation(len(split.x_owner))[N_PRIVATE:]
        if world == "mnist":
            spare = spare[:7500]  # enough for 20 nulls of 3,000 rows and the self-test copies
        return split, split.x_owner[spare], split.y_owner[spare]
    if world == "digits":
        half = len(split.x_pool) // 2
        attacker = replace(split, x_pool=split.x_pool[half:], y_pool=split.y_pool[half:])
        return attacker, split.x_pool[:half], split.y_pool[:half]
    wider = split_mnist(seed, n_owner=10000, n_pool=17500, n_test=5000)  # the same owner, pool prefix and test
    return split, wider.x_pool[10000:], wider.y_pool[10000:]


def _owner_model(
    world: str,
    split: Any,
    shape: tuple[int, int],
    patch: int,
    seed: int,
    tmp: Path,
    watermark: str = "ewe",
    boundary_probes: int | None = None,
    boundary_strength: float | None = None,
    boundary_rehearsal: bool = False,
) -> dict[str, Any]:
    if world == "mnist" and watermark == "boundary":
        # the owner's own model, trained clean first; then the keyed boundary watermark fine-tunes it
        clean = WatermarkEmbedder(image_shape=shape, epochs=10, watermark_epochs=10).fit_clean(
            split.x_owner, split.y_owner, seed=seed
        )
        config = {"input_dim": shape[0] * shape[1], "hidden": [128, 64], "num_classes": 10}
        marked = embed_boundary_watermark(
            clean,
            split.x_owner,
            secret=f"bench-boundary-watermark/{world}/{seed}".encode(),
            eval_data=(split.x_test, split.y_test),
            config=BoundaryEmbedConfig(
                seed=seed,
                **({"n_probes": boundary_probes} if boundary_probes else {}),
                **(REHEARSED_EMBEDDING if boundary_rehearsal else {}),
                **({"strength": boundary_strength} if boundary_strength else {}),
            ),
            y=split.y_owner,
        )
        save_model(tmp / "owner.safetensors", marked.model, "mlp", config)
        marked.key.save(tmp / "owner.key.json")
        return {"model": marked.model, "info": marked.summary()}
    if world == "digits":
        result = WatermarkEmbedder(seed=seed).fit(split.x_owner, split.y_owner)
        clean = WatermarkEmbedder(seed=seed).fit_clean(split.x_owner, split.y_owner)
        acc = float(np.mean(predict_labels(result.model, split.x_test) == split.y_test))
        acc_clean = float(np.mean(predict_labels(clean, split.x_test) == split.y_test))
        model, key, info = (
            result.model,
            result.key,
            {
                "mode": "train (demo EWE)",
                "accuracy_before": acc_clean,
                "accuracy_after": acc,
                "accuracy_cost": acc_clean - acc,
            },
        )
        config = result.config
    else:
        # the owner's own model, trained clean first; then owner-side EWE fine-tunes it
        clean = WatermarkEmbedder(image_shape=shape, epochs=10, watermark_epochs=10).fit_clean(
            split.x_owner, split.y_owner, seed=seed
        )
        config = {"input_dim": shape[0] * shape[1], "hidden": [128, 64], "num_classes": 10}
        save_model(tmp / "owner_clean.safetensors", clean, "mlp", config)
        out = embed_owner_model(
            split.x_owner,
            split.y_owner,
            image_shape=shape,
            model_path=tmp / "owner_clean.safetensors",
            embedder=WatermarkEmbedder(image_shape=shape, patch_size=patch, seed=seed, **MNIST_EWE),
            eval_data=(split.x_test, split.y_test),
            seed=seed,
            guard_models=MNIST_GUARDS,
        )
        model, key, info = out.result.model, out.result.key, out.summary()
    save_model(tmp / "owner.safetensors", model, "mlp", config)
    key.save(tmp / "owner.key.json")
    return {"model": model, "info": info}


def register(
    world: str,
    split: Any,
    private: np.ndarray,
    x_reference: np.ndarray,
    y_reference: np.ndarray,
    tmp: Path,
    cfg: RegistrationConfig,
) -> ProtectedModel:
    """``modelcustody protect register`` on the owner model saved in ``tmp`` (``_owner_model``): the reference
    rows, the dataset-inference private samples (owner rows ``private``) and public samples (the test split)."""
    np.savez(tmp / "reference.npz", x=x_reference, y=y_reference)
    np.savez(
        tmp / "di.npz",
        x_private=split.x_owner[private],
        y_private=split.y_owner[private],
        x_public=split.x_test,
        y_public=split.y_test,
    )
    return register_protected_model(
        RegistrationInputs(
            name=world,
            model_path=tmp / "owner.safetensors",
            watermark_key_path=tmp / "owner.key.json",
            reference_data_path=tmp / "reference.npz",
            di_data_path=tmp / "di.npz",
        ),
        tmp / "protected",
        Ed25519PrivateKey.generate(),
        registration_id=f"pm_{world}",
        config=cfg,
    )


WATERMARKS = ("ewe", "boundary")


def _baseline_statistic_audit(suspect: Suspect, pm: ProtectedModel, alpha: float) -> dict[str, Any]:
    """The boundary watermark test with its previous statistic (``statistic="baseline"``), beside the audit's own
    (``"residual"``, adopted by the seventh rule of docs/benchmarks.md)."""
    key = pm.watermark_key()
    assert isinstance(key, BoundaryKey)
    ev = verify_boundary_watermark(
        suspect,
        key,
        pm.boundary_baseline(),
        alpha=alpha,
        probability_baseline=pm.boundary_probability_baseline(),
        statistic="baseline",
    )
    return {"verdict": "claim" if ev.claimed else "no-claim", "p_value": ev.p_value}


def run_world(
    world: str,
    seed: int,
    n_independents: int,
    n_nulls: int,
    reference_source: str = "owner",
    watermark: str = "ewe",
    watermark_alpha: float | None = None,
    boundary_probes: int | None = None,
    boundary_strength: float | None = None,
    boundary_rehearsal: bool = False,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    split, shape, patch = _world_data(world, seed)
    split, x_reference, y_reference = _reference_rows(world, split, seed, reference_source)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        owner = _owner_model(
            world, split, shape, patch, seed, tmp, watermark, boundary_probes, boundary_strength, boundary_rehearsal
        )
        model = owner["model"]
        log(f"[{world}] owner model ready {owner['info']} ({time.perf_counter() - t0:.0f} s)")
        private = np.random.default_rng(seed).permutation(len(split.x_owner))[:N_PRIVATE]
        cfg = RegistrationConfig(n_null_models=n_nulls, mingd=world == "digits", reference_seed=9000 + 100 * seed)
        cpu = time.process_time()
        wall = time.perf_counter()
        pm = register(world, split, private, x_reference, y_reference, tmp, cfg)
        registration_cpu_s = time.process_time() - cpu
        registration_wall_s = time.perf_counter() - wall
        log(
            f"[{world}] registered in {registration_cpu_s:.0f} CPU-s; self-test "
            + "; ".join(f"{m}: {st['power']}" for m, st in pm.record["self_test"].items())
        )

        owner_suspect = TorchModuleSuspect(model, identity={"kind": "in-memory", "name": "owner"})
        suspects: list[tuple[str, str, Suspect]] = [("victim", "victim", owner_suspect)]
        for r in range(2):
            attacker = np.random.default_rng(100 + seed * 10 + r).permutation(len(split.x_pool))[:4000]
            for name, _, s in train_copies(owner_suspect, split.x_pool[attacker], CopyRecipe(seed=3000 + 10 * r)):
                suspects.append((name, f"{name}_{r}", s))
        distilled = train_copies(owner_suspect, split.x_owner, CopyRecipe(seed=4000))[-1]  # on owner inputs
        suspects.append(("distilled", "distilled", distilled[2]))
        tuned = _fine_tune(model, split.x_pool, split.y_pool, seed=5000 + seed)
        suspects.append(("fine_tuned", "fine_tuned", TorchModuleSuspect(tuned, identity={"kind": "in-memory"})))
        independents = train_null_models(
            split.x_pool, split.y_pool, n=n_independents, seed=7000 + 100 * seed, subsample=0.6, max_rows=3000
        )
        suspects += [("independent", f"independent_{i}", s) for i, s in enumerate(independents)]
        log(f"[{world}] {len(suspects)} suspects ready ({time.perf_counter() - t0:.0f} s)")

        owner_test = predict_labels(model, split.x_test)
        rows = []
        for kind, name, s in suspects:
            agreement = float(np.mean(s.labels(split.x_test) == owner_test))
            s.queries_used = 0
            row: dict[str, Any] = {"suspect": kind, "name": name, "agreement": round(agreement, 4)}
            for method in ("watermark", "dataset_inference"):
                params = {"alpha": watermark_alpha} if method == "watermark" and watermark_alpha else {}
                ev = run_audit(method, s, pm, params)
                row[method] = {
                    "verdict": ev["verdict"],
                    "p_value": ev.get("p_value"),
                    "queries_used": ev.get("queries_used"),
                }
            if world == "mnist" and watermark == "boundary":
                # the same audit on the suspect's labels alone: what a labels-only endpoint of the copy would give
                params = {"alpha": watermark_alpha} if watermark_alpha else {}
                ev = run_audit("watermark", CallableSuspect(s.labels, identity=s.identity), pm, params)
                row["watermark_labels_only"] = {"verdict": ev["verdict"], "p_value": ev.get("p_value")}
                # the boundary test's previous statistic (votes minus the null models' mean) on the same answers
                row["watermark_baseline_statistic"] = _baseline_statistic_audit(s, pm, watermark_alpha or 0.05)
            rows.append(row)
            log(
                f"[{world}] {name:20s} agree {agreement:.3f} WM {row['watermark']['verdict']:12s} "
                f"p {row['watermark']['p_value']:.3g}  DI {row['dataset_inference']['verdict']:12s} "
                f"p {row['dataset_inference']['p_value']:.3g}"
            )
    return {
        "world": world,
        "reference_source": reference_source,
        "watermark": watermark if world == "mnist" else "ewe",
        "watermark_alpha": watermark_alpha or 0.05,
        "seed": seed,
        "owner": owner["info"],
        "registration_cpu_s": round(registration_cpu_s, 1),
        "registration_wall_s": round(registration_wall_s, 1),
        "self_test": {
            m: {
                "power": st["power"],
                "p": {s["name"]: s["p_value"] for s in st["subjects"]},
                "agreement": {s["name"]: s.get("agreement_with_owner") for s in st["subjects"]},
            }
            for m, st in pm.record["self_test"].items()
        },
        "di_owner": {
            k: pm.record["dataset_inference"]["owner"].get(k)
            for k in (
                "t_statistic",
                "p_value_ttest",
                "p_value_calibrated",
                "p_value_rank",
                "calibration",
                "null_fit",
                "decision_at_0.05",
            )
        },
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _rate(rows: list[dict[str, Any]], method: str, kinds: tuple[str, ...], verdict: str) -> float | None:
    picked = [r for r in rows if r["suspect"] in kinds]
    return round(sum(r[method]["verdict"] == verdict for r in picked) / len(picked), 4) if picked else None


def summarise_world(w: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dataset_inference.<world>, watermark.<world>) entries."""
    rows = w["rows"]
    ind = ("independent",)
    copies_80 = [r for r in rows if r["suspect"] in STOLEN and r["agreement"] >= AGREEMENT_BAR]
    di = {
        "stolen_claim_rate": _rate(rows, "dataset_inference", STOLEN, "claim"),
        "independent_false_claim_rate": _rate(rows, "dataset_inference", ind, "claim"),
        "n_independents": sum(r["suspect"] == "independent" for r in rows),
        "n_stolen": sum(r["suspect"] in STOLEN for r in rows),
        "victim_verdict": next(r["dataset_inference"]["verdict"] for r in rows if r["suspect"] == "victim"),
        "self_test_p": w["self_test"].get("dataset_inference", {}).get("p"),
        "self_test_power": w["self_test"].get("dataset_inference", {}).get("power"),
        "inconclusive_share": round(
            sum(r["dataset_inference"]["verdict"] == "inconclusive" for r in rows) / len(rows), 4
        ),
        "no_claim_share": round(sum(r["dataset_inference"]["verdict"] == "no-claim" for r in rows) / len(rows), 4),
        "owner_statistic": w["di_owner"],
    }
    wm = {
        **({"accuracy_cost": w["owner"].get("accuracy_cost"), "embedding": w["owner"]}),
        "stolen_claim_rate": _rate(copies_80, "watermark", STOLEN, "claim"),
        "stolen_claim_rate_note": f"over the {len(copies_80)} copies with >= {AGREEMENT_BAR:.0%} test agreement",
        "stolen_claim_rate_all_copies": _rate(rows, "watermark", STOLEN, "claim"),
        "independent_false_claim_rate": _rate(rows, "watermark", ind, "claim"),
        "victim_verdict": next(r["watermark"]["verdict"] for r in rows if r["suspect"] == "victim"),
        "self_test_p": w["self_test"].get("watermark", {}).get("p"),
        "self_test_power": w["self_test"].get("watermark", {}).get("power"),
        "inconclusive_share": round(sum(r["watermark"]["verdict"] == "inconclusive" for r in rows) / len(rows), 4),
    }
    if rows and "watermark_labels_only" in rows[0]:
        # the boundary test on the suspects' labels alone (the audit reads probabilities where a suspect gives them)
        wm["labels_only"] = {
            "stolen_claim_rate": _rate(copies_80, "watermark_labels_only", STOLEN, "claim"),
            "independent_false_claim_rate": _rate(rows, "watermark_labels_only", ind, "claim"),
        }
    if rows and "watermark_baseline_statistic" in rows[0]:
        # the boundary test's previous statistic on the same answers (docs/benchmarks.md, the seventh rule)
        wm["baseline_statistic"] = {
            "stolen_claim_rate": _rate(copies_80, "watermark_baseline_statistic", STOLEN, "claim"),
            "independent_false_claim_rate": _rate(rows, "watermark_baseline_statistic", ind, "claim"),
        }
    return di, wm
