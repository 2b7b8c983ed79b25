"""The engine end to end: every attack pattern alerts, benign clients do not; state, batching and
persistence do not change the answers; the state stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.detector.engine import DetectionEngine
from tests.unit.detector import streams
from tests.unit.detector.conftest import Digits, Victim


def attack_stream(name: str, digits: Digits, victim: Victim) -> np.ndarray:
    rng = np.random.default_rng(12)
    if name == "equation_solving":
        return streams.uniform(rng, 300)
    if name == "line_search":
        return streams.line_search(digits.X_fresh, victim.labels, rng, pairs=30)
    if name == "jbda":
        return streams.jbda(digits.X_fresh[:100], victim.labels, rounds=3)
    if name == "path_finding":
        return streams.feature_sweep(digits.X_fresh[3], pixels=range(64), values=(0.0, 5.0, 10.0, 15.0))
    if name == "critical_point_walk":
        return streams.line_walk(digits.X_fresh[5], rng, n=300, step=0.01)
    if name == "other_distribution":
        return streams.shifted(digits.X_fresh, 2)
    raise AssertionError(name)


# (attack, queries by which it must have alerted, a signal that must be among the fired ones)
ATTACKS = [
    ("equation_solving", 50, "ood"),
    ("line_search", 50, "boundary"),
    ("jbda", 400, "prada"),
    ("path_finding", 50, "sweep"),
    ("critical_point_walk", 50, "sweep"),
    ("other_distribution", 50, "ood"),
]


@pytest.mark.parametrize(("name", "within", "signal"), ATTACKS)
@pytest.mark.parametrize("label_only", [False, True])
def test_attacks_alert(
    name: str, within: int, signal: str, label_only: bool, engine: DetectionEngine, digits: Digits, victim: Victim
) -> None:
    X = attack_stream(name, digits, victim)
    P = victim.proba(X)
    assessments = streams.replay_engine(engine, X, None if label_only else P, P.argmax(1))
    first = streams.first_alert(assessments)
    assert first is not None and first <= within, f"{name}: first alert at {first}"
    fired = {s for a in assessments if a.alert for s in a.fired}
    assert signal in fired
    alert = next(a for a in assessments if a.alert)
    assert alert.level in ("medium", "high") and alert.technique == "AML.T0024"
    assert alert.to_dict()["signals"][0]["evidence"]  # plain numbers for the alert's evidence


@pytest.mark.parametrize("kind", ["fresh", "natural_long", "skewed", "retries_rescans", "label_only"])
def test_benign_clients_never_alert(kind: str, engine: DetectionEngine, digits: Digits, victim: Victim) -> None:
    rng = np.random.default_rng(13)
    X = digits.X_fresh[rng.permutation(len(digits.X_fresh))]
    if kind == "natural_long":
        X = digits.X_victim[rng.permutation(len(digits.X_victim))]
    elif kind == "skewed":
        X = np.vstack([streams.skewed(X, victim.labels(X), [1, 8]), streams.skewed(X, victim.labels(X), [3, 9])])
    elif kind == "retries_rescans":
        X = streams.with_retries(X, rng)
    P = victim.proba(X)
    assessments = streams.replay_engine(engine, X, None if kind == "label_only" else P, P.argmax(1))
    assert assessments, "long enough to be tested"
    assert not any(a.alert for a in assessments)
    assert max(a.risk_score for a in assessments) < engine.thresholds.alert  # type: ignore[union-attr]
    assert all(a.level == "low" for a in assessments)


def test_answers_do_not_depend_on_batching_or_serialisation(
    engine: DetectionEngine, digits: Digits, victim: Victim
) -> None:
    X = np.vstack([digits.X_fresh[:200], streams.uniform(np.random.default_rng(14), 100)])
    P = victim.proba(X)
    y = P.argmax(1)
    ref = streams.replay_engine(engine, X, P, y, batch=10, roundtrip=False)
    odd = streams.replay_engine(engine, X, P, y, batch=7, roundtrip=True)  # tested at the same query counts
    schedule = [*engine.early_tests, *range(50, 301, 50)]
    assert [a.tested_at for a in ref] == [a.tested_at for a in odd] == schedule
    np.testing.assert_allclose([a.risk_score for a in ref], [a.risk_score for a in odd], rtol=1e-9)
    # One batch spanning several test points is tested at each and reports the riskiest.
    state = engine.new_client_state()
    big = engine.observe(state, X, P, y)
    assert big.risk_score == pytest.approx(max(a.risk_score for a in ref)) and state.evaluations == len(schedule)
    # A batch that reaches no test point carries the last score without testing.
    quiet = engine.observe(state, X[:10], P[:10], y[:10])
    assert not quiet.evaluated and not quiet.alert and quiet.risk_score == state.last_score
    assert quiet.tested_at is None and quiet.queries_seen == 310


def test_save_load_roundtrip(engine: DetectionEngine, digits: Digits, victim: Victim, tmp_path: Path) -> None:
    engine.save(tmp_path / "baseline")
    assert sorted(p.name for p in (tmp_path / "baseline").iterdir()) == ["baseline.npz", "engine.json"]
    loaded = DetectionEngine.load(tmp_path / "baseline", reference_model=victim.proba)
    assert loaded.signal_names == engine.signal_names and loaded.thresholds == engine.thresholds
    X = streams.line_search(digits.X_fresh, victim.labels, np.random.default_rng(15), pairs=15)
    y = victim.labels(X)
    a = streams.replay_engine(engine, X, None, y)
    b = streams.replay_engine(loaded, X, None, y)
    assert [x.risk_score for x in a] == [x.risk_score for x in b]
    # A state written by one is readable by the other (same layout).
    state = engine.new_client_state()
    engine.observe(state, X[:120], None, y[:120])
    assert loaded.state_from_bytes(engine.state_to_bytes(state)).queries == 120


def test_state_is_bounded_and_refuses_foreign_blobs(engine: DetectionEngine, digits: Digits, victim: Victim) -> None:
    X = np.vstack([digits.X_victim, digits.X_fresh, digits.X_ref])
    P = victim.proba(X)
    state = engine.new_client_state()
    sizes = []
    for rep in range(4):  # ~7,000 queries
        engine.observe(state, X, P, P.argmax(1), now=float(rep))
        sizes.append(len(engine.state_to_bytes(state)))
    # Only the JSON header's counters may change length (a digit more); the arrays have stopped growing.
    assert abs(sizes[-1] - sizes[-2]) <= 16 and sizes[-1] < 150_000
    with pytest.raises(ValueError):
        engine.state_from_bytes(b"garbage")
    with pytest.raises(ValueError, match="bytes"):
        engine.state_from_bytes("text")
    other = DetectionEngine(engine.signals, engine.thresholds, n_features=64, n_classes=10, eval_every=25)
    with pytest.raises(ValueError, match="layout"):
        other.state_from_bytes(engine.state_to_bytes(state))


def test_inputs_are_validated_and_sanitised(engine: DetectionEngine, digits: Digits, victim: Victim) -> None:
    state = engine.new_client_state()
    with pytest.raises(ValueError, match="X must be"):
        engine.observe(state, np.zeros((5, 63)), None, np.zeros(5))
    with pytest.raises(ValueError, match="outputs"):
        engine.observe(state, np.zeros((5, 64)), np.zeros((5, 3)), np.zeros(5))
    X = digits.X_fresh[:50].copy()
    X[0, 0], X[1, 1] = np.nan, np.inf  # a client's garbage must not crash the detector
    labels = victim.labels(np.nan_to_num(X, posinf=0.0))
    labels[:5] = -1  # failed requests: no answer
    a = engine.observe(state, X, None, labels)
    assert a.evaluated and np.isfinite(a.risk_score)
