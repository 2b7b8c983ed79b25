"""Blind Walk embeddings: how far a suspect's label holds along random directions from a sample (label-only).

Maini, Yaghini, Papernot, "Dataset Inference: Ownership Resolution in Machine Learning", ICLR 2021, black-box
"Blind Walk": from a sample x, walk along a random noise direction δ until the suspect's label changes; the
distances over several directions are the sample's embedding, an average-case prediction margin. Official code
cleverhans-lab/dataset-inference ``src/attacks.py::rand_steps`` (read as a description; nothing is copied).

Where this differs from the official code, and why (docs/design.md "Blind Walk as published, measured here";
docs/research.md "Audit: Blind Walk", "Audit: dataset inference limitations"):

- **Search, not fixed steps.** The official walk takes up to 50 steps of a CIFAR-sized noise vector and records
  the cap when nothing changed; on an MNIST MLP 54-78% of walks never changed label, so most features were the
  cap. Here each direction is searched: exponential search (``initial_step``, doubling, up to ``max_distance``)
  then ``bisection_steps`` halvings of the bracket, about 16 queries for a distance known to within 1/128 of
  itself. A walk that reaches ``max_distance`` without a change is *censored* and recorded at the cap, with a
  flag, so the censored share can be reported.
- **Directions are unit-ℓ2 and distances are ℓ2.** The three noise families (uniform, Gaussian, Laplace, as in
  the official ℓ∞/ℓ2/ℓ1 walks) only shape the direction; every direction is scaled to unit ℓ2 norm and the
  distance is the ℓ2 length walked. The official code measures each family in its own norm, which multiplies a
  sample's distances by a random per-direction constant (‖δ‖∞/‖δ‖2 varies from draw to draw) that carries no
  information about the model.
- **Directions are a function of (seed, side, sample id)**, never of the model: the owner's model, the null
  models and every suspect walk exactly the same directions from a sample, so per-direction differences between
  models are meaningful (dataset inference normalises by them).
- **The label that must change is the suspect's own label at x**, not the ground truth (the official code stops
  at the first prediction ≠ y, so a misclassified sample walks 0). Whether the suspect's label at x equals y is
  returned separately (``correct``), a label-only membership signal of its own.
- **No clipping by default** (``clip``): probes are ``x + t·δ``, free to leave the input box; the official code
  clips to [0, 1]. Measured on a digits MLP (owner model vs 20 null models, 4 seeds of the sample draw, m = 150):
  clipped walks gave the owner's own statistic a mean Welch t of 1.5 (held-out AUC 0.50-0.56) against 2.4-2.5
  (AUC 0.54-0.60) unclipped. Clipped probes saturate: once every pixel a direction pushes has hit 0 or 1 the
  probe stops moving, so the distance says more about the box than about the model. Turn ``clip`` on for a
  suspect API that rejects out-of-range inputs. ``t`` is the length along the ray (monotone in the clipped path
  when clipping).
- **Batched.** Every exponential-search or bisection round of all active walks of all samples is one
  ``suspect.labels()`` call (split into ``batch_size`` rows), so an HTTP suspect sees ~16 requests per embedding
  job however many samples it has, instead of one per walk step.

A bisection finds *a* label change inside the bracket, not necessarily the first one along the ray (labels
along a ray need not change only once); with ``initial_step`` small against typical distances this rarely
matters, and it is the same rule for every model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from audit.configs import DatasetInferenceFields
from audit.suspects.base import Suspect
from audit.validation import clip_range

FAMILIES = ("uniform", "gaussian", "laplace")
PRIVATE, PUBLIC = 0, 1  # the "side" that, with the sample id and the seed, names a sample's directions


@dataclass(frozen=True)
class BlindWalkConfig(DatasetInferenceFields):
    """Every parameter of a Blind Walk dataset-inference audit. Defaults are for digits in [0, 1]^64, and why:

    - ``directions_per_family`` 10 × three families = 30 walks per sample: the official code's 10 per norm.
      20 per family doubled the queries without a consistent gain on digits.
    - ``initial_step`` 0.05 and ``max_distance`` 16.0 (ℓ2): typical unclipped flip distances on digits MLPs are
      2-8 (the diagonal of [0, 1]^64 is 8); a cap of 8 left 34% of walks censored, 16 left 21% at the same
      power, 32 left 15% with less power (far-away flips say little about the data). 0.05 is below the
      smallest flip distances measured (~0.2); 0.05·2^8 < 16 gives 10 exponential probes at most.
    - ``bisection_steps`` 6: the flip is then known to 1/128 of its distance (bracket [t/2, t] halved 6
      times), finer than the spread between models, for 16 queries per uncensored walk at most.
    - ``clip`` False (``input_low``/``input_high`` apply when it is on): see the module docstring.
    - ``input_low``, ``input_high``, ``batch_size`` (rows per ``labels()`` call) and the regressor's fields:
      ``DatasetInferenceFields``.
    """

    LABEL = "Blind Walk"
    TUPLE_FIELDS = ("families",)

    directions_per_family: int = 10
    families: tuple[str, ...] = FAMILIES
    initial_step: float = 0.05
    max_distance: float = 16.0
    bisection_steps: int = 6
    clip: bool = False
    direction_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_distinct_names("families", FAMILIES)
        self._require_positive_ints("directions_per_family")
        self._require_int_in("bisection_steps", 0, 30)
        if not (math.isfinite(self.initial_step) and math.isfinite(self.max_distance)):
            raise ValueError("initial_step and max_distance must be finite")
        if not 0.0 < self.initial_step <= self.max_distance:
            raise ValueError(f"need 0 < initial_step <= max_distance, got {self.initial_step}, {self.max_distance}")
        clip_range(self.clip, self.input_low, self.input_high)
        if isinstance(self.direction_seed, bool) or not isinstance(self.direction_seed, int) or self.direction_seed < 0:
            raise ValueError(f"direction_seed must be a non-negative integer, got {self.direction_seed!r}")

    @property
    def n_directions(self) -> int:
        return self.directions_per_family * len(self.families)

    @property
    def exponential_steps(self) -> int:
        """Probes the exponential search needs at most: initial_step·2^j below the cap, then the cap."""
        return math.ceil(math.log2(self.max_distance / self.initial_step) - 1e-12) + 1

    @property
    def max_queries_per_sample(self) -> int:
        """The worst case: the label at x, then every walk searching to the cap or bisecting fully."""
        return 1 + self.n_directions * (self.exponential_steps + self.bisection_steps)


def directions(config: BlindWalkConfig, side: int, sample_ids: Sequence[int] | np.ndarray, dim: int) -> np.ndarray:
    """Unit-ℓ2 directions [n, K, dim] for the samples ``sample_ids`` of ``side`` (PRIVATE or PUBLIC).

    A pure function of (``config.direction_seed``, side, id): the same for every model and every subset of
    samples. Families in ``config.families`` order, ``directions_per_family`` each.
    """
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
    k = config.directions_per_family
    out = np.empty((len(ids), config.n_directions, dim), dtype=np.float64)
    for row, sid in enumerate(ids):
        rng = np.random.default_rng([config.direction_seed, int(side), int(sid)])
        for j, family in enumerate(config.families):
            if family == "uniform":
                block = rng.uniform(-1.0, 1.0, size=(k, dim))
            elif family == "gaussian":
                block = rng.standard_normal((k, dim))
            else:
                block = rng.laplace(size=(k, dim))
            out[row, j * k : (j + 1) * k] = block
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return out / np.maximum(norms, 1e-12)


@dataclass
class Embedding:
    """Blind Walk results for n samples and K directions."""

    distances: np.ndarray  # [n, K] ℓ2 flip distance; the cap where censored
    censored: np.ndarray  # [n, K] bool: no label change up to max_distance
    labels: np.ndarray  # [n] the suspect's label at x
    correct: np.ndarray  # [n] bool: that label equals the sample's label
    queries: int  # rows sent to the suspect
    calls: int  # labels() calls made

    @property
    def censored_share(self) -> float:
        return float(self.censored.mean()) if self.censored.size else 0.0

    def log_distances(self) -> np.ndarray:
        return np.log(self.distances)


def embed(
    suspect: Suspect,
    x: np.ndarray,
    y: np.ndarray,
    dirs: np.ndarray,
    config: BlindWalkConfig,
    progress: Callable[[float, str], None] | None = None,
) -> Embedding:
    """Walk every direction of every sample; one batched ``labels()`` call per round (see module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x must be [n, d] with one label per row, got {x.shape} and {y.shape}")
    if dirs.shape[:1] != (len(x),) or dirs.ndim != 3 or dirs.shape[2] != x.shape[1]:
        raise ValueError(f"directions must be [n, K, {x.shape[1]}] for {len(x)} samples, got {dirs.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must be finite")
    n, k, d = dirs.shape
    start_queries = suspect.queries_used
    calls = 0

    def ask(points: np.ndarray) -> np.ndarray:
        nonlocal calls
        out = []
        for lo in range(0, len(points), config.batch_size):
            chunk = points[lo : lo + config.batch_size]
            answer = np.asarray(suspect.labels(chunk)).reshape(-1)
            calls += 1
            if len(answer) != len(chunk):
                raise ValueError(f"suspect returned {len(answer)} labels for {len(chunk)} inputs")
            out.append(answer)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    label0 = ask(x) if n else np.zeros(0, dtype=np.int64)
    origin = np.repeat(np.arange(n), k)
    ray = dirs.reshape(n * k, d)
    want = np.repeat(label0, k)
    walks = n * k
    lo = np.zeros(walks)
    hi = np.full(walks, np.inf)
    probe_t = np.full(walks, config.initial_step)
    bisected = np.zeros(walks, dtype=np.int64)
    censored = np.zeros(walks, dtype=bool)
    done = np.zeros(walks, dtype=bool)
    rounds_max = config.exponential_steps + config.bisection_steps
    for round_no in range(rounds_max + 1):
        active = np.flatnonzero(~done)
        if len(active) == 0:
            break
        searching = np.isinf(hi[active])
        t = np.where(searching, probe_t[active], 0.5 * (lo[active] + hi[active]))
        points = x[origin[active]] + t[:, None] * ray[active]
        if config.clip:
            points = np.clip(points, config.input_low, config.input_high)
        changed = ask(points) != want[active]

        exp_idx, exp_t, exp_changed = active[searching], t[searching], changed[searching]
        hi[exp_idx[exp_changed]] = exp_t[exp_changed]
        held, held_t = exp_idx[~exp_changed], exp_t[~exp_changed]
        lo[held] = held_t
        at_cap = held_t >= config.max_distance
        censored[held[at_cap]] = True
        probe_t[held[~at_cap]] = np.minimum(2.0 * held_t[~at_cap], config.max_distance)

        bis_idx, bis_t, bis_changed = active[~searching], t[~searching], changed[~searching]
        hi[bis_idx[bis_changed]] = bis_t[bis_changed]
        lo[bis_idx[~bis_changed]] = bis_t[~bis_changed]
        bisected[bis_idx] += 1
        done |= censored | (np.isfinite(hi) & (bisected >= config.bisection_steps))
        if progress is not None:
            progress(min(1.0, (round_no + 1) / rounds_max), f"blind walk: {int(done.sum())} of {walks} walks done")
    assert done.all(), "the walk schedule ended with unfinished walks"
    dist = np.where(censored, config.max_distance, 0.5 * (lo + hi))
    return Embedding(
        distances=dist.reshape(n, k),
        censored=censored.reshape(n, k),
        labels=label0.astype(np.int64),
        correct=label0 == y,
        queries=suspect.queries_used - start_queries,
        calls=calls,
    )
