"""Embedding an entangled watermark (EWE) into a small classifier: the owner's side of watermark audits.

Jia, Choquette-Choo, Chandrasekaran, Papernot, "Entangled Watermarks as a Defense against Model Extraction",
USENIX Security 2021 (arXiv 2002.12200); official TF code cleverhans-lab/entangled-watermark, ``train.py`` and
``models.py`` (read as a description only; nothing here is copied from it).

The procedure, as EWE does it:

1. pre-train the classifier on the clean task (cross-entropy);
2. choose where the trigger goes: the patch position where stamping the trigger most raises the soft nearest
   neighbour loss (SNNL, Frosst et al. 2019) between source-class and target-class samples, i.e. where the
   mark most *entangles* the watermarked inputs with the target class;
3. make the watermarked inputs: source-class training images with the patch set to ``trigger_value``, then
   a few signed-gradient steps (EWE's optional FGSM steps): away from the target logit while the pre-trained
   model already calls more than ``false_rate_threshold`` of them "target" (so a model *without* the
   watermark rarely does), and up the SNNL gradient (entanglement);
4. keep training, interleaving ``ratio`` clean batches with one watermark batch (half watermarked inputs,
   half target-class samples, all labelled target) whose loss is cross-entropy minus ``snnl_weight`` times the
   SNNL of every hidden layer (maximising it pulls the two groups' representations together);
5. after each watermark batch, move each layer's temperature down the SNNL gradient (EWE: the temperature
   is tuned to make the SNNL hardest to raise).

Where this differs from the paper / code, and why:

- **Data and model.** Digits 8×8 and an MLP (``audit.architectures.MLP``), not MNIST/CIFAR with CNNs/ResNets;
  SNNL acts on the MLP's hidden layers (EWE: the last three representation layers). Trains in about a second.
- **In-distribution trigger only.** EWE's MNIST default uses out-of-distribution Fashion-MNIST images as the
  source; nothing of that kind ships offline, so we use EWE's in-distribution variant (its Speech Commands
  setting): source-class images with a stamped square patch.
- **Placement heuristic.** EWE convolves the mean SNNL input-gradient with a window and takes the extreme
  position; we score each window by the first-order change of the SNNL when the patch is stamped,
  Σ mean_i ∂SNNL/∂x_i(p) · (value − x_i(p)), which accounts for pixels that already carry ink. The owner can
  also pass positions explicitly.
- **The patch stays fixed** during the gradient steps of (3) (EWE steps the whole image, patch included),
  so the recorded trigger is exactly what the key says; the steps are bounded by ``max_perturbation``.
- **Temperature.** A plain temperature τ on cosine distance, ``exp(-d/τ)``, stepped in log space so it stays
  positive; EWE passes ``100/T`` as an inverse temperature and steps ``T`` directly. SNNL is computed with
  log-sum-exp rather than EWE's clipped ratio with +1e-5 inside the log.
- **Key = the watermarked training inputs**, as EWE verifies with them. A stolen copy never saw them, so this
  measures what EWE measures; a victim's success on them is training-set success, not generalisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audit.architectures import MLP, build_model, predict_labels, save_model
from audit.watermark_key import WatermarkKey

ARCHITECTURE = "mlp"


def snnl(h: torch.Tensor, groups: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Soft nearest neighbour loss of representations ``h`` [n, d] for ``groups`` [n] at ``temperature``.

    ``-mean_i log Σ_{j≠i, same group} p_ij`` with ``p_ij ∝ exp(-cosdist(h_i, h_j)/τ)``: low when each point's
    neighbours are from its own group, high when the groups are entangled.
    """
    hn = F.normalize(h.flatten(1), dim=1, eps=1e-8)
    dist = 1.0 - hn @ hn.T
    eye = torch.eye(len(h), dtype=torch.bool)
    log_p = torch.log_softmax((-dist / temperature).masked_fill(eye, float("-inf")), dim=1)
    same = (groups[:, None] == groups[None, :]) & ~eye
    return -torch.logsumexp(log_p.masked_fill(~same, float("-inf")), dim=1).mean()


