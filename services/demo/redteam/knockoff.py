"""Knockoff Nets / CopycatCNN-style extraction: query natural data that is not the victim's, train an MLP.

Orekondy, Schiele, Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models", CVPR 2019, and
Correia-Silva et al., "Copycat CNN", IJCNN 2018 (arXiv:1806.05476). The attacker owns natural inputs from
a related distribution (Knockoff: ImageNet against a Caltech-256 model; Copycat: "non-problem-domain"
images), sends them to the victim, and trains a copy on the answers: the full posteriors (Knockoff) or
the top-1 label (Copycat). Copycat reports ≥ 93.7 % of the victim's performance from non-problem-domain
data. docs/design.md ("Measured on these machines") records the ART implementation against a digits MLP: 0.90
agreement after 500 label
queries of natural digits, 0.98 after 2,000.

Where this implementation differs:
- Only the "random" sampling policy (Knockoff's baseline and Copycat's only one); no bandit policy.
- ``transform`` (optional) perturbs each pool item before it is sent, e.g. ``image_shifts`` for small
  translations of 8×8 digits: a cheap way to stretch a small pool into a "related distribution" that the
  victim never saw. With a transform the pool is sampled with replacement; without, without replacement
  (and the attack stops when the pool is used up).
- The copy is a small torch MLP refitted (warm-started) after every ``batch_size`` queries rather than a
  CNN trained once at the end, so every ``Progress`` has a usable copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from services.demo.redteam.base import (
    AnswerKind,
    Domain,
    Progress,
    QuerySession,
    natural_points,
    positive_int,
)
from services.demo.redteam.copies import MLPCopy, MLPCopyAttack

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def image_shifts(height: int, width: int, *, max_shift: int = 1) -> Transform:
    """Translate each row, read as a ``height``×``width`` image, by up to ``max_shift`` pixels per axis.

    Vacated pixels take the image's minimum (the background of digit-like images).
    """
    positive_int("height", height)
    positive_int("width", width)
    positive_int("max_shift", max_shift, minimum=0)

    def shift(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if X.shape[1] != height * width:
            raise ValueError(f"rows have {X.shape[1]} features, not {height}x{width}")
        imgs = X.reshape(-1, height, width)
        out = np.empty_like(imgs)
        dy = rng.integers(-max_shift, max_shift + 1, size=len(X))
        dx = rng.integers(-max_shift, max_shift + 1, size=len(X))
        for i, img in enumerate(imgs):
            moved = np.full_like(img, img.min())
            src = img[max(0, -dy[i]) : height - max(0, dy[i]), max(0, -dx[i]) : width - max(0, dx[i])]
            moved[max(0, dy[i]) : max(0, dy[i]) + src.shape[0], max(0, dx[i]) : max(0, dx[i]) + src.shape[1]] = src
            out[i] = moved
        return out.reshape(len(X), -1)

    return shift


class Knockoff(MLPCopyAttack):
    def __init__(
        self,
        *,
        pool: np.ndarray,
        domain: Domain,
        n_classes: int,
        budget: int,
        use_probabilities: bool = False,
        transform: Transform | None = None,
        batch_size: int = 250,
        hidden: Sequence[int] = (128,),
        epochs: int = 40,
        refit_epochs: int = 15,
        seed: int = 0,
    ) -> None:
        """
        ``pool``: the attacker's natural inputs; must not be the victim's training data for the
        experiment to mean what it says.
        ``use_probabilities``: train on posteriors (Knockoff) instead of labels (Copycat).
        ``batch_size``: queries per oracle call, and the copy-refit cadence.
        ``epochs`` for the first fit, ``refit_epochs`` for each warm-started refit over all answers.
        """
        super().__init__(domain=domain, n_classes=n_classes, budget=budget, seed=seed)
        self._set_training(batch_size=batch_size, hidden=hidden, epochs=epochs, refit_epochs=refit_epochs)
        self.pool = natural_points("pool", pool, domain, minimum=2)
        self.needs: AnswerKind = "probabilities" if use_probabilities else "labels"
        if transform is not None and not callable(transform):
            raise ValueError("transform must be a callable (X, rng) -> X")
        self.transform = transform

    def _steps(self, session: QuerySession, rng: np.random.Generator) -> Iterator[Progress]:
        assert self.n_classes is not None
        if self.transform is None:
            order = rng.permutation(len(self.pool))[: self.budget]
        else:
            order = rng.integers(0, len(self.pool), size=self.budget)
        X_seen: list[np.ndarray] = []
        answers: list[np.ndarray] = []
        copy: MLPCopy | None = None
        for fit_no, start in enumerate(range(0, len(order), self.batch_size)):
            X = self.pool[order[start : start + self.batch_size]]
            if self.transform is not None:
                X = self.domain.clip(self.transform(X, rng))
            X_seen.append(X)
            answers.append(session.ask(X))
            copy = self._fit(np.vstack(X_seen), np.concatenate(answers), copy, fit_no)
            yield session.progress(copy, "query")
