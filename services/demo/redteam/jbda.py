"""Papernot et al.'s Jacobian-based dataset augmentation (JBDA) with a small substitute, labels only.

Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical Black-Box Attacks against Machine Learning"
(arXiv:1602.02697, AsiaCCS 2017). The attacker holds a small seed set of natural inputs (~100-150), labels
it with the oracle, trains a substitute, and then in each substitute-training round ρ doubles the set:
every point x with oracle label y gets a sibling ``x + λ_ρ · sign(∂F_sub[y](x)/∂x)`` (a step towards
where the substitute's class-y score changes fastest, i.e. across the substitute's boundaries), and the
siblings are labelled by the oracle. The abstract reports a MetaMind DNN that labelled 6,400 synthetic
inputs, after which 84.24 % of the substitute's adversarial examples fooled it. cleverhans' MNIST
tutorial uses 150 seeds, λ = 0.1 on [0, 1] pixels, and steps −λ for the first three rounds and +λ
afterwards (~4,650 oracle queries).

Where this implementation differs:
- λ is given as a fraction of each feature's domain width (``step``), so 0.1 means 1.6 grey levels on
  digits' [0, 16] — the same relative step as cleverhans' 0.1 on [0, 1].
- The gradient is of the substitute's class-y *logit* rather than its softmax output: the softmax's
  gradient vanishes where the substitute is saturated, as a net fitted to ~100 points is on most of them.
- The substitute is a torch MLP (``copies.train_mlp``) refitted, warm-started, after every oracle batch
  (``batch_size`` rows), so every ``Progress`` carries a copy trained on all answers so far; the paper
  retrains once per round.
- The step's sign alternates every ``sign_period`` rounds, λ_ρ = λ·(−1)^⌊ρ/τ⌋ (our reading of the
  paper's "periodic step size"), where cleverhans flips it once; both keep later rounds from walking
  ever further in one direction.
- No reservoir sampling; the last augmentation is truncated (at random) to what the budget allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from audit.validation import positive_float, positive_int
from services.demo.redteam.base import (
    Domain,
    Progress,
    QuerySession,
    natural_points,
)
from services.demo.redteam.copies import ConstantCopy, MLPCopyAttack


class JacobianAugmentation(MLPCopyAttack):
    needs = "labels"

    def __init__(
        self,
        *,
        seed_set: np.ndarray,
        domain: Domain,
        n_classes: int,
        budget: int,
        rounds: int = 5,
        step: float = 0.1,
        sign_period: int = 3,
        batch_size: int = 256,
        hidden: Sequence[int] = (64,),
        epochs: int = 30,
        refit_epochs: int = 10,
        seed: int = 0,
    ) -> None:
        """
        ``seed_set``: the attacker's natural inputs (not the victim's training data); all are queried.
        ``rounds``: augmentation rounds; the set doubles in each, so 100 seeds and 5 rounds would need
        100·2⁵ = 3,200 queries (the budget truncates the last round).
        ``step``: λ as a fraction of each feature's width. ``sign_period``: τ, rounds before λ flips sign.
        ``epochs``: substitute training from scratch on the seed set; ``refit_epochs``: warm-started
        passes over all answers after every later batch (enough because each batch adds at most as many
        points as the substitute has already seen).
        """
        super().__init__(domain=domain, n_classes=n_classes, budget=budget, seed=seed)
        self._set_training(batch_size=batch_size, hidden=hidden, epochs=epochs, refit_epochs=refit_epochs)
        self.seed_set = natural_points("seed_set", seed_set, domain, minimum=2)
        if len(self.seed_set) > self.budget:
            raise ValueError(f"the seed set ({len(self.seed_set)}) is larger than the budget ({self.budget})")
        self.rounds = positive_int("rounds", rounds)
        self.step = positive_float("step", step, maximum=1.0)
        self.sign_period = positive_int("sign_period", sign_period)

    def _steps(self, session: QuerySession, rng: np.random.Generator) -> Iterator[Progress]:
        assert self.n_classes is not None
        X = self.seed_set[rng.permutation(len(self.seed_set))]
        answers: list[np.ndarray] = []
        for start in range(0, len(X), self.batch_size):
            answers.append(session.ask(X[start : start + self.batch_size]))
            if start + self.batch_size < len(X):  # the substitute is trained once the whole seed set is labelled
                yield session.progress(ConstantCopy.most_frequent(np.concatenate(answers), self.n_classes), "seed")
        y = np.concatenate(answers)
        sub = self._fit(X, y, None, 0)
        fits = 1
        yield session.progress(sub, "seed", round=0.0)
        for rho in range(self.rounds):
            if session.remaining == 0:
                break
            lam = self.step * self.domain.width * (-1.0) ** (rho // self.sign_period)
            new = self.domain.clip(X + lam * np.sign(sub.logit_gradient(X, y)))
            new = new[rng.permutation(len(new))[: session.remaining]]
            for start in range(0, len(new), self.batch_size):
                batch = new[start : start + self.batch_size]
                X, y = np.vstack([X, batch]), np.concatenate([y, session.ask(batch)])
                sub = self._fit(X, y, sub, fits)
                fits += 1
                yield session.progress(sub, "augment", round=float(rho + 1))
