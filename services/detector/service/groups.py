"""Colluding keys (Sybil extraction): the clients of one source network pooled into one stream and tested.

An attacker who splits one extraction over many API keys keeps every key's own stream short and unremarkable;
pooled, the keys' queries are the attack again. The gateway records each request's source network (the
trusted proxy's client address, widened to /24 or /48: ``services/gateway/source.py``); the detector keeps one
pooled stream per (model, network) and tests it with the same ``DetectionEngine`` and thresholds as a
client's. The idea is FDINet's (Yang et al. 2023: colluding adversaries share a feature-space footprint that
one client's test misses); the grouping key here is the network, not an embedding clustering.

Pooling two clients' benign traffic is not one benign client's traffic, so three rules keep the group test's
false positives down (measured in ``bench/detection.py``, docs/detector.md "Colluding keys"):

- a client whose own stream alerted is *explained*: its rows leave the pool from then on and it does not
  count as a member (its own alert already names it);
- each member adds at most ``member_cap`` rows, so a bulk scorer cannot turn the pool into its own stream;
- an alert needs ``min_members`` members that each contributed at least ``min_share`` of an equal split of the
  pool (its rows over its members): a member that sent a handful of rows beside a bulk scorer does not make a
  coalition, while an attacker who splits over more keys keeps every key counted (an absolute share would let
  one that used more than 1 / share keys go unseen).

Pooling starts with a network's second client: the first client's earlier rows were its own stream only.
State is bounded: at most ``max_members`` members per group (rows of further clients are counted, not pooled)
and one engine state per group; the service bounds the number of groups.

This module holds no Redis: the detector service stores ``GroupState`` as bytes, and the benchmark calls the
same ``GroupTester`` in process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from services.core.settings import settings_section
from services.detector.engine import Assessment, ClientState, DetectionEngine

NOT_POOLED_REASONS = ("single", "members", "cap", "explained")


@dataclass(frozen=True)
class GroupConfig:
    min_members: int = 3
    min_share: float = 0.25
    member_cap: int = 500
    max_members: int = 64

    def __post_init__(self) -> None:
        if self.min_members < 2 or self.max_members < self.min_members:
            raise ValueError("need 2 <= min_members <= max_members")
        if not 0.0 < self.min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {self.min_share}")
        if self.member_cap < 1:
            raise ValueError("member_cap must be positive")

    @classmethod
    def from_settings(cls, settings: Any) -> GroupConfig:
        return settings_section(settings, "detector_group_", cls)


@dataclass
class Member:
    rows: int = 0  # rows this member added to the pool
    explained: bool = False  # alerted on its own: no longer pooled, not counted


@dataclass
class GroupState:
    members: dict[str, Member] = field(default_factory=dict)
    pooled: ClientState | None = None  # the engine state of the pooled stream; None until a second member


@dataclass(frozen=True)
class GroupVerdict:
    """The outcome of one ``observe``: the pooled test's assessment (None when nothing was pooled or tested)
    and whether it makes a group alert, with the members it counts."""

    assessment: Assessment | None
    alert: bool
    members: tuple[str, ...]  # counted members: not explained, each with min_share of an equal split or more
    pooled_rows: int  # the pool's rows after this call
    kept: np.ndarray  # indices of this call's rows that entered the pool
    not_pooled: dict[str, int]  # rows of this call left out, by reason (NOT_POOLED_REASONS)


class GroupTester:
    def __init__(self, engine: DetectionEngine, config: GroupConfig | None = None) -> None:
        self.engine = engine
        self.config = config or GroupConfig()

    def new_state(self) -> GroupState:
        return GroupState()

    def observe(
        self,
        group: GroupState,
        clients: Sequence[str],
        X: np.ndarray,
        outputs: np.ndarray | None,
        labels: np.ndarray,
        *,
        explained: frozenset[str] | set[str] = frozenset(),
        now: float | None = None,
    ) -> GroupVerdict:
        """Fold rows (in arrival order, ``clients[i]`` sent row i) into the group's pool and test it.

        ``explained``: clients whose own stream has alerted (from now on left out of the pool)."""
        cfg = self.config
        keep = np.zeros(len(clients), dtype=bool)
        not_pooled: Counter[str] = Counter()
        members = group.members
        for i, client in enumerate(clients):
            member = members.get(client)
            if member is None:
                if len(members) >= cfg.max_members:
                    not_pooled["members"] += 1
                    continue
                member = members[client] = Member()
            if client in explained:
                member.explained = True
            if member.explained:
                not_pooled["explained"] += 1
            elif len(members) < 2:
                not_pooled["single"] += 1
            elif member.rows >= cfg.member_cap:
                not_pooled["cap"] += 1
            else:
                member.rows += 1
                keep[i] = True
        assessment: Assessment | None = None
        if keep.any():
            if group.pooled is None:
                group.pooled = self.engine.new_client_state()
            rows = np.flatnonzero(keep)
            out = None if outputs is None else outputs[rows]
            assessment = self.engine.observe(group.pooled, X[rows], out, labels[rows], now=now)
        counted = self.counted(group)
        alert = assessment is not None and assessment.alert and len(counted) >= cfg.min_members
        pooled = group.pooled.queries if group.pooled is not None else 0
        return GroupVerdict(assessment, alert, counted, pooled, np.flatnonzero(keep), dict(not_pooled))

    def counted(self, group: GroupState) -> tuple[str, ...]:
        """Members that carry a group alert: not explained, each with at least ``min_share`` of an equal split
        of the rows the pool holds from such members."""
        active = {c: m.rows for c, m in group.members.items() if not m.explained and m.rows > 0}
        if not active:
            return ()
        floor = self.config.min_share * sum(active.values()) / len(active)
        return tuple(sorted(c for c, rows in active.items() if rows >= floor))

    # ------------------------------------------------------------------ storage
    def members_to_bytes(self, group: GroupState) -> bytes:
        return orjson.dumps({c: [m.rows, int(m.explained)] for c, m in group.members.items()})

    def state_from_parts(self, members: bytes | None, pooled: bytes | None) -> GroupState:
        """A group back from its stored parts; ``ValueError`` when they are corrupt."""
        try:
            raw = orjson.loads(members) if members else {}
            table = {str(c): Member(int(v[0]), bool(v[1])) for c, v in raw.items()}
        except (orjson.JSONDecodeError, AttributeError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"corrupt group member table: {exc}") from None
        state = self.engine.state_from_bytes(pooled) if pooled else None
        return GroupState(table, state)
