"""Null models: independent classifiers trained on the owner's disjoint data, the calibration of every audit.

One trainer for every place that needs them: registration (``audit.protected``, for the watermark null and for
dataset inference), the benchmark (``bench/audit.py``) and the tests. Before this module the registration trained
its nulls with ``WatermarkEmbedder.fit_references`` (widths (128, 64), (64,), (32,)) while the benchmark used
``train_null_models`` (widths (128, 64), (64,), (128,)), so the benchmark measured dataset inference against other
null models than a registration builds. Now both call ``train_null_models`` with the same defaults.

**Disjoint data parts** (``parts``). Null models that all subsample one pool of rows share that pool's imprint:
dataset inference normalises each null by the others, so the imprint cancels among the nulls, while a model
trained on any other data carries its own data set's imprint, which the nulls' spread never showed. On digits
(docs/audits.md "Dataset inference's false claims on digits") models trained on the pool sat 0.5-1.0 t-units
above or below the nulls, by seed, with all of one pool's models together. With ``parts`` > 1 the rows are split
into that many disjoint parts and each null trains on a subsample of one part; its ``identity["data_part"]``
says which, so that dataset inference can normalise a null by the *other* parts' nulls only (an outsider to its
reference, as a suspect is) and fit a null that carries the between-part spread (``audit.di_statistics``).
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
    parts: int = 1,
    min_steps: int = 0,
) -> list[Suspect]:
    """``n`` independent MLPs on random ``subsample`` fractions of ``x, y`` (data disjoint from the private and
    public samples!), each with its own seed and a width from ``widths`` in turn, trained by the owner's recipe
    (``WatermarkEmbedder.fit_clean``: the victim's recipe without the watermark). Returned as in-process
    suspects whose identity carries a description.

    ``max_rows`` caps each null's training rows (None: no cap): on MNIST-scale reference sets the nulls' cost
    grows with the rows while their spread, which is what the calibration needs, comes from seeds and subsets.

    ``parts``: split the rows into this many disjoint parts (seeded) and train null i on a ``subsample`` of part
    ``i % parts`` (module docstring); 1 keeps one pool. ``min_steps``: at least this many optimiser steps per
    null (more epochs for a small part: the recipe counts epochs, and 40 epochs of a single batch of 48 digits
    left an MLP at 45 % test accuracy); 0 keeps the recipe's epochs.
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
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= len(x) // 2:
        raise ValueError(f"parts must be an integer in 1..{len(x) // 2} (two rows per part at least), got {parts!r}")
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
        raise ValueError(f"min_steps must be a non-negative integer, got {min_steps!r}")
    classes = num_classes or int(y.max()) + 1
    shape = image_shape or (1, x.shape[1])
    rng = np.random.default_rng(seed)
    # parts first, from their own draw, so that parts=1 draws the same rows as before parts existed
    part_of = np.random.default_rng([seed, parts]).permutation(len(x)) % parts if parts > 1 else np.zeros(len(x), int)
    out: list[Suspect] = []
    for i in range(n):
        part = i % parts
        pool = np.flatnonzero(part_of == part)
        size = max(2, int(subsample * len(pool)))
        if max_rows is not None:
            size = min(size, max_rows)
        rows = np.sort(pool[rng.choice(len(pool), size=size, replace=False)]) if parts > 1 else np.sort(
            rng.choice(len(x), size=size, replace=False)
        )
        total = epochs
        if min_steps:
            batches = -(-len(rows) // 64)  # the embedder's batch size
            total = max(epochs, -(-min_steps // batches))
        half = total // 2
        embedder = WatermarkEmbedder(
            image_shape=shape,
            num_classes=max(2, classes),
            patch_size=1,
            source_class=0,
            target_class=1,
            epochs=max(1, total - half),
            watermark_epochs=max(1, half),
        )
        hidden = [int(h) for h in widths[i % len(widths)]]
        model = embedder.fit_clean(x[rows], y[rows], seed=seed + i, hidden=hidden)
        where = f"part {part + 1} of {parts} ({len(pool)} rows)" if parts > 1 else f"{len(x)} rows"
        desc = f"null mlp {hidden}, seed {seed + i}, {len(rows)} of {where}"
        identity = {"kind": "in-memory", "name": f"null_{i}", "description": desc}
        if parts > 1:
            identity["data_part"] = str(part)
        out.append(TorchModuleSuspect(model, identity=identity))
    return out
