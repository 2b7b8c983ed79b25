"""Null models: independent classifiers trained on the owner's disjoint data, the calibration of every audit.

One trainer for every place that needs them: registration (``audit.protected``, for the watermark null and for
dataset inference), the benchmark (``bench/audit.py``) and the tests. Before this module the registration trained
its nulls with ``WatermarkEmbedder.fit_references`` (widths (128, 64), (64,), (32,)) while the benchmark used
``train_null_models`` (widths (128, 64), (64,), (128,)), so the benchmark measured dataset inference against other
null models than a registration builds. Now both call ``train_null_models`` with the same defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit.suspects.base import Suspect

# The registered digits architecture (128, 64) and two one-layer variants: an independent party need not use
# the owner's width, and null models that all share one architecture understate the spread.
NULL_WIDTHS: tuple[tuple[int, ...], ...] = ((128, 64), (64,), (128,))


def train_null_models(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n: int,
    seed: int,
    subsample: float = 0.75,
    widths: Sequence[Sequence[int]] = NULL_WIDTHS,
    image_shape: tuple[int, int] | None = None,
    num_classes: int | None = None,
    epochs: int = 40,
    max_rows: int | None = None,
) -> list[Suspect]:
    """``n`` independent MLPs on random ``subsample`` fractions of ``x, y`` (data disjoint from the private and
    public samples!), each with its own seed and a width from ``widths`` in turn, trained by the owner's recipe
    (``WatermarkEmbedder.fit_clean``: the victim's recipe without the watermark). Returned as in-process
    suspects whose identity carries a description.

    ``max_rows`` caps each null's training rows (None: no cap): on MNIST-scale reference sets the nulls' cost
    grows with the rows while their spread, which is what the calibration needs, comes from seeds and subsets.
    """
    from audit.suspects.safetensors_loader import TorchModuleSuspect
    from audit.watermark_embed import WatermarkEmbedder

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"null-model data must be x [n, d] (n >= 2) with one label per row, got {x.shape}, {y.shape}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 < subsample <= 1.0 or not widths:
        raise ValueError("need subsample in (0, 1] and at least one width")
    if max_rows is not None and max_rows < 2:
        raise ValueError("max_rows must be at least 2 or None")
    classes = num_classes or int(y.max()) + 1
    shape = image_shape or (1, x.shape[1])
    half = epochs // 2
    embedder = WatermarkEmbedder(
        image_shape=shape,
        num_classes=max(2, classes),
        patch_size=1,
        source_class=0,
        target_class=1,
        epochs=max(1, epochs - half),
        watermark_epochs=max(1, half),
    )
    rng = np.random.default_rng(seed)
    size = max(2, int(subsample * len(x)))
    if max_rows is not None:
        size = min(size, max_rows)
    out: list[Suspect] = []
    for i in range(n):
        rows = np.sort(rng.choice(len(x), size=size, replace=False))
        hidden = [int(h) for h in widths[i % len(widths)]]
        model = embedder.fit_clean(x[rows], y[rows], seed=seed + i, hidden=hidden)
        desc = f"null mlp {hidden}, seed {seed + i}, {len(rows)} of {len(x)} rows"
        out.append(TorchModuleSuspect(model, identity={"kind": "in-memory", "name": f"null_{i}", "description": desc}))
    return out
