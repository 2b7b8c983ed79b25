"""The population baseline: what the model's other clients send, learned online, so that a client whose
inputs differ from the owner's reference the way other customers' inputs do is not called out of
distribution.

Why: the OOD signal compares a client's queries with the owner's clean reference rows. Real customers'
capture devices differ from those rows (a finger over part of the digit, a cheap quantising sensor): on
the detection benchmark such clients were flagged by the OOD signal although dozens of other customers send
the same kind of image. Extraction probes (uniform noise, Jacobian steps, natural images of another domain)
are far from the reference *and* from other customers' traffic, unless the attacker's own keys supply that
traffic, which the rules below bound.

What is kept: a ring of ``capacity`` rows (in the OOD signal's feature space), at most ``per_client`` of
them from any one client (its first rows that find the client under the cap; the ring's turnover evicts the
oldest rows, so the population follows the traffic and forgets a client that left). A client's rows are
never used to explain its own queries.

How a query is explained: ``support_distance`` is the distance from the query to its nearest row among
``support`` *distinct* other clients (the ``support``-th smallest of the per-client nearest distances). The
OOD signal divides it by the same local scale of the reference as its own distance, and takes the smaller of
the two ratios: a query is far only when it is far from the reference and from what ``support`` other
clients send. Before ``min_clients`` distinct clients have rows in the ring (a fresh start, a restart) the
population explains nothing, and the detector is exactly the reference-only one.

What it takes to move it: an attacker's key adds at most ``per_client`` rows, and a query is explained only
by rows of ``support`` (default 5) distinct other keys that sit as close to it as the reference's own
neighbours sit to a benign row. Probes that are far from one another (uniform noise: in 64 or 784
dimensions two random points are far apart) explain nothing whatever their number; probes that cluster
(Jacobian steps around the same seed images) are explained once ``support`` colluding keys have sent such
rows, so the OOD signal is blind to them from then on; the sign-step signal, PRADA and the per-network group
test do not use the population (docs/detector.md: "Population baseline").
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import numpy as np

from audit.validation import positive_int

_CHUNK = 512  # queries compared with the ring at once: bounds the [rows, capacity] distance block


@dataclass(frozen=True, slots=True)
class PopulationConfig:
    """The service builds it from ``MODELCUSTODY_DETECTOR_POPULATION_*`` (same defaults; tested)."""

    capacity: int = 4096  # rows in the ring: ~500 clients at the cap; 12.8 MB at 784 float32 features
    per_client: int = 8  # rows of one client at a time: a key cannot fill the ring
    support: int = 5  # distinct other clients that must send rows as close as the reference's neighbours
    min_clients: int = 50  # warm-up: clients with rows in the ring before the population explains anything

    def __post_init__(self) -> None:
        positive_int("capacity", self.capacity)
        positive_int("per_client", self.per_client)
        positive_int("support", self.support)
        positive_int("min_clients", self.min_clients)
        if self.support > self.min_clients:
            raise ValueError("support cannot exceed min_clients")


@dataclass
class Population:
    """One model's population ring (not thread-safe: one detector worker's own)."""

    n_features: int
    config: PopulationConfig = field(default_factory=PopulationConfig)
    rows: np.ndarray = field(init=False)
    owners: np.ndarray = field(init=False)  # int64 owner code per row, -1 = empty slot
    _codes: dict[str, int] = field(init=False, default_factory=dict)  # client -> code, clients with rows only
    _counts: dict[int, int] = field(init=False, default_factory=dict)  # code -> rows in the ring
    _next_code: int = field(init=False, default=0)
    _pos: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        positive_int("n_features", self.n_features)
        self.rows = np.zeros((self.config.capacity, self.n_features), dtype=np.float32)
        self.owners = np.full(self.config.capacity, -1, dtype=np.int64)

    @property
    def clients(self) -> int:
        """Distinct clients with rows in the ring."""
        return len(self._counts)

    @property
    def active(self) -> bool:
        return self.clients >= self.config.min_clients

    def add(self, client: str, F: np.ndarray) -> int:
        """Offer a client's rows (features); returns how many were kept (none once it holds ``per_client``)."""
        code = self._codes.get(client)
        held = self._counts.get(code, 0) if code is not None else 0
        take = min(self.config.per_client - held, F.shape[0])
        if take <= 0:
            return 0
        if code is None:
            code = self._codes[client] = self._next_code
            self._next_code += 1
        for row in np.asarray(F[:take], dtype=np.float32):
            slot = self._pos
            self._pos = (slot + 1) % self.config.capacity
            old = int(self.owners[slot])
            if old >= 0:
                self._release(old)
            self.rows[slot] = row
            self.owners[slot] = code
            self._counts[code] = self._counts.get(code, 0) + 1
        return take

    def to_bytes(self, layout: str) -> bytes:
        """The ring as one ``.npz`` blob (no pickle), tagged with the OOD features' ``layout``: what a detector
        saves so that a restart does not warm up again (the service keeps it in Redis)."""
        names = sorted(self._codes, key=self._codes.__getitem__)
        buf = io.BytesIO()
        np.savez(
            buf,
            layout=np.asarray(layout),
            rows=self.rows,
            owners=self.owners,
            names=np.asarray(names, dtype=np.str_),
            codes=np.asarray([self._codes[n] for n in names], dtype=np.int64),
            cursor=np.asarray([self._pos, self._next_code], dtype=np.int64),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, n_features: int, config: PopulationConfig, layout: str) -> Population:
        """The ring saved by ``to_bytes``; ``ValueError`` when it does not fit this engine and configuration
        (another feature layout, width or capacity, or a damaged blob): the caller starts empty instead."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                saved, rows, owners = str(z["layout"]), z["rows"], z["owners"]
                names, codes, cursor = z["names"], z["codes"], z["cursor"]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"unreadable population snapshot: {exc}") from exc
        if saved != layout:
            raise ValueError(f"snapshot of another feature layout ({saved!r}, this engine {layout!r})")
        pop = cls(n_features, config)
        if rows.shape != pop.rows.shape or owners.shape != pop.owners.shape or names.shape != codes.shape:
            raise ValueError(f"snapshot shape {rows.shape} does not fit capacity x features {pop.rows.shape}")
        if cursor.shape != (2,) or not np.isfinite(rows).all():
            raise ValueError("damaged population snapshot")
        held, counts = np.unique(owners[owners >= 0], return_counts=True)
        code_set = set(codes.tolist())
        if held.size and (counts.max() > config.per_client or not set(held.tolist()) <= code_set):
            raise ValueError("snapshot breaks the per-client cap or names no client for a row")
        pop.rows[:] = rows
        pop.owners[:] = owners
        pop._counts = {int(c): int(n) for c, n in zip(held, counts, strict=True)}
        pop._codes = {str(n): int(c) for n, c in zip(names, codes, strict=True) if int(c) in pop._counts}
        pop._pos = int(cursor[0]) % config.capacity
        pop._next_code = max(int(cursor[1]), int(codes.max()) + 1 if codes.size else 0)
        return pop

    def _release(self, code: int) -> None:
        left = self._counts[code] - 1
        if left:
            self._counts[code] = left
            return
        # The client left the ring: forget it, so both maps stay bounded by the capacity.
        del self._counts[code]
        self._codes = {c: k for c, k in self._codes.items() if k != code}

    def support_distance(self, F: np.ndarray, client: str) -> np.ndarray:
        """Per query row: distance to the nearest row of the ``support``-th closest distinct other client
        (inf while the population is warming up or too few other clients have rows)."""
        n = F.shape[0]
        out = np.full(n, np.inf)
        k = self.config.support
        own = self._codes.get(client, -2)
        others = (self.owners >= 0) & (self.owners != own)
        if not self.active or np.unique(self.owners[others]).size < k:
            return out
        R = self.rows[others].astype(np.float64)
        owners = self.owners[others]
        r_sq = np.einsum("ij,ij->i", R, R)
        # The k-th distinct owner is among the nearest k x per_client rows (each owner holds at most per_client).
        m = min(k * self.config.per_client, R.shape[0])
        earlier = np.tri(m, m, -1, dtype=bool)  # (j, j'): j' comes before j
        for start in range(0, n, _CHUNK):
            block = np.asarray(F[start : start + _CHUNK], dtype=np.float64)
            d2 = np.einsum("ij,ij->i", block, block)[:, None] + r_sq[None, :] - 2.0 * (block @ R.T)
            near = np.argpartition(d2, m - 1, axis=1)[:, :m]
            near_d2 = np.take_along_axis(d2, near, axis=1)
            order = np.argsort(near_d2, axis=1)
            dist = np.take_along_axis(near_d2, order, axis=1)
            who = owners[np.take_along_axis(near, order, axis=1)]
            # A row brings a new owner when no nearer row has the same one; the k-th new owner's distance counts.
            repeat = np.any((who[:, :, None] == who[:, None, :]) & earlier[None], axis=2)
            distinct = np.cumsum(~repeat, axis=1)
            at = np.argmax(distinct >= k, axis=1)
            d = np.sqrt(np.maximum(dist[np.arange(len(at)), at], 0.0))
            out[start : start + len(at)] = np.where(distinct[:, -1] >= k, d, np.inf)
        return out
