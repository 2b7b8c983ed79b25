"""Dataset inference (Blind Walk or MinGD), calibrated on null models: did a suspect learn from the owner's data?

Maini, Yaghini, Papernot, "Dataset Inference: Ownership Resolution in Machine Learning", ICLR 2021. The owner
embeds private training samples S and public samples S0 (same distribution, never trained on) by their Blind
Walk distances (``audit.blind_walk``), trains a small confidence regressor to tell S from S0 on its own model,
and at audit time compares the regressor's scores on m revealed private vs m public samples of the suspect with
a one-sided Welch t-test: a suspect that learned from S gives its samples larger margins, as the owner does.

Where this differs from the paper and its code, and why (docs/design.md "Blind Walk as published, measured here";
docs/research.md
"Audit: regressor and test" to "Audit: dataset inference limitations"):

- **One row per image, split by image.** The official notebooks reshape the feature tensor so that each "sample"
  mixes ~30 images and every image sits on both sides of the regressor/test split (research §1.9(1)). Here a
  sample is one image; the regressor-training images and the revealed test images are disjoint (by id, per side).
- **Features are normalised per sample and per direction by null models.** The owner supplies null models
  (independent models trained on data disjoint from S and S0). Every model walks the same directions from a
  sample, so ``log d_k(x) − mean over reference models of log d_k(x)`` removes how hard the sample and the
  direction are for *any* model, leaving how much further *this* model's label holds. On digits MLPs the raw
  private-vs-public difference was mostly sample difficulty (null models' uncalibrated t-statistics centred
  near +0.6 on a fixed sample draw) and the normalisation raised the owner model's held-out AUC from 0.53 to
  0.57. The regressor features are, per noise family, the mean normalised log-distance, plus (when
  ``use_correctness``) the suspect's correctness on x minus the null models' mean correctness. The regressor is
  an L2 logistic regression (label 1 = private) whose weights are constrained to be >= 0: every feature is
  oriented so that membership raises it, and with a weak signal an unconstrained fit on 2 × 100 samples gave some
  features negative weights by chance (owner's mean t 1.9-2.2 unconstrained vs 2.35-2.55 constrained, 4 draws).
  A handful of non-negative weights cannot learn much beyond "larger normalised margins on private samples",
  which is the design point: the larger regressor measured in docs/design.md learned sample difficulty instead.
  Sorting raw
  distances (as the paper's MinGD notebooks do) is not needed: averaging within a family is already invariant to
  the order of the exchangeable directions.
- **The decision is calibrated on an empirical null.** The t-test assumes the revealed private and public
  samples are exchangeable draws under H0; they are a fixed draw, so an independent model can differ on them
  by chance and the t-test then claims too often (docs/design.md records 14-20% false claims at m = 50). The same
  Welch t-statistic is computed for each null model, and the calibrated p-value is its conformal rank:
  ``p_cal = (1 + #{null models with t >= the suspect's t}) / (1 + n_null)``. Every model is normalised by the
  models outside its **data group**: the suspect by every null, a null by the suspect and the nulls trained on
  other data (``null_groups``; ``audit.null_models`` trains nulls on disjoint parts of the reference rows). With
  one null per group (every null on its own draw) the n + 1 statistics are exchangeable under H0 and
  P(p_rank <= α) <= α exactly. Nulls that share data are not exchangeable with a suspect that brings data of its
  own: normalised by each other they cancel their common data set's imprint, which the suspect's statistic
  keeps, so their spread understated a suspect's (docs/audits.md "Dataset inference's false claims on digits":
  0.10 false claims on one digits registration). Normalising a null by the other groups only makes it an
  outsider to its reference, as the suspect is. The rank has a floor of 1/(1 + n_null) (0.048 with 20 nulls), so
  with 10 or more null models in 3 or more groups the decision uses a **parametric null** instead: a normal
  fitted to the null models' t-statistics with a one-way random-effects prediction interval over the data
  groups (the between-group spread is what a suspect on new data adds), checked by a Shapiro-Wilk test that is
  reported (``null_fit``; ``audit.di_statistics.parametric_null``). Its prediction variance also allows for the
  shift a model on **another party's data** brings, which the owner's reference rows cannot show
  (``between_data_sd``, 1 in units of t, measured on digits: docs/benchmarks.md "An allowance for another
  party's data"). When Shapiro-Wilk rejects the fit, or there are too few nulls or groups, there is **no
  calibrated null** and the audit is inconclusive: the rank p-value (still reported) assumes the suspect
  exchangeable with the nulls, which a model on other data is not (on digits it made 8 of one registration's 20
  false claims).
- **Decision.** ``claimed`` when the Welch t-test AND the calibration both give p < α; ``not claimed`` when
  both give p >= α; ``inconclusive`` when there is no calibrated null (no accepted parametric fit: fewer than 10
  null models or 3 data groups, or Shapiro-Wilk rejects it) or when the two tests disagree
  (borderline: the naive test says "stolen" but null models produce such statistics too, or the reverse).
  ``p_value`` = max(t-test p, calibrated p), which is a valid p-value whenever either one is.
- **One test at one m**, not the harmonic mean of 100 subsampled p-values: the audit reveals the first m samples
  of a fixed, seeded order recorded in the artifacts.

**Two embeddings, one test.** The embedding is chosen by the config's type: ``BlindWalkConfig`` (black-box, label
queries; ``audit.blind_walk``) or ``MinGDConfig`` (white-box, the paper's MinGD: gradient-descent distances to every
other class in ℓ∞/ℓ2/ℓ1, sorted across targets; ``audit.mingd``). Everything after the embedding is shared: a
"family" is a noise family or a norm, a "direction" a random direction or a target rank, and the features, the
null normalisation (per sample and direction/rank), the regressor, the Welch t-test, the calibration, the
inconclusive rule and the split by image are the same code. One difference in the features: a MinGD family's
feature averages only its ``feature_ranks`` nearest targets (default the nearest, the sample's margin; the far
targets carried no membership signal on digits, ``MinGDConfig``). MinGD needs the suspect's ``nn.Module`` (a
``TorchModuleSuspect``: a safetensors file with a registered architecture, or an in-process model); the owner's
null models must be torch modules too. It sends no label queries (``queries_used`` 0) and reports the
(sample, target) rows that went through a gradient evaluation instead. The artifacts record which embedding
made them (``embedding`` in the JSON), and an audit runs the embedding its artifacts name.

What the owner stores (``DatasetInferenceArtifacts``, JSON + npz without pickle): the config, the seed, the
revealed samples themselves with their ids, the ids used for the regressor, the regressor's parameters, the
owner's and the null models' raw walk results on the revealed samples and the nulls' data groups (so a null
statistic can be recomputed for any m and with the suspect in the reference), and the owner's own statistic.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from audit.blind_walk import PRIVATE, PUBLIC, BlindWalkConfig, Embedding, directions, embed
from audit.configs import Progress
from audit.di_statistics import (
    CALIBRATION_NAME,
    CLAIMED,
    INCONCLUSIVE,
    NO_CALIBRATION,
    NOT_CLAIMED,
    PARAMETRIC_NAME,
    TTEST_NAME,
    Regressor,
    auc,
    decide,
    features,
    fit_regressor,
    statistic,
)
from audit.mingd import WHITE_BOX_NEEDED, MinGDConfig, MinGDEmbedding
from audit.null_models import train_null_models
from audit.suspects.base import BudgetExceeded, Suspect

__all__ = [
    "CLAIMED",
    "INCONCLUSIVE",
    "NOT_CLAIMED",
    "BlindWalkConfig",
    "DatasetInferenceArtifacts",
    "DatasetInferenceEvidence",
    "MinGDConfig",
    "prepare_owner",
    "run_dataset_inference",
    "train_null_models",
]

ARTIFACTS_VERSION = 1
MONOTONE = True  # non-negative regressor weights: see the module docstring
MIN_SAMPLES = 5  # per side and part: below this neither a regressor nor a t-test says anything
JSON_NAME, NPZ_NAME = "dataset_inference.json", "dataset_inference.npz"

EmbeddingConfig = BlindWalkConfig | MinGDConfig
EmbeddingName = Literal["blind_walk", "mingd"]
EMBEDDINGS: tuple[EmbeddingName, ...] = ("blind_walk", "mingd")
METHOD_NAMES = {"blind_walk": "dataset-inference-blind-walk", "mingd": "dataset-inference-mingd"}


def embedding_of(config: EmbeddingConfig) -> EmbeddingName:
    return "mingd" if isinstance(config, MinGDConfig) else "blind_walk"


def coerce_config(
    config: EmbeddingConfig | Mapping[str, Any] | None, embedding: EmbeddingName | None = None
) -> EmbeddingConfig:
    """A config object from an object or a dict; ``embedding`` picks the kind for a dict (Blind Walk when None)."""
    if embedding is not None and embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    if isinstance(config, BlindWalkConfig | MinGDConfig):
        if embedding is not None and embedding_of(config) != embedding:
            raise ValueError(f"a {type(config).__name__} is not a config for the {embedding} embedding")
        return config
    return MinGDConfig.coerce(config) if embedding == "mingd" else BlindWalkConfig.coerce(config)


def white_box_module(model: Suspect) -> Any:
    """The ``nn.Module`` behind a suspect that has one (``TorchModuleSuspect.module``), else ValueError."""
    from audit.suspects.safetensors_loader import TorchModuleSuspect

    if isinstance(model, TorchModuleSuspect):
        return model.module
    kind = model.identity.get("format") or model.identity.get("kind") or type(model).__name__
    raise ValueError(f"{WHITE_BOX_NEEDED} (this suspect is {kind}: it answers queries but exposes no gradients)")


def _no_progress(fraction: float, message: str) -> None:
    return None


# -- artifacts ----------------------------------------------------------------------------------------------

_ARRAYS = (
    "x_private",
    "y_private",
    "private_ids",
    "x_public",
    "y_public",
    "public_ids",
    "regressor_private_ids",
    "regressor_public_ids",
    "feature_mean",
    "feature_scale",
    "coef",
    "owner_log_distances",
    "owner_correct",
    "null_log_distances",
    "null_correct",
)
_OPTIONAL_ARRAYS = ("null_groups",)  # absent in files written before data groups (read as one group per null)


@dataclass
class DatasetInferenceArtifacts:
    """The owner's precomputed part of a dataset-inference audit. Rows of the walk arrays: the revealed
    private samples (in reveal order), then the revealed public samples. With a ``MinGDConfig`` the "walk" arrays
    hold MinGD log-distances (columns: norms × target ranks)."""

    config: EmbeddingConfig
    seed: int
    x_private: np.ndarray  # [n_rev, d] revealed private samples, in the order an audit reveals them
    y_private: np.ndarray
    private_ids: np.ndarray  # their row numbers in the owner's x_private (name their walk directions)
    x_public: np.ndarray
    y_public: np.ndarray
    public_ids: np.ndarray
    regressor_private_ids: np.ndarray  # rows the regressor was trained on: disjoint from the revealed ones
    regressor_public_ids: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    coef: np.ndarray
    intercept: float
    owner_log_distances: np.ndarray  # [2 n_rev, K]
    owner_correct: np.ndarray  # [2 n_rev]
    null_log_distances: np.ndarray  # [n_null, 2 n_rev, K]
    null_correct: np.ndarray  # [n_null, 2 n_rev]
    null_descriptions: list[str]
    owner: dict[str, Any] = field(default_factory=dict)  # the owner model's own statistic and diagnostics
    # the data group (disjoint data part) each null was trained on; a null is normalised by the other groups
    null_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    created_at: str = ""
    version: int = ARTIFACTS_VERSION

    @property
    def n_revealed(self) -> int:
        return len(self.x_private)

    @property
    def embedding(self) -> EmbeddingName:
        return embedding_of(self.config)

    @property
    def n_null(self) -> int:
        return len(self.null_log_distances)

    def __post_init__(self) -> None:
        if len(self.null_groups) == 0:  # artifacts from before data groups: every null on its own draw
            self.null_groups = np.arange(len(self.null_log_distances), dtype=np.int64)
        self.null_groups = np.asarray(self.null_groups, dtype=np.int64)

    @property
    def regressor(self) -> Regressor:
        return Regressor(self.feature_mean, self.feature_scale, self.coef, self.intercept)

    def validate(self) -> None:
        n, k = self.n_revealed, self.config.n_directions
        d = self.x_private.shape[1] if self.x_private.ndim == 2 else -1
        problems = []
        if n < 2 or self.x_public.shape != (n, d) or len(self.y_private) != n or len(self.y_public) != n:
            problems.append("revealed samples must be [n, d] on both sides with n >= 2 and one label each")
        if len(self.private_ids) != n or len(self.public_ids) != n:
            problems.append("one id per revealed sample")
        if (
            np.intersect1d(self.private_ids, self.regressor_private_ids).size
            or np.intersect1d(self.public_ids, self.regressor_public_ids).size
        ):
            problems.append("a revealed sample was also used to train the regressor")
        n_feat = len(self.config.families) + int(self.config.use_correctness)
        if not (self.feature_mean.shape == self.feature_scale.shape == self.coef.shape == (n_feat,)):
            problems.append(f"regressor parameters must have {n_feat} entries")
        if self.owner_log_distances.shape != (2 * n, k) or self.owner_correct.shape != (2 * n,):
            problems.append(f"owner walks must be [{2 * n}, {k}]")
        if self.null_log_distances.ndim != 3 or self.null_log_distances.shape[1:] != (2 * n, k):
            problems.append(f"null walks must be [n_null, {2 * n}, {k}]")
        elif self.null_correct.shape != self.null_log_distances.shape[:2] or self.n_null < 1:
            problems.append("null correctness must match the null walks, with at least one null model")
        if len(self.null_descriptions) != len(self.null_log_distances):
            problems.append("one description per null model")
        if len(self.null_groups) != len(self.null_log_distances):
            problems.append("one data group per null model")
        if problems:
            raise ValueError("invalid dataset-inference artifacts: " + "; ".join(problems))

    def save(self, directory: str | Path) -> Path:
        """``dataset_inference.json`` (config, seed, descriptions, owner statistic, the npz's SHA-256) and
        ``dataset_inference.npz`` (arrays; loadable with ``allow_pickle=False``)."""
        self.validate()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        arrays: dict[str, Any] = {name: np.asarray(getattr(self, name)) for name in (*_ARRAYS, *_OPTIONAL_ARRAYS)}
        np.savez_compressed(buf, **arrays)
        blob = buf.getvalue()
        (directory / NPZ_NAME).write_bytes(blob)
        meta = {
            "version": self.version,
            "method": METHOD_NAMES[self.embedding],
            "embedding": self.embedding,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "intercept": self.intercept,
            "null_descriptions": list(self.null_descriptions),
            "owner": self.owner,
            "created_at": self.created_at,
            "arrays": NPZ_NAME,
            "arrays_sha256": hashlib.sha256(blob).hexdigest(),
        }
        (directory / JSON_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DatasetInferenceArtifacts:
        directory = Path(directory)
        try:
            meta = json.loads((directory / JSON_NAME).read_text())
            blob = (directory / NPZ_NAME).read_bytes()
        except FileNotFoundError as exc:
            raise ValueError(f"no dataset-inference artifacts in {directory}: {exc.filename} is missing") from None
        if meta.get("version") != ARTIFACTS_VERSION:
            raise ValueError(f"artifacts version {meta.get('version')!r}, this code reads {ARTIFACTS_VERSION}")
        if hashlib.sha256(blob).hexdigest() != meta.get("arrays_sha256"):
            raise ValueError(f"{NPZ_NAME} does not match the SHA-256 recorded in {JSON_NAME}")
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            missing = set(_ARRAYS) - set(data.files)
            if missing:
                raise ValueError(f"{NPZ_NAME} lacks {sorted(missing)}")
            arrays: dict[str, Any] = {name: np.asarray(data[name]) for name in _ARRAYS}
            arrays.update({name: np.asarray(data[name]) for name in _OPTIONAL_ARRAYS if name in data.files})
        embedding = meta.get("embedding", "blind_walk")  # files written before MinGD existed are Blind Walk
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r} in {JSON_NAME}")
        config_cls = MinGDConfig if embedding == "mingd" else BlindWalkConfig
        out = cls(
            config=config_cls.from_dict(meta["config"]),
            seed=int(meta["seed"]),
            intercept=float(meta["intercept"]),
            null_descriptions=[str(s) for s in meta["null_descriptions"]],
            owner=dict(meta.get("owner") or {}),
            created_at=str(meta.get("created_at", "")),
            **arrays,
        )
        out.validate()
        return out


# -- owner preparation --------------------------------------------------------------------------------------


def _check_samples(name: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x_{name} must be a non-empty [n, d] array, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y_{name} must hold one label per row of x_{name}, got {y.shape} for {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x_{name} has non-finite values")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise ValueError(f"y_{name} must be integer class labels")
    return x, y.astype(np.int64)


def _sizes(n_private: int, n_public: int, config: EmbeddingConfig) -> tuple[int, int]:
    """(regressor samples, revealed samples) per side; half of what there is each when data is short."""
    available = min(n_private, n_public)
    n_rev = min(config.n_revealed, available // 2)
    n_reg = min(config.n_regressor, available - n_rev)
    if n_rev < MIN_SAMPLES or n_reg < MIN_SAMPLES:
        raise ValueError(
            f"dataset inference needs at least {2 * MIN_SAMPLES} private and {2 * MIN_SAMPLES} public samples "
            f"(regressor and revealed sets of >= {MIN_SAMPLES} each), got {n_private} and {n_public}"
        )
    return n_reg, n_rev


def _walk_both(
    model: Suspect,
    x_priv: np.ndarray,
    y_priv: np.ndarray,
    ids_priv: np.ndarray,
    x_pub: np.ndarray,
    y_pub: np.ndarray,
    ids_pub: np.ndarray,
    config: EmbeddingConfig,
    progress: Progress | None = None,
) -> Embedding | MinGDEmbedding:
    """One batched embedding of private rows then public rows, each with its own side's directions (Blind Walk);
    MinGD needs no directions: it descends toward every other class (``progress`` after each batch of rows)."""
    if isinstance(config, MinGDConfig):
        from audit.mingd import embed as mingd_embed

        x, y = np.vstack([x_priv, x_pub]), np.r_[y_priv, y_pub]
        return mingd_embed(white_box_module(model), x, y, config, progress=progress)
    dim = x_priv.shape[1]
    dirs = np.concatenate([directions(config, PRIVATE, ids_priv, dim), directions(config, PUBLIC, ids_pub, dim)])
    return embed(model, np.vstack([x_priv, x_pub]), np.r_[y_priv, y_pub], dirs, config)


def _null_groups(nulls: Sequence[Suspect], given: Sequence[int] | None) -> np.ndarray:
    """Integer data groups 0..G-1 of the nulls: ``given``, else their ``identity["data_part"]`` when every null
    has one, else one group per null."""
    if given is None:
        parts = [m.identity.get("data_part") for m in nulls]
        given = [int(p) for p in parts if p is not None]
        if len(given) != len(nulls):
            given = list(range(len(nulls)))
    raw = np.asarray(list(given)).reshape(-1)
    if len(raw) != len(nulls) or not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"null_groups must hold one integer per null model ({len(nulls)}), got {list(given)!r}")
    return np.unique(raw, return_inverse=True)[1].astype(np.int64)


def _describe(model: Suspect, i: int) -> str:
    ident = dict(model.identity)
    return str(ident.get("description") or ident.get("name") or json.dumps(ident, sort_keys=True) or f"null {i}")


def prepare_owner(
    owner: Suspect,
    x_private: np.ndarray,
    y_private: np.ndarray,
    x_public: np.ndarray,
    y_public: np.ndarray,
    *,
    null_models: Sequence[Suspect],
    config: EmbeddingConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    embedding: EmbeddingName | None = None,
    null_groups: Sequence[int] | None = None,
) -> DatasetInferenceArtifacts:
    """Embed, train the regressor, walk the null models, and record the owner's own statistic.

    ``x_private``: samples the owner model was trained on. ``x_public``: same distribution, never trained on by
    the owner, the null models or (to be fair) anyone the owner would accuse. ``null_models``: independent models
    trained on data disjoint from both; at α = 0.05 at least 20 are needed for a claim to be possible.
    ``seed`` draws which samples train the regressor and which are revealed, and in what order.
    ``config``/``embedding``: a ``BlindWalkConfig`` or a ``MinGDConfig`` (a dict is read as ``embedding`` says,
    Blind Walk by default). MinGD needs the owner and every null model as torch modules (``TorchModuleSuspect``,
    which ``train_null_models`` returns); its ``num_classes`` is read from the owner model when not given.
    ``null_groups``: the disjoint data part each null was trained on (nulls of one part share their data); None
    reads ``identity["data_part"]``, which ``train_null_models(parts=...)`` sets, and a null without one is its
    own group. A null is normalised by the other groups' nulls, and the calibration fits a null with the spread
    between groups (``audit.di_statistics.parametric_null``).
    """
    cfg = coerce_config(config, embedding)
    report = progress or _no_progress
    x_private, y_private = _check_samples("private", x_private, y_private)
    x_public, y_public = _check_samples("public", x_public, y_public)
    if x_private.shape[1] != x_public.shape[1]:
        raise ValueError(f"private and public samples differ in width: {x_private.shape[1]} vs {x_public.shape[1]}")
    if not isinstance(owner, Suspect):
        raise ValueError(f"owner must be a Suspect, got {type(owner).__name__}")
    nulls = list(null_models)
    if not nulls or not all(isinstance(m, Suspect) for m in nulls):
        raise ValueError("null_models must be a non-empty sequence of Suspects (20 or more to claim at α = 0.05)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    groups = _null_groups(nulls, null_groups)
    if cfg.clip and (
        x_private.min() < cfg.input_low
        or x_private.max() > cfg.input_high
        or x_public.min() < cfg.input_low
        or x_public.max() > cfg.input_high
    ):
        raise ValueError(f"samples lie outside the input box [{cfg.input_low}, {cfg.input_high}] the walks clip to")
    if isinstance(cfg, MinGDConfig):
        from audit.mingd import num_classes_of

        modules = [white_box_module(m) for m in [owner, *nulls]]  # ValueError now, before any work
        classes = num_classes_of(modules[0], x_private.shape[1])
        if cfg.num_classes is None:
            cfg = replace(cfg, num_classes=classes)
        for i, module in enumerate(modules):
            found = num_classes_of(module, x_private.shape[1])
            if found != cfg.num_classes:
                who = "the owner model" if i == 0 else f"null model {i}"
                raise ValueError(f"{who} has {found} output classes, the MinGD config says {cfg.num_classes}")
    n_reg, n_rev = _sizes(len(x_private), len(x_public), cfg)
    rng = np.random.default_rng(seed)
    perm_priv = rng.permutation(len(x_private))
    perm_pub = rng.permutation(len(x_public))
    reg_priv, rev_priv = perm_priv[:n_reg], perm_priv[n_reg : n_reg + n_rev]
    reg_pub, rev_pub = perm_pub[:n_reg], perm_pub[n_reg : n_reg + n_rev]
    ids_priv, ids_pub = np.r_[reg_priv, rev_priv], np.r_[reg_pub, rev_pub]
    started = time.perf_counter()

    walks: list[Embedding | MinGDEmbedding] = []
    models = [owner, *nulls]
    for i, model in enumerate(models):
        report(
            0.95 * i / len(models),
            "dataset inference: walking the owner model"
            if i == 0
            else f"dataset inference: walking null model {i} of {len(nulls)}",
        )
        walks.append(
            _walk_both(
                model,
                x_private[ids_priv],
                y_private[ids_priv],
                ids_priv,
                x_public[ids_pub],
                y_public[ids_pub],
                ids_pub,
                cfg,
            )
        )
    report(0.95, "dataset inference: training the regressor")
    log_d = np.stack([w.log_distances() for w in walks])  # [1 + n_null, 2(n_reg + n_rev), K]
    correct = np.stack([w.correct for w in walks]).astype(np.float64)
    n_side = n_reg + n_rev
    # row layout of a walk: private (regressor, revealed), then public (regressor, revealed)
    reg_rows = np.r_[np.arange(n_reg), n_side + np.arange(n_reg)]
    rev_rows = np.r_[n_reg + np.arange(n_rev), n_side + n_reg + np.arange(n_rev)]

    ref_log_d, ref_correct = log_d[1:].mean(axis=0), correct[1:].mean(axis=0)
    owner_features = features(log_d[0], correct[0], ref_log_d, ref_correct, cfg)
    regressor = fit_regressor(
        owner_features[reg_rows[:n_reg]], owner_features[reg_rows[n_reg:]], cfg.regressor_c, seed, MONOTONE
    )

    rev_log_d, rev_correct = log_d[:, rev_rows], correct[:, rev_rows]
    owner_stat = statistic(
        rev_log_d[0], rev_correct[0], rev_log_d[1:], rev_correct[1:], regressor, cfg, n_rev, groups
    )
    train_scores = regressor.score(owner_features[reg_rows])
    owner_summary = {
        "t_statistic": owner_stat.t,
        "p_value_ttest": owner_stat.p_ttest,
        "p_value_calibrated": owner_stat.p_calibrated,
        "p_value_null_parametric": owner_stat.p_parametric,
        "delta_mu": owner_stat.delta_mu,
        "m": n_rev,
        "p_value_rank": owner_stat.p_rank,
        "calibration": owner_stat.calibration,
        "null_fit": owner_stat.null_fit,
        "decision_at_0.05": decide(
            owner_stat.p_ttest, owner_stat.p_calibrated, len(nulls), 0.05, owner_stat.calibration
        )[0],
        "regressor_train_auc": auc(train_scores[:n_reg], train_scores[n_reg:]),
        "revealed_auc": auc(owner_stat.private_scores, owner_stat.public_scores),
        "null_t_statistics": owner_stat.null_t.tolist(),
        "null_data_groups": int(len(np.unique(groups))),
        "censored_share_owner": walks[0].censored_share,
        "censored_share_nulls": float(np.mean([w.censored_share for w in walks[1:]])),
        "accuracy_owner": {"private": float(correct[0, :n_side].mean()), "public": float(correct[0, n_side:].mean())},
        "queries_owner": walks[0].queries,
        "queries_per_model_calls": walks[0].calls,
        "n_regressor": n_reg,
        "n_revealed": n_rev,
        "seconds": time.perf_counter() - started,
    }
    if isinstance(walks[0], MinGDEmbedding):
        owner_summary["gradient_evaluations_owner"] = walks[0].gradient_evaluations
    artifacts = DatasetInferenceArtifacts(
        config=cfg,
        seed=seed,
        x_private=x_private[rev_priv].astype(np.float32),
        y_private=y_private[rev_priv],
        private_ids=rev_priv,
        x_public=x_public[rev_pub].astype(np.float32),
        y_public=y_public[rev_pub],
        public_ids=rev_pub,
        regressor_private_ids=reg_priv,
        regressor_public_ids=reg_pub,
        feature_mean=regressor.mean,
        feature_scale=regressor.scale,
        coef=regressor.coef,
        intercept=regressor.intercept,
        owner_log_distances=rev_log_d[0],
        owner_correct=rev_correct[0].astype(bool),
        null_log_distances=rev_log_d[1:],
        null_correct=rev_correct[1:].astype(bool),
        null_descriptions=[_describe(m, i) for i, m in enumerate(nulls)],
        owner=owner_summary,
        null_groups=groups,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    artifacts.validate()
    report(1.0, "dataset inference: owner artifacts ready")
    return artifacts


# -- the audit ----------------------------------------------------------------------------------------------


@dataclass
class DatasetInferenceEvidence:
    """What a dataset-inference audit found; ``to_dict`` is the report body."""

    decision: str
    reason: str
    p_value: float  # max(p_value_ttest, p_value_calibrated): the one the decision rests on
    p_value_ttest: float
    p_value_calibrated: float
    p_value_null_parametric: float | None
    t_statistic: float
    degrees_of_freedom: float
    delta_mu: float
    m: int
    alpha: float
    queries_used: int
    labels_calls: int
    n_null_models: int
    null_t_statistics: list[float]
    calibration_reachable: bool
    censored_share: float
    accuracy: dict[str, float]
    owner_reference: dict[str, Any]
    suspect: dict[str, str]
    parameters: dict[str, Any]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    embedding: EmbeddingName = "blind_walk"
    gradient_evaluations: int = 0  # MinGD: (sample, target) rows through a forward + backward pass
    private_scores: list[float] = field(default_factory=list)  # the suspect's regressor scores, for the report
    public_scores: list[float] = field(default_factory=list)
    p_value_rank: float | None = None  # the conformal rank p-value (floor 1/(1 + n_null))
    calibration: str = "none"  # "parametric" (p_value_calibrated is the fitted null's) or "none" (no fit accepted)
    null_fit: dict[str, Any] | None = None  # the normal fitted to the null t-statistics and its Shapiro-Wilk check

    @property
    def claimed(self) -> bool:
        return self.decision == CLAIMED

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD_NAMES[self.embedding],
            "embedding": self.embedding,
            "decision": self.decision,
            "reason": self.reason,
            "p_value": self.p_value,
            "p_value_note": "max of the t-test and the calibrated p-value; valid if either test is",
            "p_value_ttest": self.p_value_ttest,
            "p_value_calibrated": self.p_value_calibrated,
            "p_value_null_parametric": self.p_value_null_parametric,
            "p_value_rank": self.p_value_rank,
            "calibration": self.calibration,
            "null_fit": self.null_fit,
            "test": f"{TTEST_NAME}; {PARAMETRIC_NAME if self.calibration == 'parametric' else NO_CALIBRATION}",
            "tests": {
                "ttest": TTEST_NAME + f" (m = {self.m} per side, df = {self.degrees_of_freedom:.4g})",
                "calibrated": (PARAMETRIC_NAME if self.calibration == "parametric" else NO_CALIBRATION)
                + f" ({self.n_null_models} null models)",
                "rank": CALIBRATION_NAME + f": (1 + #null t >= t) / (1 + {self.n_null_models}); reported, not "
                "decided on",
                "null_parametric": PARAMETRIC_NAME,
            },
            "null_hypothesis": "the suspect did not learn from the owner's private samples: it is exchangeable with "
            "independent models trained on other data of the same distribution",
            "alpha": self.alpha,
            "t_statistic": self.t_statistic,
            "delta_mu": self.delta_mu,
            "delta_mu_note": "mean regressor score (logit) of revealed private minus public samples",
            "m": self.m,
            "queries_used": self.queries_used,
            "labels_calls": self.labels_calls,
            "gradient_evaluations": self.gradient_evaluations,
            "n_null_models": self.n_null_models,
            "null_t_statistics": list(self.null_t_statistics),
            "calibration_reachable": self.calibration_reachable,
            "censored_share": self.censored_share,
            "accuracy": dict(self.accuracy),
            "owner_reference": dict(self.owner_reference),
            "suspect": dict(self.suspect),
            "parameters": dict(self.parameters),
            "seconds": self.seconds,
            "notes": list(self.notes),
            "private_scores": list(self.private_scores),
            "public_scores": list(self.public_scores),
            "plots": self.plots(),
        }

    def plots(self) -> list[dict[str, Any]]:
        """What the HTML report draws: the two score distributions, and the suspect's t among the nulls'."""
        plots: list[dict[str, Any]] = []
        if self.private_scores and self.public_scores:
            plots.append(
                {
                    "kind": "histograms",
                    "title": f"Regressor scores of the suspect on {self.m} revealed private vs {self.m} public samples",
                    "series": {
                        "private (trained on)": self.private_scores,
                        "public (never trained on)": self.public_scores,
                    },
                    "x_label": "regressor score (logit)",
                }
            )
        if self.null_t_statistics:
            plots.append(
                {
                    "kind": "histograms",
                    "title": "Welch t of the suspect against the same statistic on the null models",
                    "series": {"null models": self.null_t_statistics, "suspect": [self.t_statistic]},
                    "x_label": "Welch t (private > public)",
                }
            )
        return plots


def run_dataset_inference(
    suspect: Suspect,
    artifacts: DatasetInferenceArtifacts,
    *,
    m: int | None = None,
    alpha: float = 0.05,
    progress: Progress | None = None,
) -> DatasetInferenceEvidence:
    """Walk the first ``m`` revealed private and public samples on the suspect and decide (module docstring).

    ``m`` defaults to every revealed sample. When the suspect has a query budget too small for the worst case
    (``config.max_queries_per_sample`` per sample), ``m`` is lowered to fit and a note says so;
    ``BudgetExceeded`` when not even m = 2 fits. With MinGD artifacts the suspect must expose its ``nn.Module``
    (ValueError otherwise, see ``WHITE_BOX_NEEDED``); it is sent no queries, so a budget does not apply.
    """
    started = time.perf_counter()
    if not isinstance(artifacts, DatasetInferenceArtifacts):
        raise ValueError(f"artifacts must be DatasetInferenceArtifacts, got {type(artifacts).__name__}")
    if not isinstance(suspect, Suspect):
        raise ValueError(f"suspect must be a Suspect, got {type(suspect).__name__}")
    artifacts.validate()
    if not (isinstance(alpha, float | int) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    n_rev = artifacts.n_revealed
    if m is None:
        m = n_rev
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 2 <= m <= n_rev:
        raise ValueError(f"m must be an integer in 2..{n_rev} (the revealed samples per side), got {m!r}")
    m = m_requested = int(m)
    cfg = artifacts.config
    notes: list[str] = []
    report = progress or _no_progress
    if isinstance(cfg, MinGDConfig):
        white_box_module(suspect)  # refuse a black-box suspect before anything else
    elif suspect.budget is not None:
        per_sample = cfg.max_queries_per_sample
        fits = (suspect.budget - suspect.queries_used) // (2 * per_sample)
        if fits < 2:
            raise BudgetExceeded(
                f"dataset inference needs up to {2 * 2 * per_sample} queries for m = 2 ({per_sample} per sample), "
                f"the suspect's budget leaves {suspect.budget - suspect.queries_used}"
            )
        if fits < m:
            notes.append(
                f"m lowered from {m} to {fits} so the worst case ({per_sample} queries per sample) fits "
                f"the budget of {suspect.budget}"
            )
            m = int(fits)
    report(0.0, f"dataset inference: embedding {2 * m} samples on the suspect")
    start_queries = suspect.queries_used
    emb = _walk_both(
        suspect,
        artifacts.x_private[:m].astype(np.float64),
        artifacts.y_private[:m],
        artifacts.private_ids[:m],
        artifacts.x_public[:m].astype(np.float64),
        artifacts.y_public[:m],
        artifacts.public_ids[:m],
        cfg,
        progress=lambda fraction, message: report(0.95 * fraction, message),
    )
    report(0.95, "dataset inference: testing")
    rows = np.r_[np.arange(m), n_rev + np.arange(m)]
    stat = statistic(
        emb.log_distances(),
        emb.correct.astype(np.float64),
        artifacts.null_log_distances[:, rows],
        artifacts.null_correct[:, rows].astype(np.float64),
        artifacts.regressor,
        cfg,
        m,
        artifacts.null_groups,
    )
    n_null = artifacts.n_null
    decision, reason = decide(stat.p_ttest, stat.p_calibrated, n_null, alpha, stat.calibration)
    if artifacts.owner.get("decision_at_0.05") not in (None, CLAIMED):
        notes.append(
            f"the owner's own model was '{artifacts.owner.get('decision_at_0.05')}' at preparation "
            f"(m = {artifacts.owner.get('m')}): this audit has little power against any suspect"
        )
    if emb.censored_share > 0.5:
        cap = f"{cfg.max_iter} gradient steps" if isinstance(cfg, MinGDConfig) else f"{cfg.max_distance}"
        notes.append(
            f"{emb.censored_share:.0%} of the suspect's walks never changed label up to {cap}: its embedding is "
            "mostly the cap"
        )
    report(1.0, f"dataset inference: {decision}")
    return DatasetInferenceEvidence(
        decision=decision,
        reason=reason,
        p_value=max(stat.p_ttest, stat.p_calibrated),
        p_value_ttest=stat.p_ttest,
        p_value_calibrated=stat.p_calibrated,
        p_value_null_parametric=stat.p_parametric,
        t_statistic=stat.t,
        degrees_of_freedom=stat.df,
        delta_mu=stat.delta_mu,
        m=m,
        alpha=float(alpha),
        queries_used=suspect.queries_used - start_queries,
        labels_calls=emb.calls,
        n_null_models=n_null,
        null_t_statistics=stat.null_t.tolist(),
        private_scores=[round(float(v), 6) for v in stat.private_scores],
        public_scores=[round(float(v), 6) for v in stat.public_scores],
        calibration_reachable=stat.calibration == "parametric",
        p_value_rank=stat.p_rank,
        calibration=stat.calibration,
        null_fit=stat.null_fit,
        censored_share=emb.censored_share,
        accuracy={"private": float(emb.correct[:m].mean()), "public": float(emb.correct[m:].mean())},
        owner_reference={
            k: artifacts.owner.get(k) for k in ("t_statistic", "delta_mu", "m", "revealed_auc", "decision_at_0.05")
        },
        suspect=dict(suspect.identity),
        parameters={
            "config": cfg.to_dict(),
            "seed": artifacts.seed,
            "m_requested": m_requested,
            "n_revealed": n_rev,
            "null_models": list(artifacts.null_descriptions),
        },
        seconds=time.perf_counter() - started,
        notes=notes,
        embedding=artifacts.embedding,
        gradient_evaluations=int(getattr(emb, "gradient_evaluations", 0)),
    )
