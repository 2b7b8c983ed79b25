"""The held-out benign families: each changes the images within range, per client, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from services.demo.benign_heldout import HELDOUT_IMAGE_FAMILIES, HeldoutVariation, drifting_client
from services.demo.redteam.base import Domain
from services.demo.redteam.benign import BenignProfile

X, Y = load_digits(return_X_y=True)


@pytest.mark.parametrize("family", HELDOUT_IMAGE_FAMILIES)
def test_each_family_changes_digits_within_range_and_reproducibly(family: str) -> None:
    var = HeldoutVariation(family, (8, 8), 0.0, 16.0)
    rows = X[:30].astype(np.float64)
    a = var.for_client(np.random.default_rng(3))(rows, np.random.default_rng(4))
    b = var.for_client(np.random.default_rng(3))(rows, np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 16.0
    change = np.abs(a - rows).mean()
    assert 0.05 < change < 4.0  # visibly different, still a digit (mean |change| of a 0..16 pixel)


def test_mnist_sized_images_and_bad_family() -> None:
    img = np.zeros((2, 784))
    img[:, 300:320] = 1.0
    out = HeldoutVariation("thickness", (28, 28), 0.0, 1.0).for_client(np.random.default_rng(0))(
        img, np.random.default_rng(0)
    )
    assert out.shape == img.shape and out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match="family"):
        HeldoutVariation("translate", (8, 8))


def test_drifting_client_moves_its_class_mix() -> None:
    client = drifting_client(
        pool=X.astype(np.float64),
        labels=Y,
        domain=Domain.box(0.0, 16.0, 64),
        profile=BenignProfile(),
        client_id="d",
        seed=5,
    )
    labels = np.concatenate([b.labels for b in client.batches(2000)])
    first = np.bincount(labels[:500], minlength=10) / 500
    last = np.bincount(labels[-500:], minlength=10) / 500
    assert 0.5 * np.abs(first - last).sum() > 0.3  # total variation between the start and the end of its life


def test_occlusion_hides_a_block_and_zoom_moves_strokes_outwards() -> None:
    rows = X[:10].astype(np.float64)
    hidden = HeldoutVariation("occlusion", (8, 8), 0.0, 16.0).for_client(np.random.default_rng(1))(
        rows, np.random.default_rng(2)
    )
    erased = (hidden == 0.0) & (rows > 0.0)
    assert erased.any(axis=1).all() and np.all(hidden[~erased] == rows[~erased])  # only erasing, every row
    img = np.zeros((1, 784))
    img.reshape(28, 28)[12:16, 12:16] = 1.0  # a centred square
    for seed in range(20):
        var = HeldoutVariation("zoom", (28, 28), 0.0, 1.0)
        out = var.for_client(np.random.default_rng(seed))(img, np.random.default_rng(0))
        assert out.sum() == pytest.approx(img.sum(), rel=0.5) and not np.allclose(out, img)


def test_lowres_quantises_to_few_levels() -> None:
    out = HeldoutVariation("lowres", (8, 8), 0.0, 16.0).for_client(np.random.default_rng(0))(
        X[:50].astype(np.float64), np.random.default_rng(0)
    )
    assert len(np.unique(out)) <= 32
