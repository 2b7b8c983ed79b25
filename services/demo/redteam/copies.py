"""The models an attacker trains from the oracle's answers, and how they are fitted.

All copies take raw inputs (the victim's feature space), answer labels 0..k-1 and probabilities [n, k],
and are snapshots: nothing here mutates a copy after it was returned.

- ``ConstantCopy``: the attacker's best guess before any model exists (the most frequent answer so far).
- ``LinearCopy``: softmax regression ``softmax(W x + b)``; equation solving recovers W, b directly,
  adaptive retraining fits them with ``fit_softmax`` (L-BFGS on cross-entropy + L2).
- ``HalfspaceCopy``: a binary linear rule ``w·x + b > 0`` (Lowd–Meek); its scale is unknown to a label-only
  attacker, so its probabilities are one-hot.
- ``MLPCopy``: a small torch MLP (Papernot substitutes, Knockoff/Copycat copies), fitted by ``train_mlp``
  on labels or on probability vectors (soft cross-entropy, as Knockoff does with posteriors).
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from threadpoolctl import threadpool_limits
from torch import nn

from services.demo.redteam.base import Attack, Domain, positive_int


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


class ConstantCopy:
    def __init__(self, label: int, n_classes: int) -> None:
        self.label = int(label)
        self.n_classes = int(n_classes)

    @classmethod
    def most_frequent(cls, labels: np.ndarray, n_classes: int) -> ConstantCopy:
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
        return cls(int(counts.argmax()) if len(labels) else 0, n_classes)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.label, dtype=np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return one_hot(self.predict(X), self.n_classes)


class LinearCopy:
    """``softmax(X @ W.T + b)`` with W [k, d], b [k]."""

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W = np.array(W, dtype=np.float64)
        self.b = np.array(b, dtype=np.float64)
        self.n_classes = int(self.W.shape[0])

    def logits(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.W.T + self.b

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(axis=1).astype(np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.logits(X), axis=1)


class HalfspaceCopy:
    """``positive_label`` where ``w·x + b > 0``, else ``negative_label``."""

    def __init__(self, w: np.ndarray, b: float, *, positive_label: int, negative_label: int, n_classes: int) -> None:
        self.w = np.array(w, dtype=np.float64)
        self.b = float(b)
        self.positive_label = int(positive_label)
        self.negative_label = int(negative_label)
        self.n_classes = int(n_classes)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.w + self.b

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.decision_function(X) > 0, self.positive_label, self.negative_label).astype(np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return one_hot(self.predict(X), self.n_classes)


def fit_softmax(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    domain: Domain,
    l2: float = 1e-3,
    init: LinearCopy | None = None,
    max_iter: int = 300,
) -> LinearCopy:
    """Multinomial logistic regression by L-BFGS, on inputs rescaled to [0, 1] by the domain.

    Written out instead of sklearn's LogisticRegression because the label space is fixed (a round that has
    not yet seen class 7 still needs a 10-class model) and because warm-starting from the previous round's
    copy makes each adaptive round a few dozen iterations instead of a fit from scratch.
    """
    Z = (np.asarray(X, dtype=np.float64) - domain.low) / domain.width
    n, d = Z.shape
    Y = one_hot(np.asarray(y, dtype=np.int64), n_classes)
    Za = np.hstack([Z, np.ones((n, 1))])
    if init is not None:
        # Back to the [0, 1] scale: W_z = W_x * width, b_z = b_x + W_x·low.
        theta0 = np.hstack([init.W * domain.width, (init.b + init.W @ domain.low)[:, None]])
    else:
        theta0 = np.zeros((n_classes, d + 1))

    def loss(theta_flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = theta_flat.reshape(n_classes, d + 1)
        logp = log_softmax(Za @ theta.T, axis=1)
        reg = 0.5 * l2 * np.sum(theta[:, :-1] ** 2)  # the bias is not shrunk
        grad = (np.exp(logp) - Y).T @ Za / n
        grad[:, :-1] += l2 * theta[:, :-1]
        return float(-np.sum(Y * logp) / n + reg), grad.ravel()

    # One BLAS thread: numpy and scipy each bundle an OpenBLAS, and their two thread pools spin against
    # each other on every alternation between the loss (numpy) and L-BFGS-B (scipy) — 10x slower on 2 cores.
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(loss, theta0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = res.x.reshape(n_classes, d + 1)
    W = theta[:, :-1] / domain.width
    return LinearCopy(W, theta[:, -1] - W @ domain.low)


class _Scaled(nn.Module):
    """Maps raw inputs to [0, 1] inside the net, so gradients and queries stay in the victim's units."""

    low: torch.Tensor
    width: torch.Tensor

    def __init__(self, domain: Domain) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor(domain.low, dtype=torch.float32))
        self.register_buffer("width", torch.tensor(domain.width, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.low) / self.width


class MLPCopy:
    def __init__(self, net: nn.Module, n_classes: int) -> None:
        self.net = net.eval()
        self.n_classes = int(n_classes)

    def _logits(self, X: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = self.net(torch.as_tensor(np.asarray(X, dtype=np.float32)))
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._logits(X).argmax(dim=1).numpy().astype(np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return torch.softmax(self._logits(X), dim=1).double().numpy()

    def logit_gradient(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """d logit[label] / d x for each row, in raw input units."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float32)).requires_grad_(True)
        idx = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        picked = self.net(x).gather(1, idx[:, None]).sum()
        # autograd.grad, not backward(): the snapshot's parameters must not collect gradients.
        (grad,) = torch.autograd.grad(picked, x)
        return grad.double().numpy()


def train_mlp(
    X: np.ndarray,
    targets: np.ndarray,
    *,
    n_classes: int,
    domain: Domain,
    hidden: Sequence[int] = (64,),
    epochs: int = 60,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    init: MLPCopy | None = None,
) -> MLPCopy:
    """Adam on cross-entropy; ``targets`` are labels [n] or probability rows [n, k] (soft targets).

    ``init`` warm-starts from an earlier copy (which is left untouched), so a copy refreshed after every
    batch needs only a few epochs. Seeds are taken inside ``torch.random.fork_rng`` so training never
    disturbs the caller's global torch RNG.
    """
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    targets = np.asarray(targets)
    soft = targets.ndim == 2
    Yt = torch.as_tensor(targets.astype(np.float32 if soft else np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if init is not None:
            net = _copy.deepcopy(init.net)
        else:
            layers: list[nn.Module] = [_Scaled(domain)]
            width = domain.n_features
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, n_classes))
            net = nn.Sequential(*layers)
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(Xt), generator=gen)
            for start in range(0, len(Xt), batch_size):
                idx = order[start : start + batch_size]
                logits = net(Xt[idx])
                if soft:
                    loss = -(Yt[idx] * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
                else:
                    loss = nn.functional.cross_entropy(logits, Yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return MLPCopy(net, n_classes)


class MLPCopyAttack(Attack):
    """An attack whose copy is a torch MLP, trained from scratch on the first answers and refitted,
    warm-started, on all answers after every later batch (JBDA, Knockoff): the checks of the training
    keywords and the fit, in one place.

    ``batch_size``: queries per oracle call, and the refit cadence. ``hidden``: the MLP's widths. ``epochs``
    for the first fit, ``refit_epochs`` for each warm-started refit.
    """

    def __init__(self, *, domain: Domain, n_classes: int, budget: int, seed: int) -> None:
        super().__init__(budget=budget, seed=seed, n_classes=n_classes)
        if not isinstance(domain, Domain):
            raise ValueError("domain must be a Domain")
        self.domain = domain

    def _set_training(self, *, batch_size: int, hidden: Sequence[int], epochs: int, refit_epochs: int) -> None:
        """Check and keep the training keywords (each attack's constructor calls this after ``__init__``)."""
        self.batch_size = positive_int("batch_size", batch_size)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs = positive_int("epochs", epochs)
        self.refit_epochs = positive_int("refit_epochs", refit_epochs)

    def _fit(self, X: np.ndarray, targets: np.ndarray, init: MLPCopy | None, fit_no: int) -> MLPCopy:
        """The first fit (``init`` None) or a warm-started refit; ``fit_no`` varies the seed per fit."""
        assert self.n_classes is not None
        return train_mlp(
            X,
            targets,
            n_classes=self.n_classes,
            domain=self.domain,
            hidden=self.hidden,
            epochs=self.epochs if init is None else self.refit_epochs,
            seed=self.seed + fit_no,
            init=init,
        )
