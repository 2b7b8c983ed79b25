"""HELD-OUT benign variation families: what the false-positive rate is reported on, never tuned on.

The detector is designed and calibrated with the tuning families of ``services.detector.augment``
(translation, rotation, sensor noise) and the behaviours of ``services.demo.redteam.benign`` (skewed,
topical, batch, retries, near-duplicates, bulk volume). A detector tuned on those and scored on the same
would report an optimistic false-positive rate, so the families here are kept out of every design and
calibration path: an import-linter contract (pyproject.toml, "Held-out benign families stay held out")
forbids the detector and the demo baselines from importing this module, and only ``bench/detection.py``
uses it, for the reported run.

Image families (client-level parameters, a little jitter per row, values clipped to ``[low, high]``):
- ``blur``: Gaussian blur (an out-of-focus camera, a low-resolution scan);
- ``thickness``: strokes thickened by grey dilation or thinned by grey erosion (another pen);
- ``elastic``: elastic distortion (Simard et al., ICDAR 2003: a smoothed random displacement field),
  the hand-writing wobble of another writer.
``contrast`` (contrast, brightness, gamma) was held out here until its first report; it is now a tuning
family in ``services.detector.augment``. Added unseen on 2026-12-03, after that (no code path has
measured the detector on these before the run they are reported in):
- ``occlusion``: part of the digit hidden by a background-coloured rectangle (a finger, a sticker, the
  edge of a cropped scan): 10-25 % of the image area, at a client-specific place, jittered per row;
- ``zoom``: the digit scaled about the image centre by 0.8-1.2 (another camera distance or crop box);
- ``lowres``: captured at half the resolution (6x6 on 8x8 digits) and up-sampled again (bilinear),
  then quantised to 3-5 bits (a cheap sensor or a strongly compressed upload).
After their first report, occlusion and lowres were used to redesign the detector (population baseline,
quantised steps): from then on the benchmark reports them among the tuning families. Added unseen in the
same session, before that redesign was measured on anything (reported as ``new_heldout``):
- ``shear``: a slanted hand or a document fed askew (horizontal shear 0.1-0.3 of the height);
- ``dust``: a camera's defective pixels, the same 1-3 % of pixels dead or hot in every image of a device;
- ``jpeg``: a compressed upload (block DCT, coefficients quantised with a step growing with frequency).
Stream families: ``writers`` (rows from a distinct writer population, supplied by the caller) and
``drift`` (a client whose class mix moves from one Dirichlet draw to another over its lifetime).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from services.demo.redteam.base import Domain
from services.demo.redteam.benign import BenignBatch, BenignClient, BenignProfile

HELDOUT_IMAGE_FAMILIES = ("blur", "thickness", "elastic", "occlusion", "zoom", "lowres", "shear", "dust", "jpeg")
HELDOUT_FAMILIES = (*HELDOUT_IMAGE_FAMILIES, "writers", "drift")
Variation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True, slots=True)
class HeldoutVariation:
    """A held-out family applied to flattened ``shape`` images with values in ``[low, high]``."""

    family: str
    shape: tuple[int, int]
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in HELDOUT_IMAGE_FAMILIES:
            raise ValueError(f"family must be one of {HELDOUT_IMAGE_FAMILIES}, got {self.family!r}")

    def for_client(self, rng: np.random.Generator) -> Variation:
        """One client's device: parameters drawn once; elastic fields differ per row (hand wobble)."""
        h, w = self.shape
        # Sizes in pixels scale with the image: 8x8 digits are 4x4 blocks of a 32x32 bitmap, MNIST is 28x28.
        px = min(h, w) / 28.0
        span = self.high - self.low
        # 0.5-1 px on MNIST: visibly soft, still legible. On 8x8 the same optics would be sigma 0.14-0.29,
        # which a Gaussian on that grid cannot express (the neighbour weight is < 1e-3); 0.4-0.7 (1.6-2.8 px
        # of the 32x32 bitmap the digits were counted from) is the smallest blur that changes an 8x8 digit.
        sigma_blur = rng.uniform(0.5, 1.0) * px if px > 0.5 else rng.uniform(0.4, 0.7)
        thicker = bool(rng.random() < 0.5)
        # On 8x8 one pixel is a 4x4 block of the 32x32 bitmap: a blend weight of 1/4 of a block dilation is a
        # 1-px pen change there, the size of MNIST's 2x2 dilation; 0.15-0.35 spans ~0.6-1.4 px.
        weight = rng.uniform(0.15, 0.35)
        # Three draws of the former contrast family, kept so every other family's clients are the ones of
        # the earlier reports (same parameters from the same seeds).
        rng.uniform(0.6, 1.3), rng.uniform(-0.05, 0.1), rng.uniform(0.6, 1.6)
        alpha = rng.uniform(1.0, 2.5) * max(px, 0.25)  # largest elastic displacement: 1-2.5 px on MNIST
        sigma_el = max(4.0 * px, 1.0)  # smoothness of the field: a wobble, not noise
        # occlusion: the rectangle's share of each side, and its centre (fractions of the image), per client
        occ_h, occ_w = np.sqrt(rng.uniform(0.10, 0.25)) * rng.uniform(0.7, 1.3, size=2).clip(0.5, 1.0 / 0.6)
        occ_c = rng.uniform(0.2, 0.8, size=2)
        zoom = float(rng.uniform(0.8, 1.2))
        levels = int(2 ** rng.integers(3, 6))  # 8, 16 or 32 grey levels
        # Half resolution on MNIST (14x14); an 8x8 digit is already a 4x4-averaged bitmap, and halving it
        # again (4x4) erases the digit, so it is captured at 6x6 (a 5-px block of the 32x32 bitmap).
        factor = 0.5 if px > 0.5 else 0.75
        # shear: a slanted hand or a document fed askew, 0.1-0.3 of the height, either direction
        shear = float(rng.uniform(0.1, 0.3) * rng.choice((-1.0, 1.0)))
        # dust: a camera's defective pixels, fixed per device: 1-3 % of them dead (low) or hot (50-100 % bright)
        n_dust = max(1, round(rng.uniform(0.01, 0.03) * h * w))
        dust_at = rng.choice(h * w, size=n_dust, replace=False)
        dust_hot = rng.random(n_dust) < 0.5
        dust_value = np.where(dust_hot, self.low + rng.uniform(0.5, 1.0, n_dust) * span, self.low)
        # jpeg: block DCT with coefficients quantised, the step growing with frequency (a compressed upload);
        # 8-px blocks on MNIST, 4-px on 8x8 digits; the base step 2-8 % of the value range
        block = 8 if px > 0.5 else 4
        jpeg_step = rng.uniform(0.02, 0.08) * span
        family = self.family

        def vary(X: np.ndarray, row_rng: np.random.Generator) -> np.ndarray:
            X = np.asarray(X, dtype=np.float64)
            imgs = X.reshape(-1, h, w)
            if family == "blur":
                out = np.stack([ndimage.gaussian_filter(im, sigma_blur) for im in imgs])
            elif family == "thickness":
                op = ndimage.grey_dilation if thicker else ndimage.grey_erosion
                if px > 0.5:
                    out = np.stack([op(im, size=(2, 2)) for im in imgs])
                else:
                    out = np.stack([(1 - weight) * im + weight * op(im, size=(2, 2)) for im in imgs])
            elif family == "occlusion":
                out = imgs.copy()
                for i in range(len(out)):
                    rh, rw = max(1, round(occ_h * h)), max(1, round(occ_w * w))
                    cy, cx = (occ_c + row_rng.normal(0.0, 0.05, size=2)) * (h, w)
                    top, left = int(np.clip(round(cy - rh / 2), 0, h - rh)), int(np.clip(round(cx - rw / 2), 0, w - rw))
                    out[i, top : top + rh, left : left + rw] = self.low
            elif family == "zoom":
                centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
                z = zoom * (1.0 + row_rng.normal(0.0, 0.02, size=len(imgs)))
                out = np.stack(
                    [
                        ndimage.affine_transform(
                            im, np.eye(2) / zi, offset=centre - centre / zi, order=1, cval=self.low
                        )
                        for im, zi in zip(imgs, z, strict=True)
                    ]
                )
            elif family == "lowres":
                out = np.empty_like(imgs)
                for i, im in enumerate(imgs):
                    small = ndimage.zoom(im, factor, order=1, grid_mode=True, mode="grid-constant", cval=self.low)
                    up = ndimage.zoom(
                        small, (h / small.shape[0], w / small.shape[1]), order=1, grid_mode=True, mode="nearest"
                    )
                    out[i] = up[:h, :w]
                unit = np.clip((out - self.low) / span, 0.0, 1.0)
                out = self.low + np.round(unit * (levels - 1)) / (levels - 1) * span
            elif family == "shear":
                out = np.stack(
                    [_shear(im, shear + row_rng.normal(0.0, 0.03), self.low) for im in imgs]
                )
            elif family == "dust":
                flat = imgs.reshape(len(imgs), -1).copy()
                flat[:, dust_at] = dust_value
                out = flat.reshape(imgs.shape)
            elif family == "jpeg":
                out = np.stack([_block_dct_quantise(im, block, jpeg_step) for im in imgs])
            else:  # elastic
                out = np.empty_like(imgs)
                yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
                for i, im in enumerate(imgs):
                    dy = ndimage.gaussian_filter(row_rng.uniform(-1, 1, (h, w)), sigma_el, mode="constant")
                    dx = ndimage.gaussian_filter(row_rng.uniform(-1, 1, (h, w)), sigma_el, mode="constant")
                    norm = max(float(np.abs(np.concatenate([dy, dx])).max()), 1e-12)
                    coords = [yy + alpha * dy / norm, xx + alpha * dx / norm]
                    out[i] = ndimage.map_coordinates(im, coords, order=1, cval=self.low)
            return np.clip(out.reshape(X.shape), self.low, self.high)

        return vary


