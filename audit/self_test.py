"""Know your own power: each audit method run, at registration, on the protected model and on copies of it.

A method that answers "no claim" says something only if it would have claimed a model that *was* derived. The
issue that led here: dataset inference answered "no-claim, p = 0.38" for the protected model itself, and the
report showed a green box a reader takes as evidence of independence, when the method simply had no power.

So registration (``audit.protected``) makes two copies of the owner's model the way a thief would, from the
owner's reference data (disjoint from its training data) queried through the owner's own model:

- a **label copy**: an MLP trained on the owner's predicted labels (Copycat / Knockoff on labels);
- a **probability copy**: the same trained on the owner's predicted probabilities (soft cross-entropy), when the
  owner model gives probabilities;

and runs every registered method on the owner model and on both copies, at α = 0.05, recording each p-value and
decision (``SelfTest``). A method is **powered** when it claims all three; otherwise **low-power**. Audits of a
low-power method never answer ``no-claim``: a ``no-claim`` becomes ``inconclusive`` with the self-test quoted
(``apply_self_test``). A claim stays a claim: its false-claim rate is set by the null calibration, not by power.

The copies are a floor on what a thief achieves, not a ceiling: a thief with more or better data makes a copy
closer to the owner. A method that fails on these copies is not shown to fail on every copy, and a method that
claims them is not shown to claim every copy; the self-test states what was measured on these three.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from audit.suspects.base import Suspect

POWERED, LOW_POWER = "powered", "low-power"
SELF_TEST_ALPHA = 0.05  # the audits' default α: the self-test asks whether an audit at that α would claim

# What a method's audit returns for one suspect: (p-value, claimed?, queries used).
MethodRun = Callable[[Suspect], tuple[float, bool, int]]


@dataclass(frozen=True)
class CopyRecipe:
    """How the self-test copies are trained. Defaults, and why:

    ``hidden`` (128, 64): the registered digits architecture, also a fair MNIST MLP; ``epochs`` 30 and
    ``lr`` 1e-3 with Adam, batch 64: the label copy reaches ~0.9 agreement with a digits owner (bench/audit.py's
    extraction copies reach 0.90-0.98 with 500-2,000 queries); ``max_rows`` 4,000: on MNIST-scale reference sets
    the copies' cost grows with the rows while 4,000 already gives > 0.9 agreement.
    """

    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    max_rows: int = 4000
    seed: int = 2000


def train_copies(
    owner: Suspect, x_reference: np.ndarray, recipe: CopyRecipe | None = None
) -> list[tuple[str, str, Suspect]]:
    """(name, description, suspect) for the label copy and, when the owner gives probabilities, the probability
    copy, trained on ``x_reference`` queried through ``owner`` (one query per row, two when it has probabilities)."""
    from audit.architectures import build_model
    from audit.suspects.safetensors_loader import TorchModuleSuspect

    r = recipe or CopyRecipe()
    x = np.asarray(x_reference, dtype=np.float32)
    rng = np.random.default_rng(r.seed)
    if len(x) > r.max_rows:
        x = x[np.sort(rng.choice(len(x), size=r.max_rows, replace=False))]
    proba = owner.probabilities(x) if owner.has_probabilities else None
    labels = proba.argmax(axis=1) if proba is not None else owner.labels(x)
    classes = int(proba.shape[1]) if proba is not None else max(2, int(labels.max()) + 1)
    targets: list[tuple[str, str, np.ndarray]] = [
        ("label_copy", f"label copy: mlp {list(r.hidden)} on the owner's labels of {len(x)} reference rows", labels)
    ]
    if proba is not None:
        targets.append(
            ("probability_copy", f"probability copy: mlp {list(r.hidden)} on the owner's probabilities of "
             f"{len(x)} reference rows", proba)
        )
    out: list[tuple[str, str, Suspect]] = []
    xt = torch.as_tensor(x)
    for i, (name, description, target) in enumerate(targets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r.seed + i)
            model = build_model("mlp", {"input_dim": x.shape[1], "hidden": list(r.hidden), "num_classes": classes})
            opt = torch.optim.Adam(model.parameters(), lr=r.lr)
            gen = torch.Generator().manual_seed(r.seed + i)
            tt = torch.as_tensor(target)
            for _ in range(r.epochs):
                for idx in torch.randperm(len(xt), generator=gen).split(r.batch_size):
                    logits = model(xt[idx])
                    if tt.ndim == 2:  # soft cross-entropy against the owner's probabilities
                        loss = -(tt[idx].float() * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
                    else:
                        loss = F.cross_entropy(logits, tt[idx].long())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        out.append((name, description, TorchModuleSuspect(model.eval(), identity={"kind": "in-memory", "name": name})))
    return out


def agreement(owner: Suspect, copy: Suspect, x: np.ndarray) -> float:
    """Share of rows of ``x`` on which the copy gives the owner's label (the copy's fidelity)."""
    return float(np.mean(owner.labels(x) == copy.labels(x)))


def run_self_test(
    method: str,
    run: MethodRun,
    subjects: Sequence[tuple[str, str, Suspect]],
    *,
    agreements: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Run one method on every subject (the owner model first, then the copies) and judge its power."""
    rows: list[dict[str, Any]] = []
    for name, description, suspect in subjects:
        try:
            p, claimed, queries = run(suspect)
            rows.append({"name": name, "description": description, "p_value": float(p), "claimed": bool(claimed),
                         "queries_used": int(queries)})
        except (ValueError, RuntimeError) as exc:  # e.g. MinGD on a non-torch owner: no claim, with why
            rows.append({"name": name, "description": description, "p_value": None, "claimed": False,
                         "error": str(exc)})
        if agreements and name in agreements:
            rows[-1]["agreement_with_owner"] = round(float(agreements[name]), 4)
    missed = [r["name"] for r in rows if not r["claimed"]]
    power = POWERED if rows and not missed else LOW_POWER
    return {
        "method": method,
        "alpha": SELF_TEST_ALPHA,
        "power": power,
        "subjects": rows,
        "summary": summarise(method, power, rows),
    }


def summarise(method: str, power: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence a reader can check: what the method claimed at registration, with the p-values."""
    parts = []
    for r in rows:
        p = r.get("p_value")
        word = "claimed" if r["claimed"] else "not claimed"
        parts.append(f"{r['name'].replace('_', ' ')} {word} (p = {p:.3g})" if p is not None else
                     f"{r['name'].replace('_', ' ')} not tested ({r.get('error', 'error')})")
    verdict = "has power" if power == POWERED else "is low-power"
    return f"At registration, {method} was run at α = {SELF_TEST_ALPHA} on the protected model and on copies " \
           f"made from it: {'; '.join(parts)}. The method {verdict} on them."


def apply_self_test(evidence: dict[str, Any], self_test: Mapping[str, Any] | None) -> dict[str, Any]:
    """Attach the registration's self-test to an audit's evidence; a low-power method's ``no-claim`` becomes
    ``inconclusive`` (a no-claim from a method that could not claim the owner's own copies is no evidence of
    independence). Idempotent. Registrations made before self-tests existed (None) are left as they were."""
    if self_test is None:
        return evidence
    evidence["self_test"] = dict(self_test)
    if evidence.get("verdict") == "no-claim" and self_test.get("power") != POWERED:
        evidence["verdict"] = "inconclusive"
        evidence["power_note"] = (
            "inconclusive rather than no-claim: this method is low-power for this protected model. "
            + str(self_test.get("summary", ""))
        )
        notes = evidence.setdefault("notes", [])
        if evidence["power_note"] not in notes:
            notes.append(evidence["power_note"])
    return evidence
