"""The cross-client (colluding keys) test: a source network's clients pooled and tested with the engine."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.engine import DetectionEngine
from services.detector.service.groups import GroupConfig, GroupTester
from tests.unit.detector.conftest import Digits, Victim


def probe(victim: Victim, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equation-solving style probing: uniform random points of the input box."""
    x = np.random.default_rng(seed).uniform(0, 16, size=(n, 64))
    p = victim.proba(x)
    return x, p, p.argmax(axis=1)


def round_robin(n: int, keys: int) -> list[str]:
    return [f"key{i % keys}" for i in range(n)]


def test_ten_keys_splitting_a_probe_raise_a_group_alert_no_key_alone_does(
    engine: DetectionEngine, victim: Victim
) -> None:
    x, p, y = probe(victim, 100)
    owners = round_robin(100, 10)
    alone = [engine.new_client_state() for _ in range(10)]
    for k in range(10):  # 10 rows per key: under the first test at 20 queries
        rows = [i for i, o in enumerate(owners) if o == f"key{k}"]
        assert not engine.observe(alone[k], x[rows], p[rows], y[rows]).alert
    tester = GroupTester(engine)
    group = tester.new_state()
    verdict = tester.observe(group, owners, x, p, y)
    assert verdict.alert and verdict.assessment is not None
    assert verdict.members == tuple(sorted({f"key{k}" for k in range(10)}))
    assert verdict.not_pooled == {"single": 1}  # pooling starts with the network's second client
    assert verdict.pooled_rows == 99 and verdict.kept.size == 99
    # The same rows from two keys: the pool alerts, but two members are each one's own business.
    two = GroupTester(engine)
    assert not two.observe(two.new_state(), round_robin(100, 2), x, p, y).alert


def test_a_client_that_alerted_alone_leaves_the_pool_and_is_not_counted(
    engine: DetectionEngine, victim: Victim
) -> None:
    x, p, y = probe(victim, 100, seed=1)
    tester = GroupTester(engine, GroupConfig(min_members=3))
    group = tester.new_state()
    owners = round_robin(100, 3)
    verdict = tester.observe(group, owners, x, p, y, explained={"key2"})
    assert verdict.not_pooled["explained"] == owners.count("key2")
    assert "key2" not in verdict.members and not verdict.alert  # two counted members left
    assert group.members["key2"].explained and group.members["key2"].rows == 0


def test_member_cap_share_and_member_table_are_bounded(engine: DetectionEngine, victim: Victim) -> None:
    x, p, y = probe(victim, 200, seed=2)
    tester = GroupTester(engine, GroupConfig(min_members=3, min_share=0.8, member_cap=50, max_members=4))
    group = tester.new_state()
    # A bulk client sends 120 rows, three others 20 each, then a fifth client arrives with 20.
    owners = ["bulk"] * 120 + ["a"] * 20 + ["b"] * 20 + ["c"] * 20 + ["late"] * 20
    verdict = tester.observe(group, owners, x, p, y)
    assert verdict.not_pooled == {"single": 120, "members": 20}  # nobody else was there yet; table full
    assert {c: m.rows for c, m in group.members.items()} == {"bulk": 0, "a": 20, "b": 20, "c": 20}
    more = tester.observe(group, ["bulk"] * 60, x[:60], p[:60], y[:60])
    assert more.not_pooled == {"cap": 10}  # 50 rows at most from one member
    # An equal split of the 110 pooled rows is 27.5: a, b and c (20 each) are under 80 % of it, bulk is not.
    assert tester.counted(group) == ("bulk",)


def test_state_round_trips_through_bytes(engine: DetectionEngine, victim: Victim) -> None:
    x, p, y = probe(victim, 60, seed=3)
    tester = GroupTester(engine)
    group = tester.new_state()
    tester.observe(group, round_robin(60, 4), x, p, y, explained={"key3"})
    assert group.pooled is not None
    back = tester.state_from_parts(tester.members_to_bytes(group), engine.state_to_bytes(group.pooled))
    assert back.members == group.members
    assert back.pooled is not None and back.pooled.queries == group.pooled.queries
    with pytest.raises(ValueError, match="member table"):
        tester.state_from_parts(b"[1, 2]", None)


def test_fresh_benign_rows_of_ten_keys_raise_no_group_alert(
    engine: DetectionEngine, victim: Victim, digits: Digits
) -> None:
    x = digits.X_fresh
    p = victim.proba(x)
    tester = GroupTester(engine)
    verdict = tester.observe(tester.new_state(), round_robin(len(x), 10), x, p, p.argmax(axis=1))
    assert verdict.pooled_rows == len(x) - 1 and not verdict.alert


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        GroupConfig(min_members=1)
    with pytest.raises(ValueError):
        GroupConfig(min_share=1.5)


def test_splitting_over_more_keys_keeps_every_key_counted(engine: DetectionEngine, victim: Victim) -> None:
    """Fifty keys with 2 % of the pool each: an absolute share of 5 % would count none of them."""
    x, p, y = probe(victim, 200, seed=4)
    tester = GroupTester(engine)
    verdict = tester.observe(tester.new_state(), round_robin(200, 50), x, p, y)
    assert len(verdict.members) == 50 and verdict.alert
