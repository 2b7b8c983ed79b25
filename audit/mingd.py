"""MinGD embeddings (white-box): how far gradient descent must push a sample before a torch classifier predicts
each other class.

Maini, Yaghini, Papernot, "Dataset Inference: Ownership Resolution in Machine Learning", ICLR 2021, the white-box
"MinGD" embedding. Official code cleverhans-lab/dataset-inference (read as a description, nothing copied;
docs/research.md "Audit: MinGD"): ``src/attacks.py::mingd`` with ``loss_mingd = max logit − logit[target]``,
``src/generate_features.py`` (every class as a target, distances in the matching norm), ``src/params.py`` (step
sizes, 500 iterations) and the notebooks (features sorted across targets before the regressor).

The procedure, as the official code runs it: from δ = 0, for each target class t and each norm, take steps that
decrease ``max_c logit_c(x + δ) − logit_t(x + δ)`` (ℓ∞: a signed-gradient step; ℓ2: a unit-ℓ2 gradient step; ℓ1:
a signed step on the ``l1_topk`` coordinates with the largest gradient, skipping coordinates pinned at the input
box), clip x + δ to the box, and stop as soon as the model predicts t. The embedding is ‖δ‖ in the matching norm.

Where this differs from the official code, and why:

- **Targets: every class except the model's own label at x.** The official code targets every class, so the
  model's predicted class always walks 0 and, after the sort, is a constant first column; it is dropped. The
  label that defines "its own class" is the model's prediction, not the ground truth (the official stopping
  rule is ``argmax == target`` and never looks at y). Whether the prediction equals y is returned separately
  (``correct``), as the Blind Walk does.
- **Sorted across targets per norm, ascending**, as the notebook does before the regressor: column k of a norm
  is the distance to the model's (k+1)-th nearest other class. Sorting gives a column the same meaning for every
  model (which class is second-nearest varies between models), which dataset inference needs to compare models
  column by column.
- **Step sizes scaled to digits** ([0, 1]^64, 10 classes; ``MinGDConfig`` says why each), with a **bisection of
  the last step**: once the model predicts t at δ_k but not at δ_{k−1}, ``refine_steps`` halvings of the segment
  between them locate the crossing to 1/2^refine of a step. The official code takes up to 500 small fixed steps
  (a distance is known to one step). On a digits MLP, steps 5x larger than such small steps plus 5 halvings
  resolve distances 6x finer with 3x fewer (sample, target) model evaluations (456 vs 1,516 per sample), so 25
  models × 500 samples × 27 (target, norm) pairs take ~6 s on one core. The recorded distance is the norm of the
  bracket's upper end: a perturbation that does reach t.
- **Censoring.** A target not reached in ``max_iter`` steps is *censored*: its distance is ‖δ‖ after the last
  step (a lower bound on the true distance), flagged, and counted in ``censored_share``. The official code records
  the same ‖δ‖ without a flag. There is no infinite or capped value to special-case: a censored distance is
  simply large. With the defaults (a step budget ~4x the 90th percentile of the distances) fewer than 0.01% of
  targets are censored on digits MLPs; clipping can stall a descent at the box (then it is censored too).
- **Batched and deterministic.** All (sample, target) pairs of a norm descend together in batches of
  ``batch_size`` rows, on CPU, from δ = 0: there is no randomness at all (no seed is needed: the same weights and
  samples give the same distances). Gradients are taken with ``torch.autograd.grad`` with respect to
  δ only, so the model's parameters never accumulate gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from audit.configs import DatasetInferenceFields
from audit.validation import clip_range, positive_float

if TYPE_CHECKING:  # torch is imported when a descent runs, so the config loads without it
    import torch
    from torch import nn

NORMS = ("linf", "l2", "l1")
WHITE_BOX_NEEDED = "MinGD needs white-box access: upload the model as safetensors with a registered architecture"
L1_GAP = 0.001  # the official ``gap``: a coordinate this close to the box edge it is pushed toward is not moved


@dataclass(frozen=True)
class MinGDConfig(DatasetInferenceFields):
    """Every parameter of a MinGD dataset-inference audit. Defaults are for digits in [0, 1]^64, and why:

    - ``norms`` ℓ∞, ℓ2, ℓ1: the official three.
    - ``step_linf`` 0.01, ``step_l2`` 0.1, ``step_l1`` 0.5 (the ℓ1 length of one step, spread over
      ``l1_topk`` = 4 coordinates), for inputs in [0, 1]: on a digits MLP (128, 64) the median distances to the
      nearest other class are 0.09 (ℓ∞), 0.47 (ℓ2) and 1.5 (ℓ1), and to any other class 0.17, 0.86 and 3.0, so
      a target is reached in ~3-17 steps. The official CIFAR steps (0.001, 0.01, 1.0 over 100 of 3,072
      coordinates) are tuned to CIFAR's distances, not these. Halving every step (refining one step less) moved
      no nearest-class distance by more than 0.05% in the median and took 1.6x longer. ``l1_topk`` 4 of 64
      coordinates is the official 100 of 3,072 (3%), rounded up so a step moves more than one pixel.
    - ``max_iter`` 100: the 90th percentile of the distances above is ~27 steps (ℓ∞), 13 (ℓ2), 10 (ℓ1), and
      100 ℓ∞ steps cross the whole box (the official 500 steps of 0.001 reach ℓ∞ 0.5); 0.0002% of targets were
      censored in the benchmark (bench/audit.py, 5 seeds).
    - ``refine_steps`` 5: the last step bisected 5 times, resolution 1/32 of a step (ℓ2: 0.003), finer than
      the official one-step resolution (ℓ2: 0.01) and than the spread between models.
    - ``clip`` True with ``input_low``/``input_high`` 0/1: the official code keeps x + δ in [0, 1].
    - ``num_classes`` None: read from the owner model's output width at preparation (every model audited
      against the same artifacts must have it).
    - ``feature_ranks`` 1: dataset inference's regressor sees, per norm, the mean normalised log-distance over
      the ``feature_ranks`` nearest other classes: by default the nearest one, the sample's margin. The embedding
      keeps all C − 1 (sorted) distances; the far ones carry no membership signal here. Measured on the
      benchmark's digits victim (3 seeds, 250 private + 250 public samples, 24 null models, Welch t of the
      owner's normalised feature, null models' t centred at 0 with sd ~1): nearest class 1.7-2.0, 1.9, 1.1-1.4
      per norm; the mean over all 9 targets 0.8-1.2, 1.0-1.4, 0.1-0.7.
    - ``batch_size`` ((sample, target) rows per forward/backward pass), ``input_low``/``input_high`` and the
      regressor's fields: ``DatasetInferenceFields`` (dataset inference uses the same regressor and test for
      both embeddings).
    """

    LABEL = "MinGD"
    TUPLE_FIELDS = ("norms",)

    norms: tuple[str, ...] = NORMS
    step_linf: float = 0.01
    step_l2: float = 0.1
    step_l1: float = 0.5
    l1_topk: int = 4
    max_iter: int = 100
    refine_steps: int = 5
    clip: bool = True
    num_classes: int | None = None
    feature_ranks: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_distinct_names("norms", NORMS)
        for name in ("step_linf", "step_l2", "step_l1"):
            positive_float(name, getattr(self, name))
        self._require_positive_ints("l1_topk", "max_iter", "feature_ranks")
        self._require_int_in("refine_steps", 0, 30)
        clip_range(self.clip, self.input_low, self.input_high)
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2
        ):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {self.num_classes!r}")
        if self.num_classes is not None and self.feature_ranks > self.num_classes - 1:
            raise ValueError(f"feature_ranks must be at most num_classes - 1 = {self.num_classes - 1}")

    # The names dataset inference reads from either embedding's config: a "family" is a norm, a "direction"
    # is a target (by rank, after sorting).
    @property
    def families(self) -> tuple[str, ...]:
        return self.norms

    @property
    def directions_per_family(self) -> int:
        if self.num_classes is None:
            raise ValueError("num_classes is not set: it is read from the owner model at preparation")
        return self.num_classes - 1

    @property
    def n_directions(self) -> int:
        return self.directions_per_family * len(self.norms)

    def step(self, norm: str) -> float:
        return float({"linf": self.step_linf, "l2": self.step_l2, "l1": self.step_l1}[norm])

    def resolution(self, norm: str) -> float:
        """How finely a distance is known: one step over 2^refine_steps."""
        return self.step(norm) / 2**self.refine_steps


@dataclass
class MinGDEmbedding:
    """MinGD results for n samples: per norm (in ``config.norms`` order) the C − 1 target distances, sorted.
    ``forward_evaluations`` counts rows evaluated without a gradient: the labels at x and the bisections."""

    distances: np.ndarray  # [n, len(norms) * (C - 1)], ascending within each norm's block
    censored: np.ndarray  # [n, K] bool, sorted with the distances: target not reached in max_iter steps
    labels: np.ndarray  # [n] the model's label at x
    correct: np.ndarray  # [n] bool: that label equals the sample's label
    gradient_evaluations: int  # (sample, target) rows that went through a forward + backward pass
    forward_evaluations: int
    queries: int = 0  # label queries to an endpoint: MinGD sends none
    calls: int = 0

    @property
    def censored_share(self) -> float:
        return float(self.censored.mean()) if self.censored.size else 0.0

    def log_distances(self) -> np.ndarray:
        return np.log(self.distances)


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.abs().amax(dim=1)
    if norm == "l2":
        return delta.norm(dim=1)
    return delta.abs().sum(dim=1)


def _direction(grad: torch.Tensor, x_now: torch.Tensor, norm: str, config: MinGDConfig) -> torch.Tensor:
    """The step direction that decreases the loss (``grad`` is the loss's gradient), scaled to one step."""
    import torch

    descent = -grad
    if norm == "linf":
        return config.step_linf * descent.sign()
    if norm == "l2":
        return config.step_l2 * descent / descent.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if config.clip:  # ℓ1: never push a coordinate that sits at (or within L1_GAP of) the edge it moves toward
        pinned = ((descent < 0) & (x_now <= config.input_low + L1_GAP)) | (
            (descent > 0) & (x_now >= config.input_high - L1_GAP)
        )
        descent = descent.masked_fill(pinned, 0.0)
    k = min(config.l1_topk, descent.shape[1])
    top = descent.abs().topk(k, dim=1).indices
    out = torch.zeros_like(descent)
    out.scatter_(1, top, descent.gather(1, top).sign())
    return (config.step_l1 / k) * out


def _descend(
    module: nn.Module, x: torch.Tensor, target: torch.Tensor, norm: str, config: MinGDConfig
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Distances [rows] and censored flags for one batch of (sample, target) rows, plus the evaluations made."""
    import torch

    rows = len(x)
    delta = torch.zeros_like(x)
    previous = torch.zeros_like(x)  # δ one step before the crossing
    reached = torch.zeros(rows, dtype=torch.bool)
    active = torch.arange(rows)
    grad_rows = 0
    for it in range(config.max_iter + 1):
        xa = x[active]
        d = delta[active].clone().requires_grad_(True)
        logits = module(xa + d)
        hit = logits.argmax(dim=1) == target[active]
        reached[active[hit]] = True
        keep = ~hit
        if it == config.max_iter or not bool(keep.any()):
            active = active[keep]
            break
        picked = logits.gather(1, target[active][:, None]).squeeze(1)
        loss = (logits.amax(dim=1) - picked)[keep].sum()
        (grad,) = torch.autograd.grad(loss, d)
        grad_rows += int(keep.sum())
        active, grad, d_now = active[keep], grad[keep], d.detach()[keep]
        step = _direction(grad, xa[keep] + d_now, norm, config)
        new = d_now + step
        if config.clip:
            new = torch.minimum(torch.maximum(new, config.input_low - xa[keep]), config.input_high - xa[keep])
        previous[active] = d_now
        delta[active] = new
    censored = ~reached
    # bisection of the last step: the crossing lies between previous (not t) and delta (t)
    refine = torch.nonzero(reached & (delta.abs().amax(dim=1) > 0)).reshape(-1)
    lo, hi = previous[refine], delta[refine].clone()
    forward_rows = 0
    with torch.no_grad():
        for _ in range(config.refine_steps if len(refine) else 0):
            mid = 0.5 * (lo + hi)
            is_t = module(x[refine] + mid).argmax(dim=1) == target[refine]
            forward_rows += len(refine)
            hi = torch.where(is_t[:, None], mid, hi)
            lo = torch.where(is_t[:, None], lo, mid)
    delta[refine] = hi
    return _norm(delta, norm), censored, grad_rows, forward_rows


def num_classes_of(module: nn.Module, dim: int) -> int:
    """The width of the module's logits for a ``dim``-feature input."""
    import torch

    with torch.no_grad():
        out = module(torch.zeros(1, dim))
    if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"the model returned logits of shape {tuple(out.shape)}, expected [n, classes >= 2]")
    return int(out.shape[1])


def target_distances(
    module: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    norm: str,
    config: MinGDConfig,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Unsorted MinGD distances in ``norm`` from each row ``x[i]`` to class ``targets[i]``.

    Returns (distances [rows], censored [rows], gradient evaluations, forward evaluations); a row that already is
    class ``targets[i]`` has distance 0. ``on_batch(rows done)`` after each batch. The module is used as it is
    (call ``module.eval()`` first); nothing about it changes.
    """
    import torch

    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    tt = torch.as_tensor(np.asarray(targets, dtype=np.int64)).reshape(-1)
    if xt.ndim != 2 or len(xt) != len(tt):
        raise ValueError(f"x must be [rows, d] with one target per row, got {tuple(xt.shape)} and {tuple(tt.shape)}")
    dist = torch.empty(len(xt))
    cens = torch.zeros(len(xt), dtype=torch.bool)
    grad_rows = forward_rows = 0
    for lo in range(0, len(xt), config.batch_size):
        sl = slice(lo, lo + config.batch_size)
        d, c, g, f = _descend(module, xt[sl], tt[sl], norm, config)
        dist[sl], cens[sl] = d, c
        grad_rows, forward_rows = grad_rows + g, forward_rows + f
        if on_batch is not None:
            on_batch(min(len(xt), lo + config.batch_size))
    return dist.double().numpy(), cens.numpy(), grad_rows, forward_rows


def embed(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: MinGDConfig,
    progress: Callable[[float, str], None] | None = None,
) -> MinGDEmbedding:
    """MinGD distances of every sample to every class other than the model's label at x (module docstring).

    ``config.num_classes`` must be set and equal the model's logit width. ``progress(fraction, message)`` after
    each batch of rows.
    """
    import torch

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x must be [n, d] with one label per row, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must be finite")
    classes = config.num_classes
    if classes is None:
        raise ValueError("config.num_classes must be set (dataset inference reads it from the owner model)")
    found = num_classes_of(module, x.shape[1])
    if found != classes:
        raise ValueError(f"the model has {found} output classes, the MinGD artifacts were made for {classes}")
    n, per = len(x), classes - 1
    was_training = module.training
    module.eval()
    try:
        label0 = np.zeros(n, dtype=np.int64)
        with torch.no_grad():
            for lo in range(0, n, config.batch_size):
                chunk = torch.as_tensor(x[lo : lo + config.batch_size])
                label0[lo : lo + len(chunk)] = module(chunk).argmax(dim=1).numpy()
        # the C - 1 targets of each sample: every class but its own label, in class order
        all_classes = np.tile(np.arange(classes), (n, 1))
        targets = all_classes[all_classes != label0[:, None]].reshape(n * per)
        origin = np.repeat(np.arange(n), per)
        blocks, flags = [], []
        grad_rows, forward_rows = 0, n
        total = len(config.norms) * len(origin)
        for j, norm in enumerate(config.norms):

            def on_batch(done: int, offset: int = j * len(origin)) -> None:
                if progress is not None:
                    progress((offset + done) / max(1, total), f"mingd: {offset + done} of {total} descents")

            dist, cens, g, f = target_distances(module, x[origin], targets, norm, config, on_batch)
            grad_rows, forward_rows = grad_rows + g, forward_rows + f
            # floor at the resolution: a zero distance (x already is class t: impossible here) has no log
            dist = np.maximum(dist, config.resolution(norm)).reshape(n, per)
            order = np.argsort(dist, axis=1, kind="stable")
            blocks.append(np.take_along_axis(dist, order, axis=1))
            flags.append(np.take_along_axis(cens.reshape(n, per), order, axis=1))
    finally:
        module.train(was_training)
    return MinGDEmbedding(
        distances=np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0)),
        censored=np.concatenate(flags, axis=1) if flags else np.zeros((n, 0), dtype=bool),
        labels=label0,
        correct=label0 == y,
        gradient_evaluations=grad_rows,
        forward_evaluations=forward_rows,
    )