def _shear(im: np.ndarray, shear: float, low: float) -> np.ndarray:
    """Rows shifted sideways in proportion to their height above the centre (a slanted hand)."""
    h, w = im.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    matrix = np.array([[1.0, 0.0], [shear, 1.0]])  # output (r, c) reads input (r, c + shear * r)
    return ndimage.affine_transform(im, matrix, offset=centre - matrix @ centre, order=1, cval=low)


def _block_dct_quantise(im: np.ndarray, block: int, step: float) -> np.ndarray:
    """JPEG's lossy step: orthonormal 2-D DCT per block, coefficients rounded to ``step x (1 + u + v)``."""
    h, w = im.shape
    ph, pw = -h % block, -w % block
    padded = np.pad(im, ((0, ph), (0, pw)), mode="edge")
    u = np.arange(block)
    q = step * (1.0 + u[:, None] + u[None, :])
    out = np.empty_like(padded)
    for r in range(0, padded.shape[0], block):
        for c in range(0, padded.shape[1], block):
            coef = fft.dctn(padded[r : r + block, c : c + block], norm="ortho")
            out[r : r + block, c : c + block] = fft.idctn(np.round(coef / q) * q, norm="ortho")
    return out[:h, :w]


class DriftingClient(BenignClient):
    """A client whose class mix drifts linearly from one Dirichlet(0.5) draw to another over its lifetime."""

    _lifetime = 1

    def batches(self, n_queries: int) -> Iterator[BenignBatch]:
        self._lifetime = max(int(n_queries), 1)
        return super().batches(n_queries)

    def _picker(self, rng: np.random.Generator) -> Iterator[int]:
        by_class = {int(c): list(rng.permutation(np.flatnonzero(self.labels == c))) for c in self.classes}
        start = rng.dirichlet(np.full(len(self.classes), 0.5))  # 0.5: a few favourite classes at each end
        end = rng.dirichlet(np.full(len(self.classes), 0.5))
        t = 0
        while True:
            frac = min(t / self._lifetime, 1.0)
            w = (1 - frac) * start + frac * end
            c = int(rng.choice(self.classes, p=w / w.sum()))
            rows = by_class[c]
            yield int(rows[t % len(rows)])
            t += 1


def drifting_client(
    *, pool: np.ndarray, labels: np.ndarray, domain: Domain, profile: BenignProfile, client_id: str, seed: int
) -> BenignClient:
    return DriftingClient(pool=pool, labels=labels, domain=domain, profile=profile, client_id=client_id, seed=seed)
