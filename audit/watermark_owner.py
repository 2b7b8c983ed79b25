"""EWE on the owner's own model and data: what ``modelcustody watermark embed`` runs.

``audit.watermark_embed.WatermarkEmbedder.fit`` trains a digits MLP of its own; an owner has their own data and
their own model. ``embed_owner_model`` takes

- the owner's data (``x`` [n, d] in the model's input scale, integer labels ``y``; an image shape h × w = d for
  placing the trigger patch), and
- either the owner's trained torch model (a safetensors file with a registered architecture,
  ``audit.architectures``), which is **fine-tuned** with EWE's watermark stage (trigger placement, trigger
  optimisation, interleaved watermark batches with the SNNL term), or a registered architecture and config,
  which is **trained** first on the clean task and then watermarked, as EWE does,

and reports what the owner must weigh: the **accuracy cost** (held-out accuracy of the model before the
watermark stage minus after it; for a fresh architecture, against the same architecture trained clean for the
same number of epochs) and the **trigger success** (the share of the key's inputs the watermarked model
answers with the target class), beside the rate the un-watermarked model gave the same inputs.

The held-out rows (``holdout`` share, seeded) are never trained on in the watermark stage, so the accuracy cost
is measured on data neither model fitted. Defaults, and why: ``holdout`` 0.1 (2,000 rows of a 20,000-row MNIST
owner set: a ±0.4 pp standard error on accuracy); ``watermark_epochs`` 5 for fine-tuning (the model is already
trained; at MNIST scale each epoch of EWE's interleaved schedule costs about twice a clean epoch);
``patch_size`` 4 on 28 × 28 images (16 of 784 pixels, 2 %: the same share as digits' 2 × 2 on 8 × 8 is 6 %,
and a larger mark is a stronger null false-positive risk, ``WatermarkEmbedder``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audit.architectures import build_model, load_model, predict_labels, save_model
from audit.configs import Progress
from audit.watermark_embed import EmbeddingResult, WatermarkEmbedder, stamp
from audit.watermark_key import WatermarkKey

DATA_KEYS = (("x", "y"), ("x_train", "y_train"), ("x_private", "y_private"))


def load_owner_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The owner's training data from an npz (``x, y``; or ``x_train, y_train``; or ``x_private, y_private``)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the owner's data {path}: {exc}") from None
    with data:
        for xk, yk in DATA_KEYS:
            if {xk, yk} <= set(data.files):
                x, y = np.asarray(data[xk], dtype=np.float32), np.asarray(data[yk])
                break
        else:
            raise ValueError(f"the owner's data needs arrays x and y, found {sorted(data.files)}")
    if x.ndim != 2 or len(x) != len(y) or len(x) < 20:
        raise ValueError(f"the owner's data must be x [n, d] with one label per row (n >= 20), got {x.shape} {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the owner's data has non-finite values")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    return x, y.astype(np.int64)


@dataclass
class OwnerEmbedding:
    """The watermarked model and key, and the figures the owner weighs."""

    result: EmbeddingResult
    accuracy_before: float
    accuracy_after: float
    trigger_success: float
    trigger_rate_before: float
    n_holdout: int
    seconds: float
    mode: str  # "fine-tune" (the owner's model) or "train" (a registered architecture)

    @property
    def accuracy_cost(self) -> float:
        return self.accuracy_before - self.accuracy_after

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "accuracy_before": round(self.accuracy_before, 4),
            "accuracy_after": round(self.accuracy_after, 4),
            "accuracy_cost": round(self.accuracy_cost, 4),
            "accuracy_note": f"accuracy on {self.n_holdout} rows never trained on in the watermark stage",
            "trigger_success": round(self.trigger_success, 4),
            "trigger_rate_before": round(self.trigger_rate_before, 4),
            "key_size": len(self.result.key.inputs),
            "trigger_positions": [list(p) for p in self.result.key.trigger_positions],
            "seconds": round(self.seconds, 1),
        }


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict_labels(model, x) == y))


def embed_owner_model(
    x: np.ndarray,
    y: np.ndarray,
    *,
    image_shape: tuple[int, int],
    model_path: Path | None = None,
    architecture: str | None = None,
    config: Mapping[str, Any] | None = None,
    embedder: WatermarkEmbedder | None = None,
    holdout: float = 0.1,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    guard_models: int = 0,
    guard_rows: int = 3000,
    progress: Progress | None = None,
) -> OwnerEmbedding:
    """Fine-tune the owner's model (``model_path``) or train ``architecture``/``config`` with EWE; see the module
    docstring. ``embedder`` carries EWE's parameters (classes, patch, temperature, epochs); its ``image_shape``
    and ``num_classes`` are set from the arguments and the data. ``eval_data``: the owner's own test set (x, y),
    never trained on; then every row of ``x`` trains and the accuracy cost is measured on it. Without it a
    ``holdout`` share of ``x`` is held out of the watermark stage, which is a fair test only when the owner's model
    did not train on those rows either (a fresh architecture; not a model the owner trained on all of ``x``).

    ``guard_models``: clean models (widths ``GUARD_WIDTHS`` in turn, ``guard_rows`` random training rows each, the
    embedder's clean recipe) on which the trigger optimisation checks the false-watermark rate besides the
    pre-trained owner model (``WatermarkEmbedder._optimise_triggers``); 0 checks the owner model only, as EWE."""
    report = progress or (lambda f, m: None)
    started = time.perf_counter()
    h, w = image_shape
    if x.ndim != 2 or x.shape[1] != h * w:
        raise ValueError(f"image shape {h}x{w} does not match the data's {x.shape[1]} features")
    if (model_path is None) == (architecture is None):
        raise ValueError("give exactly one of the owner's model (safetensors) or a registered architecture")
    if not 0.0 < holdout < 0.5:
        raise ValueError("holdout must be in (0, 0.5)")
    if guard_models < 0 or guard_rows < 2:
        raise ValueError("guard_models must be >= 0 and guard_rows >= 2")
    base = embedder or WatermarkEmbedder()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    if eval_data is not None:
        x_hold, y_hold = np.asarray(eval_data[0], np.float32), np.asarray(eval_data[1]).astype(np.int64)
        if x_hold.ndim != 2 or x_hold.shape[1] != x.shape[1] or len(x_hold) != len(y_hold) or len(x_hold) < 10:
            raise ValueError(f"the test data must be [n >= 10, {x.shape[1]}] with one label per row")
        train = np.arange(len(x))
    else:
        n_hold = max(10, int(holdout * len(x)))
        hold, train = perm[:n_hold], perm[n_hold:]
        x_hold, y_hold = x[hold], y[hold]
    x_train, y_train = x[train], y[train]

    if model_path is not None:
        model, arch, cfg = load_model(model_path)
        mode = "fine-tune"
    else:
        assert architecture is not None
        arch, cfg = architecture, dict(config or {})
        model = build_model(arch, cfg)
        mode = "train"
    classes = _num_classes(model, h * w)
    if int(y.max()) >= classes or int(y.min()) < 0:
        raise ValueError(f"labels must be in 0..{classes - 1} for this model, got {int(y.min())}..{int(y.max())}")
    params = {k: getattr(base, k) for k in (
        "source_class", "target_class", "patch_size", "trigger_value", "trigger_positions", "epochs",
        "watermark_epochs", "batch_size", "lr", "ratio", "snnl_weight", "temperature", "temperature_lr",
        "trigger_steps", "trigger_lr", "max_perturbation", "false_rate_threshold", "closing_steps",
        "hold_false_rate", "seed")}
    emb = WatermarkEmbedder(image_shape=(h, w), num_classes=classes, hidden=base.hidden, **params)
    xt, yt = torch.as_tensor(x_train), torch.as_tensor(y_train)
    total = emb.watermark_epochs + (2 * emb.epochs + emb.watermark_epochs if mode == "train" else 0)
    done = [0]

    def tick(what: str) -> None:
        done[0] += 1
        report(min(0.99, done[0] / max(1, total)), what)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(emb.seed)
        opt = torch.optim.Adam(model.parameters(), lr=emb.lr, betas=(0.9, 0.99), eps=1e-5)  # EWE's Adam settings
        gen = torch.Generator().manual_seed(emb.seed)
        if mode == "train":
            accuracy_before = _clean_baseline(emb, arch, cfg, xt, yt, x_hold, y_hold, tick)
            model.train()
            for _ in range(emb.epochs):
                for idx in emb._batches(len(xt), gen):
                    emb._step(model, opt, F.cross_entropy(model(xt[idx]), yt[idx]))
                tick("pre-training on the clean task")
        else:
            accuracy_before = _accuracy(model, x_hold, y_hold)
        model.eval()
        report(done[0] / max(1, total), "placing and optimising the trigger")
        src_rows = np.flatnonzero(y_train == emb.source_class)
        tgt = xt[yt == emb.target_class]
        if len(src_rows) < 2 or len(tgt) < 2:
            raise ValueError("the owner's data needs at least two samples of both the source and the target class")
        n_reps = len(_reps(model, xt[:2]))
        temps = [torch.tensor(float(np.log(emb.temperature)), requires_grad=True) for _ in range(n_reps)]
        positions = emb.trigger_positions or emb._place_trigger(model, xt[src_rows], tgt, temps)
        stamped = stamp(x_train[src_rows], positions, emb.trigger_value, (h, w))
        guards = _guard_models(emb, x_train, y_train, guard_models, guard_rows, seed)
        triggers = emb._optimise_triggers(model, torch.as_tensor(stamped), tgt, positions, temps, guards)
        rate_before = emb._target_rate(model, triggers)
        model.train()
        emb._train_watermarked(model, opt, gen, xt, yt, triggers, tgt, temps,
                               on_epoch=lambda e: tick("training with the watermark"))
        model.eval()
    wm_inputs = triggers.numpy()
    key = WatermarkKey(
        source_class=emb.source_class,
        target_class=emb.target_class,
        num_classes=classes,
        image_shape=(h, w),
        trigger_positions=tuple(positions),
        trigger_value=emb.trigger_value,
        inputs=wm_inputs,
        seeds={"train": emb.seed, "holdout": seed},
        info={"method": "ewe", "architecture": arch, "mode": mode,
              "source_rows": [int(i) for i in train[src_rows]]},
    )
    result = EmbeddingResult(model, arch, dict(cfg), key, {"trigger_positions": [list(p) for p in positions]})
    report(1.0, "done")
    return OwnerEmbedding(
        result=result,
        accuracy_before=accuracy_before,
        accuracy_after=_accuracy(model, x_hold, y_hold),
        trigger_success=float(np.mean(predict_labels(model, wm_inputs) == emb.target_class)),
        trigger_rate_before=rate_before,
        n_holdout=len(x_hold),
        seconds=time.perf_counter() - started,
        mode=mode,
    )


# Widths of the guard models: the owner's (128, 64) and two one-layer MLPs, because an independent party need not
# use the owner's architecture (audit.null_models varies widths for the same reason).
GUARD_WIDTHS = ((128, 64), (256,), (64,))


def _guard_models(
    emb: WatermarkEmbedder, x: np.ndarray, y: np.ndarray, n: int, rows: int, seed: int
) -> list[nn.Module]:
    rng = np.random.default_rng(seed + 1)
    out: list[nn.Module] = []
    for i in range(n):
        pick = np.sort(rng.choice(len(x), size=min(rows, len(x)), replace=False))
        out.append(emb.fit_clean(x[pick], y[pick], seed=seed + 100 + i, hidden=GUARD_WIDTHS[i % len(GUARD_WIDTHS)]))
    return out


def _reps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    from audit.watermark_embed import representations

    with torch.no_grad():
        return representations(model, x)


def _num_classes(model: nn.Module, dim: int) -> int:
    with torch.no_grad():
        out = model(torch.zeros(1, dim))
    if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"the model must output [n, classes] logits for {dim} features, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def _clean_baseline(
    emb: WatermarkEmbedder, arch: str, cfg: Mapping[str, Any], xt: torch.Tensor, yt: torch.Tensor,
    x_hold: np.ndarray, y_hold: np.ndarray, tick: Callable[[str], None],
) -> float:
    """Held-out accuracy of the same architecture trained clean for as many epochs as the watermarked one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(emb.seed)
        model = build_model(arch, cfg).train()
        opt = torch.optim.Adam(model.parameters(), lr=emb.lr, betas=(0.9, 0.99), eps=1e-5)
        gen = torch.Generator().manual_seed(emb.seed)
        for _ in range(emb.epochs + emb.watermark_epochs):
            for idx in emb._batches(len(xt), gen):
                emb._step(model, opt, F.cross_entropy(model(xt[idx]), yt[idx]))
            tick("training the clean baseline")
    return _accuracy(model.eval(), x_hold, y_hold)


def save_owner_embedding(out: OwnerEmbedding, directory: Path, stem: str = "model") -> tuple[Path, Path]:
    """``<stem>.safetensors`` and ``<stem>.key.json`` (the secret key), as ``EmbeddingResult.save``."""
    directory.mkdir(parents=True, exist_ok=True)
    r = out.result
    weights = save_model(directory / f"{stem}.safetensors", r.model, r.architecture, r.config)
    return weights, r.key.save(directory / f"{stem}.key.json")
