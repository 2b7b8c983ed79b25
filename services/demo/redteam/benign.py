"""Seeded benign clients: query streams that look like real users, the detector's false-positive side.

Each client draws natural held-out inputs (never synthetic ones) from a pool with their true labels and
sends them in batches. Profiles vary along the axes where real traffic differs from an i.i.d. sample,
because each is something a detector signal could mistake for an attack:
- order: ``shuffled`` (i.i.d. over the pool), ``skewed`` (a Zipf-like class prior: a user who mostly
  sends one kind of input — unlike the class-balanced coverage of an extraction attack), ``topical``
  (bursts of a few classes at a time, switching topic every so many queries);
- retries: the previous batch resent unchanged (a client retrying after a timeout);
- near-duplicates: an earlier input resent with tiny noise (the same document re-scanned) — small
  distances to earlier queries are what PRADA looks for;
- rates: a batch size range and exponential inter-arrival times with occasional long pauses (sessions).

Batches carry the delay to wait before sending them (``delay_s``) instead of sleeping: the caller decides
whether to replay in real time, accelerated, or not at all. Every client is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from audit.validation import positive_int
from services.demo.redteam.base import Domain, natural_points

Order = Literal["shuffled", "skewed", "topical"]
RowKind = Literal["fresh", "near_duplicate", "retry"]


@dataclass(frozen=True, slots=True)
class BenignProfile:
    order: Order = "shuffled"
    zipf_exponent: float = 1.5  # skewed: class at rank r has weight r^-s; 1.5 puts ~60 % on 2 of 10 classes
    topic_size: int = 2  # topical: classes per burst
    topic_length: int = 40  # topical: queries before the topic changes
    retry_rate: float = 0.02  # chance a batch is followed by its exact resend
    near_duplicate_rate: float = 0.05  # chance a row repeats a recent input with noise
    noise_scale: float = 0.01  # near-duplicate noise σ as a fraction of each feature's width
    batch_min: int = 1
    batch_max: int = 8
    mean_interval_s: float = 2.0  # mean delay between batches within a session
    session_break_rate: float = 0.02  # chance a delay is a break between sessions instead
    mean_break_s: float = 600.0

    def __post_init__(self) -> None:
        if self.order not in ("shuffled", "skewed", "topical"):
            raise ValueError(f"order must be shuffled, skewed or topical, got {self.order!r}")
        if self.zipf_exponent <= 0:
            raise ValueError(f"zipf_exponent must be > 0, got {self.zipf_exponent}")
        positive_int("topic_size", self.topic_size)
        positive_int("topic_length", self.topic_length)
        for name in ("retry_rate", "near_duplicate_rate", "session_break_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {self.noise_scale}")
        positive_int("batch_min", self.batch_min)
        if positive_int("batch_max", self.batch_max) < self.batch_min:
            raise ValueError(f"batch_max ({self.batch_max}) must be >= batch_min ({self.batch_min})")
        if self.mean_interval_s <= 0 or self.mean_break_s <= 0:
            raise ValueError("mean_interval_s and mean_break_s must be > 0")


@dataclass(frozen=True, slots=True, eq=False)  # array fields: == would be ambiguous
class BenignBatch:
    client_id: str
    X: np.ndarray  # [n, d] rows to send
    labels: np.ndarray  # [n] the rows' true labels (for analysis; never sent)
    kinds: np.ndarray  # [n] RowKind per row
    delay_s: float  # wait this long after the previous batch before sending this one


# How far back a near-duplicate or a retry reaches: users repeat what they sent recently.
RECENT = 20


class BenignClient:
    def __init__(
        self,
        *,
        pool: np.ndarray,
        labels: np.ndarray,
        domain: Domain,
        profile: BenignProfile | None = None,
        client_id: str = "benign-0",
        seed: int = 0,
        variation: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        family: str = "clean",
    ) -> None:
        """``pool``/``labels``: held-out natural inputs and their true classes (not queried).

        ``variation``: this client's capture device (e.g. ``ImageVariation.for_client``), applied to every
        fresh row before it is sent; ``family`` names it in reports.
        """
        self.pool = natural_points("pool", pool, domain)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.pool):
            raise ValueError(f"pool has {len(self.pool)} rows but labels {len(self.labels)}")
        self.domain = domain
        self.profile = profile or BenignProfile()
        self.client_id = client_id
        self.seed = int(seed)
        self.classes = np.unique(self.labels)
        self.variation = variation
        self.family = family

    def batches(self, n_queries: int) -> Iterator[BenignBatch]:
        """Yield batches until ``n_queries`` rows were sent (retries count: they are real queries)."""
        positive_int("n_queries", n_queries)
        p = self.profile
        rng = np.random.default_rng(self.seed)
        picker = self._picker(rng)
        recent: list[int] = []  # pool indices recently sent
        recent_rows: list[np.ndarray] = []  # the rows as sent (after this client's variation)
        captured: dict[int, np.ndarray] = {}  # pool index -> the row as this client's device captured it
        sent = 0
        previous: BenignBatch | None = None
        while sent < n_queries:
            if previous is not None and rng.random() < p.retry_rate:
                n = min(len(previous.X), n_queries - sent)
                # A retry follows its original after a client timeout: seconds, not the usual think time.
                batch = replace(
                    previous,
                    X=previous.X[:n],
                    labels=previous.labels[:n],
                    kinds=np.full(n, "retry"),
                    delay_s=float(rng.uniform(0.5, 5.0)),
                )
                previous = None  # one retry per batch
            else:
                n = min(int(rng.integers(p.batch_min, p.batch_max + 1)), n_queries - sent)
                rows, labels, kinds = [], [], []
                for _ in range(n):
                    if recent and rng.random() < p.near_duplicate_rate:
                        pick = int(rng.integers(len(recent)))
                        j = recent[pick]
                        noise = rng.normal(0.0, p.noise_scale * self.domain.width)
                        rows.append(self.domain.clip(recent_rows[pick] + noise))
                        kinds.append("near_duplicate")
                    else:
                        j = next(picker)
                        recent = [*recent[-(RECENT - 1) :], j]
                        row = self.pool[j]
                        if self.variation is not None:
                            # A document is captured once: sending it again (a bulk scorer going round its
                            # catalogue) resends the same bytes; re-scans are the near-duplicates above.
                            if j not in captured:
                                captured[j] = self.domain.clip(self.variation(row[None, :], rng)[0])
                            row = captured[j]
                        recent_rows = [*recent_rows[-(RECENT - 1) :], row]
                        rows.append(row)
                        kinds.append("fresh")
                    labels.append(self.labels[j])
                batch = BenignBatch(self.client_id, np.array(rows), np.array(labels), np.array(kinds), self._delay(rng))
                previous = batch
            sent += len(batch.X)
            yield batch

    def _delay(self, rng: np.random.Generator) -> float:
        p = self.profile
        if rng.random() < p.session_break_rate:
            return float(rng.exponential(p.mean_break_s))
        return float(rng.exponential(p.mean_interval_s))

    def _picker(self, rng: np.random.Generator) -> Iterator[int]:
        """Pool indices in the profile's order; each class's rows cycle without replacement."""
        p = self.profile
        by_class = {int(c): list(rng.permutation(np.flatnonzero(self.labels == c))) for c in self.classes}
        cursor = dict.fromkeys(by_class, 0)

        def take(c: int) -> int:
            rows = by_class[c]
            if cursor[c] == len(rows):  # every row of the class sent once: reshuffle and go round again
                rows[:] = list(rng.permutation(rows))
                cursor[c] = 0
            cursor[c] += 1
            return int(rows[cursor[c] - 1])

        if p.order == "shuffled":
            weights = np.array([len(by_class[int(c)]) for c in self.classes], dtype=np.float64)
            while True:
                yield take(int(rng.choice(self.classes, p=weights / weights.sum())))
        elif p.order == "skewed":
            ranked = rng.permutation(self.classes)  # which classes this user favours
            zipf = 1.0 / np.arange(1, len(ranked) + 1) ** p.zipf_exponent
            while True:
                yield take(int(rng.choice(ranked, p=zipf / zipf.sum())))
        else:
            size = min(p.topic_size, len(self.classes))
            while True:
                topic = rng.choice(self.classes, size=size, replace=False)
                for _ in range(p.topic_length):
                    yield take(int(rng.choice(topic)))


def benign_population(
    *,
    pool: np.ndarray,
    labels: np.ndarray,
    domain: Domain,
    n_clients: int,
    seed: int = 0,
) -> list[BenignClient]:
    """``n_clients`` clients with varied, seeded profiles; the orders rotate so every kind is present."""
    positive_int("n_clients", n_clients)
    rng = np.random.default_rng(seed)
    orders: tuple[Order, ...] = ("shuffled", "skewed", "topical")
    clients = []
    for i in range(n_clients):
        batch_min = int(rng.choice([1, 1, 4, 16]))  # mostly interactive users, some batch jobs
        profile = BenignProfile(
            order=orders[i % len(orders)],
            zipf_exponent=float(rng.uniform(1.0, 2.5)),
            topic_size=int(rng.integers(1, 4)),
            topic_length=int(rng.integers(20, 100)),
            retry_rate=float(rng.uniform(0.0, 0.1)),
            near_duplicate_rate=float(rng.uniform(0.0, 0.15)),
            noise_scale=float(rng.uniform(0.002, 0.02)),
            batch_min=batch_min,
            batch_max=batch_min * int(rng.integers(1, 5)),
            mean_interval_s=float(rng.lognormal(np.log(2.0), 1.0)),
        )
        clients.append(
            BenignClient(
                pool=pool,
                labels=labels,
                domain=domain,
                profile=profile,
                client_id=f"benign-{i}",
                seed=int(rng.integers(2**31)),
            )
        )
    return clients