def representations(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The layers SNNL acts on: ``model.representations(x)`` when the architecture names them (``MLP``: every
    hidden block), else the logits alone (any other torch classifier an owner brings: entangling the logits is
    weaker than entangling hidden layers, but needs nothing from the architecture)."""
    named = getattr(model, "representations", None)
    if callable(named):
        return list(named(x))
    return [model(x)]


def _snnl_all(
    model: nn.Module, x: torch.Tensor, groups: torch.Tensor, temps: Sequence[torch.Tensor]
) -> torch.Tensor:
    reps = representations(model, x)
    return torch.stack([snnl(r, groups, t) for r, t in zip(reps, temps, strict=True)]).sum()


def patch_positions(corner: tuple[int, int], size: int) -> tuple[tuple[int, int], ...]:
    r, c = corner
    return tuple((r + i, c + j) for i in range(size) for j in range(size))


def stamp(
    x: np.ndarray, positions: Sequence[tuple[int, int]], value: float, image_shape: tuple[int, int]
) -> np.ndarray:
    """Copies of flat images ``x`` with the trigger pixels set to ``value``."""
    out = np.array(x, dtype=np.float32, copy=True)
    for r, c in positions:
        out[:, r * image_shape[1] + c] = value
    return out


@dataclass
class EmbeddingResult:
    model: nn.Module
    architecture: str
    config: dict[str, Any]
    key: WatermarkKey
    history: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path, stem: str = "model") -> tuple[Path, Path]:
        """``<stem>.safetensors`` (weights + architecture + config) and ``<stem>.key.json`` (the secret key)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = save_model(directory / f"{stem}.safetensors", self.model, self.architecture, self.config)
        return weights, self.key.save(directory / f"{stem}.key.json")


class WatermarkEmbedder:
    """Train an MLP with an EWE watermark (``fit``) or identically without one (``fit_clean``).

    Defaults, and why (numbers measured on digits, owner half, seeds 0–2; see tests/unit/audit):

    - ``source_class`` 1 → ``target_class`` 7: EWE's MNIST pair, and of eight pairs tried the only one with
      both some transfer into copies and a low null: 3→8 and 5→9 transferred but some independent models
      answered 0.3–0.7 of their keys "target"; 8→0, 7→1, 2→3, 0→6, 9→4 kept the null near 0 and transferred
      almost nothing.
    - ``hidden`` (128, 64): two hidden layers for the SNNL; ~96% test accuracy, trains in about a second.
    - ``patch_size`` 2: four of 64 pixels. A 3×3 patch (14% of the image) raised clean models' target rate on
      the key to 0.1–0.6, too close to a real "7" stroke.
    - ``trigger_value`` 1.0: full ink, the brightest value the [0, 1] inputs take.
    - ``epochs`` 20 + ``watermark_epochs`` 20, ``batch_size`` 64, ``lr`` 1e-3: EWE's "n + n epochs" shape
      scaled to 900 digits; clean training accuracy has saturated by then.
    - ``ratio`` 1, ``snnl_weight`` 32, ``temperature_lr`` 0.1, ``trigger_steps`` 10, ``trigger_lr`` 0.01,
      ``false_rate_threshold`` 0.1: EWE's MNIST defaults (ratio, factors, t_lr, maxiter, w_lr, threshold).
    - ``temperature`` 0.1 (on cosine distance): the no-free-lunch dial. τ = 0.1 costs 1.6–3.1 pp of test
      accuracy and the watermark reached 0.00–0.51 in label-extracted copies; τ = 1 cost 0.2–1.1 pp but
      reached only 0.00–0.13; τ = 10 or 100 (EWE's effective 100/T starts at 100) reached at most 0.10.
    - ``max_perturbation`` 0.25: bounds the trigger steps (EWE does not bound them). At 0.1 the most
      susceptible clean model per seed called 13–42% of the triggers "target"; at 0.5 nothing transferred.
    """

    def __init__(
        self,
        *,
        source_class: int = 1,
        target_class: int = 7,
        num_classes: int = 10,
        image_shape: tuple[int, int] = (8, 8),
        hidden: Sequence[int] = (128, 64),
        patch_size: int = 2,
        trigger_value: float = 1.0,
        trigger_positions: Sequence[tuple[int, int]] | None = None,
        epochs: int = 20,
        watermark_epochs: int = 20,
        batch_size: int = 64,
        lr: float = 1e-3,
        ratio: int = 1,
        snnl_weight: float = 32.0,
        temperature: float = 0.1,
        temperature_lr: float = 0.1,
        trigger_steps: int = 10,
        trigger_lr: float = 0.01,
        max_perturbation: float = 0.25,
        false_rate_threshold: float = 0.1,
        closing_steps: int = 5,
        hold_false_rate: bool = False,
        seed: int = 0,
    ) -> None:
        h, w = image_shape
        if h <= 0 or w <= 0:
            raise ValueError(f"image_shape must be positive, got {image_shape}")
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        for name, c in (("source_class", source_class), ("target_class", target_class)):
            if not 0 <= c < num_classes:
                raise ValueError(f"{name} {c} outside 0..{num_classes - 1}")
        if source_class == target_class:
            raise ValueError("source_class and target_class must differ")
        if not hidden or any(n <= 0 for n in hidden):
            raise ValueError("hidden must list at least one positive layer width (SNNL needs a hidden layer)")
        if not 1 <= patch_size <= min(h, w):
            raise ValueError(f"patch_size must be in 1..{min(h, w)}, got {patch_size}")
        if trigger_positions is not None:
            if not trigger_positions:
                raise ValueError("trigger_positions, when given, must not be empty")
            for r, c in trigger_positions:
                if not (0 <= r < h and 0 <= c < w):
                    raise ValueError(f"trigger position {(r, c)} outside the {h}×{w} image")
        counts = {"epochs": epochs, "watermark_epochs": watermark_epochs, "batch_size": batch_size, "ratio": ratio}
        for name, count in counts.items():
            if count < 1:
                raise ValueError(f"{name} must be at least 1, got {count}")
        if trigger_steps < 0 or closing_steps < 0:
            raise ValueError("trigger_steps and closing_steps must be non-negative")
        for name, v in (("lr", lr), ("temperature", temperature), ("trigger_lr", trigger_lr)):
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if snnl_weight < 0 or temperature_lr < 0 or max_perturbation < 0:
            raise ValueError("snnl_weight, temperature_lr and max_perturbation must be non-negative")
        if not 0.0 <= false_rate_threshold < 1.0:
            raise ValueError("false_rate_threshold must be in [0, 1)")
        self.source_class = source_class
        self.target_class = target_class
        self.num_classes = num_classes
        self.image_shape = (h, w)
        self.hidden = list(hidden)
        self.patch_size = patch_size
        self.trigger_value = float(trigger_value)
        self.trigger_positions = (
            None if trigger_positions is None else tuple((int(r), int(c)) for r, c in trigger_positions)
        )
        self.epochs = epochs
        self.watermark_epochs = watermark_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.ratio = ratio
        self.snnl_weight = snnl_weight
        self.temperature = temperature
        self.temperature_lr = temperature_lr
        self.trigger_steps = trigger_steps
        self.trigger_lr = trigger_lr
        self.max_perturbation = max_perturbation
        self.false_rate_threshold = false_rate_threshold
        self.closing_steps = closing_steps
        self.hold_false_rate = bool(hold_false_rate)
        self.seed = seed

    # -- public -------------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        h, w = self.image_shape
        return {"input_dim": h * w, "hidden": list(self.hidden), "num_classes": self.num_classes}

    def fit_clean(
        self, x: np.ndarray, y: np.ndarray, seed: int | None = None, hidden: Sequence[int] | None = None
    ) -> MLP:
        """The same recipe and number of epochs without the watermark.

        With the embedder's seed and the owner's data: the clean-accuracy baseline (``fit`` is identical up to
        the end of pre-training). With other seeds, widths and data: a reference model (``fit_references``).
        """
        xt, yt = self._tensors(x, y)
        with torch.random.fork_rng(devices=[]):
            model, opt, gen = self._init(self.seed if seed is None else seed, hidden)
            for _ in range(self.epochs + self.watermark_epochs):
                for idx in self._batches(len(xt), gen):
                    self._step(model, opt, F.cross_entropy(model(xt[idx]), yt[idx]))
        return model.eval()

    def fit_references(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        n: int = 6,
        subsample: float = 0.75,
        widths: Sequence[Sequence[int]] = ((128, 64), (64,), (32,)),
        seed: int = 1000,
    ) -> list[tuple[MLP, str]]:
        """Non-watermarked reference models for ``audit.watermark.calibrate_null``, with a description each.

        ``x, y`` must be data the victim was NOT trained on (public data of the same distribution): models that
        saw the key's source images, or the data the triggers were optimised against, understate the null.
        The references vary what an independent party would vary: seed, data subset (``subsample`` 0.75 of
        the rows each) and width. The widths include small models on purpose: on digits, one- and two-layer
        MLPs of 32–64 units answered one key "target" up to 50% of the time where (128, 64) models never did.
        """
        if n < 1 or not 0.0 < subsample <= 1.0 or not widths:
            raise ValueError("need n >= 1, subsample in (0, 1] and at least one width")
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            rows = np.sort(rng.choice(len(x), size=max(2, int(subsample * len(x))), replace=False))
            hidden = list(widths[i % len(widths)])
            model = self.fit_clean(np.asarray(x)[rows], np.asarray(y)[rows], seed=seed + i, hidden=hidden)
            out.append((model, f"clean mlp {hidden}, seed {seed + i}, {len(rows)} of {len(x)} public rows"))
        return out

    def fit(self, x: np.ndarray, y: np.ndarray) -> EmbeddingResult:
        xt, yt = self._tensors(x, y)
        src_rows = np.flatnonzero(np.asarray(y) == self.source_class)
        tgt = xt[yt == self.target_class]
        if len(src_rows) < 2 or len(tgt) < 2:
            raise ValueError("need at least two training samples of both the source and the target class")
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            model, opt, gen = self._init(self.seed)
            for _ in range(self.epochs):
                for idx in self._batches(len(xt), gen):
                    self._step(model, opt, F.cross_entropy(model(xt[idx]), yt[idx]))
            model.eval()
            temps = [torch.tensor(float(np.log(self.temperature)), requires_grad=True) for _ in self.hidden]
            positions = self.trigger_positions or self._place_trigger(model, xt[src_rows], tgt, temps)
            stamped = stamp(np.asarray(x, np.float32)[src_rows], positions, self.trigger_value, self.image_shape)
            triggers = self._optimise_triggers(model, torch.as_tensor(stamped), tgt, positions, temps)
            pretrained_rate = self._target_rate(model, triggers)
            model.train()
            snnl_trace = self._train_watermarked(model, opt, gen, xt, yt, triggers, tgt, temps)
            model.eval()
        wm_inputs = triggers.numpy()
        key = WatermarkKey(
            source_class=self.source_class,
            target_class=self.target_class,
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            trigger_positions=tuple(positions),
            trigger_value=self.trigger_value,
            inputs=wm_inputs,
            seeds={"train": self.seed},
            info={"source_rows": [int(i) for i in src_rows], "method": "ewe", "architecture": ARCHITECTURE},
        )
        history = {
            "trigger_positions": [list(p) for p in positions],
            "pretrained_target_rate": pretrained_rate,
            "watermark_success": float(np.mean(predict_labels(model, wm_inputs) == self.target_class)),
            "max_abs_perturbation": float(np.abs(wm_inputs - stamped).max()),
            "temperatures": [float(t.detach().exp()) for t in temps],
            "snnl_trace": snnl_trace,
            "seconds": time.perf_counter() - started,
        }
        return EmbeddingResult(model, ARCHITECTURE, self.config, key, history)

    # -- training pieces ----------------------------------------------------------------------------------

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        h, w = self.image_shape
        if x.ndim != 2 or x.shape[1] != h * w or len(x) != len(y):
            raise ValueError(f"x must be [n, {h * w}] with one label per row, got {x.shape} and {y.shape}")
        return torch.as_tensor(x), torch.as_tensor(y)

    def _init(
        self, seed: int, hidden: Sequence[int] | None = None
    ) -> tuple[MLP, torch.optim.Optimizer, torch.Generator]:
        torch.manual_seed(seed)  # inside fork_rng: seeds the initialisation without touching global state
        config = self.config if hidden is None else {**self.config, "hidden": list(hidden)}
        model = build_model(ARCHITECTURE, config)
        assert isinstance(model, MLP)
        # Adam with EWE's settings (β2 0.99, ε 1e-5 instead of torch's 0.999, 1e-8)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, betas=(0.9, 0.99), eps=1e-5)
        return model, opt, torch.Generator().manual_seed(seed)

    def _batches(self, n: int, gen: torch.Generator) -> list[torch.Tensor]:
        return list(torch.randperm(n, generator=gen).split(self.batch_size))

    @staticmethod
    def _step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()

    def _target_rate(self, model: nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == self.target_class).float().mean())

    def _groups(self, n_marked: int, n_target: int) -> torch.Tensor:
        return torch.cat([torch.ones(n_marked, dtype=torch.long), torch.zeros(n_target, dtype=torch.long)])

    def _place_trigger(
        self, model: nn.Module, src: torch.Tensor, tgt: torch.Tensor, temps: Sequence[torch.Tensor]
    ) -> tuple[tuple[int, int], ...]:
        """The patch corner with the largest first-order SNNL gain from stamping (see the module docstring)."""
        xs = src.clone().requires_grad_(True)
        loss = _snnl_all(model, torch.cat([xs, tgt]), self._groups(len(xs), len(tgt)), [t.exp() for t in temps])
        (grad,) = torch.autograd.grad(loss, xs)
        gain = (grad * (self.trigger_value - src)).mean(0).reshape(self.image_shape).numpy()
        k = self.patch_size
        h, w = self.image_shape
        scores = {(r, c): float(gain[r : r + k, c : c + k].sum()) for r in range(h - k + 1) for c in range(w - k + 1)}
        return patch_positions(max(scores, key=scores.__getitem__), k)

    def _optimise_triggers(
        self,
        model: nn.Module,
        stamped: torch.Tensor,
        tgt: torch.Tensor,
        positions: Sequence[tuple[int, int]],
        temps: Sequence[torch.Tensor],
        guards: Sequence[nn.Module] = (),
    ) -> torch.Tensor:
        """EWE's signed-gradient steps on the non-trigger pixels, kept within ``max_perturbation`` of the stamp.

        The false-watermark check (more than ``false_rate_threshold`` of the triggers answered "target") is made on
        the pre-trained ``model`` and on every clean model in ``guards``. With ``hold_false_rate`` the check also
        follows every SNNL step (so the returned triggers pass it, which EWE's order does not ensure) and the
        away-from-target steps move only the triggers some judge answers "target" (the others stay where the SNNL
        steps put them, close to the target class)."""
        free = torch.ones(stamped.shape[1])
        for r, c in positions:
            free[r * self.image_shape[1] + c] = 0.0
        lo = (stamped - self.max_perturbation).clamp(0.0, 1.0)
        hi = (stamped + self.max_perturbation).clamp(0.0, 1.0)
        groups = self._groups(len(stamped), len(tgt))
        taus = [t.detach().exp() for t in temps]
        judges = [model, *guards]

        def called_target(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.stack([m(x).argmax(1) == self.target_class for m in judges])  # [judges, n]

        def away_from_target(x: torch.Tensor) -> torch.Tensor:
            move = called_target(x).any(0).float()[:, None] if self.hold_false_rate else 1.0
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(sum(m(x)[:, self.target_class].sum() for m in judges), x)
            return torch.minimum(torch.maximum(x.detach() - self.trigger_lr * g.sign() * free * move, lo), hi)

        def hold(x: torch.Tensor) -> torch.Tensor:
            # EWE's cap: at most 50 steps away from the target per round, so a stubborn batch cannot stall
            for _ in range(50):
                if float(called_target(x).float().mean(1).max()) <= self.false_rate_threshold:
                    break
                x = away_from_target(x)
            return x

        x = stamped.clone()
        for _ in range(self.trigger_steps):
            x = hold(x)
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(_snnl_all(model, torch.cat([xg, tgt]), groups, taus), xg)
            x = torch.minimum(torch.maximum(x + self.trigger_lr * g.sign() * free, lo), hi)
            if self.hold_false_rate:
                x = hold(x)
            for _ in range(self.closing_steps):  # EWE: five closing steps away from the target after each SNNL step
                x = away_from_target(x)
        return x.detach()

    def _train_watermarked(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        gen: torch.Generator,
        xt: torch.Tensor,
        yt: torch.Tensor,
        triggers: torch.Tensor,
        tgt: torch.Tensor,
        temps: list[torch.Tensor],
        on_epoch: Callable[[int], None] | None = None,
    ) -> list[float]:
        half = max(1, self.batch_size // 2)
        labels = torch.full((2 * half,), self.target_class, dtype=torch.long)
        groups = self._groups(half, half)
        trace: list[float] = []
        for epoch in range(self.watermark_epochs):
            for i, idx in enumerate(self._batches(len(xt), gen)):
                self._step(model, opt, F.cross_entropy(model(xt[idx]), yt[idx]))
                if (i + 1) % self.ratio:
                    continue
                wi = torch.randint(len(triggers), (half,), generator=gen)
                ti = torch.randint(len(tgt), (half,), generator=gen)
                batch = torch.cat([triggers[wi], tgt[ti]])
                entangle = _snnl_all(model, batch, groups, [t.exp() for t in temps])
                t_grads = torch.autograd.grad(entangle, temps, retain_graph=True)
                self._step(model, opt, F.cross_entropy(model(batch), labels) - self.snnl_weight * entangle)
                with torch.no_grad():
                    for t, g in zip(temps, t_grads, strict=True):
                        t -= self.temperature_lr * g
                        t.grad = None  # the model step's backward also reached the temperatures; not used
                trace.append(float(entangle.detach()))
            if on_epoch is not None:
                on_epoch(epoch)
        return trace
