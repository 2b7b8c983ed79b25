"""The shared attack protocol: budgets, answer handling, validation, determinism, snapshot copies."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline

from services.demo.redteam import (
    AdaptiveRetraining,
    Attack,
    BudgetExceeded,
    Domain,
    EquationSolving,
    JacobianAugmentation,
    Knockoff,
    LowdMeek,
    OracleError,
    Progress,
    TreePathFinding,
)
from services.demo.redteam.base import QuerySession
from tests.unit.demo.redteam.conftest import Split


def test_domain_validates_and_samples_inside() -> None:
    with pytest.raises(ValueError, match="high > low"):
        Domain(np.zeros(3), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="equal length"):
        Domain(np.zeros(3), np.ones(2))
    dom = Domain.of(np.array([[0.0, 5.0], [2.0, 5.0]]))  # the constant feature still gets a width
    assert dom.width.tolist() == [2.0, 1.0]
    X = Domain.box(0, 16, 64).uniform(np.random.default_rng(0), 500)
    assert X.shape == (500, 64) and X.min() >= 0 and X.max() <= 16


def test_session_enforces_budget_and_normalises_answers() -> None:
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    s = QuerySession(lambda X: probs[: len(X)], budget=3, needs="labels", n_classes=2)
    assert s.ask(np.zeros((2, 4))).tolist() == [1, 0]  # a label attack takes the argmax of probabilities
    with pytest.raises(BudgetExceeded):
        s.ask(np.zeros((2, 4)))
    assert s.used == 2 and s.remaining == 1

    needs_probs = QuerySession(lambda X: np.zeros(len(X)), budget=10, needs="probabilities", n_classes=None)
    with pytest.raises(OracleError, match="label-only"):
        needs_probs.ask(np.zeros((2, 4)))
    bad_rows = QuerySession(lambda X: np.zeros(len(X) + 1), budget=10, needs="labels", n_classes=2)
    with pytest.raises(OracleError, match="rows"):
        bad_rows.ask(np.zeros((2, 4)))
    out_of_range = QuerySession(lambda X: np.full(len(X), 7), budget=10, needs="labels", n_classes=2)
    with pytest.raises(OracleError, match="0..2-1"):
        out_of_range.ask(np.zeros((2, 4)))
    column = QuerySession(lambda X: np.ones((len(X), 1)), budget=10, needs="labels", n_classes=2)
    assert column.ask(np.zeros((2, 4))).tolist() == [1, 1]  # a [n, 1] label column is accepted


DIGITS = Domain.box(0, 16, 64)
SEEDS = np.zeros((10, 64))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: EquationSolving(domain=DIGITS, budget=0), "budget"),
        (lambda: EquationSolving(domain=DIGITS, budget=10, min_probability=0.9), "min_probability"),
        (lambda: EquationSolving(domain=DIGITS, budget=10, seed=-1), "seed"),
        (lambda: AdaptiveRetraining(domain=DIGITS, n_classes=10, budget=5, rounds=6), "rounds"),
        (lambda: AdaptiveRetraining(domain=DIGITS, n_classes=10, budget=50, sampler="grid"), "sampler"),
        (lambda: AdaptiveRetraining(domain=DIGITS, n_classes=1, budget=50), "n_classes"),
        (lambda: LowdMeek(domain=DIGITS, n_classes=2, positive_label=2, budget=50), "positive_label"),
        (lambda: LowdMeek(domain=DIGITS, n_classes=2, positive_label=1, budget=50, epsilon=0), "epsilon"),
        (lambda: LowdMeek(domain=DIGITS, n_classes=2, positive_label=1, budget=50, seed_points=np.zeros((3, 5))), "64"),
        (lambda: JacobianAugmentation(seed_set=SEEDS, domain=DIGITS, n_classes=10, budget=5), "larger than the budget"),
        (lambda: JacobianAugmentation(seed_set=SEEDS, domain=DIGITS, n_classes=10, budget=50, step=2.0), "step"),
        (lambda: JacobianAugmentation(seed_set=SEEDS, domain=DIGITS, n_classes=10, budget=50, hidden=()), "hidden"),
        (lambda: Knockoff(pool=SEEDS[:1], domain=DIGITS, n_classes=10, budget=50), "pool"),
        (lambda: Knockoff(pool=SEEDS, domain=DIGITS, n_classes=10, budget=50, transform=3), "transform"),  # type: ignore[arg-type]
        (lambda: TreePathFinding(domain=DIGITS, n_classes=10, budget=50, epsilon=0.0), "epsilon"),
        (
            lambda: TreePathFinding(domain=DIGITS, n_classes=10, budget=50, start_points=np.full((2, 64), np.nan)),
            "finite",
        ),
    ],
)
def test_constructors_reject_bad_keywords(make: Callable[[], Attack], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        make()


def _attacks(digits: Split) -> list[Attack]:
    """One small instance of every attack, for protocol checks (not for fidelity)."""
    return [
        EquationSolving(domain=digits.domain, budget=120, batch_size=50),
        AdaptiveRetraining(domain=digits.domain, n_classes=10, budget=300, rounds=3),
        LowdMeek(domain=digits.domain, n_classes=10, positive_label=3, budget=150, seed_points=digits.X_pool),
        JacobianAugmentation(
            seed_set=digits.X_pool[:30], domain=digits.domain, n_classes=10, budget=150, batch_size=40
        ),
        Knockoff(pool=digits.X_pool, domain=digits.domain, n_classes=10, budget=150, batch_size=60, epochs=5),
        TreePathFinding(domain=digits.domain, n_classes=10, budget=300),
    ]


def test_every_attack_respects_its_budget_and_is_reproducible(
    digits: Split, softmax_victim: Pipeline, mlp_victim: MLPClassifier
) -> None:
    for attack in _attacks(digits):
        oracle = softmax_victim.predict_proba if attack.needs == "probabilities" else mlp_victim.predict
        sent: list[np.ndarray] = []

        def counting(
            X: np.ndarray, oracle: Callable[[np.ndarray], np.ndarray] = oracle, sent: list[np.ndarray] = sent
        ) -> np.ndarray:
            sent.append(X.copy())
            return oracle(X)

        steps = list(attack.steps(counting))
        used = [p.queries_used for p in steps]
        assert used == sorted(used) and 0 < used[-1] <= attack.budget, type(attack).__name__
        assert used[-1] == sum(len(X) for X in sent)
        # A Progress reports exactly the batch sent since the previous one.
        assert sum(len(p.queries) for p in steps) == used[-1]
        replay = list(attack.steps(oracle))
        assert [p.queries_used for p in replay] == used
        np.testing.assert_array_equal(np.vstack([p.queries for p in replay]), np.vstack(sent))
        np.testing.assert_array_equal(replay[-1].copy.predict(digits.X_test), steps[-1].copy.predict(digits.X_test))


def test_a_yielded_copy_is_a_snapshot(digits: Split, mlp_victim: MLPClassifier, softmax_victim: Pipeline) -> None:
    for attack in _attacks(digits)[1:5:3]:  # adaptive (warm-started L-BFGS) and Knockoff (warm-started torch)
        it = attack.steps(mlp_victim.predict)
        first = next(it)
        before = first.copy.predict_proba(digits.X_test)
        last = [first, *it][-1]
        assert last.queries_used > first.queries_used
        np.testing.assert_array_equal(first.copy.predict_proba(digits.X_test), before)


def test_run_reports_every_step_and_oracle_errors_propagate(digits: Split, softmax_victim: Pipeline) -> None:
    seen: list[Progress] = []
    last = EquationSolving(domain=digits.domain, budget=100, batch_size=25).run(
        softmax_victim.predict_proba, seen.append
    )
    assert [p.queries_used for p in seen] == [25, 50, 75, 100] and last is seen[-1]

    def blocked_after_50(X: np.ndarray, count: list[int] = [0]) -> np.ndarray:  # noqa: B006 - a call counter
        count[0] += len(X)
        if count[0] > 50:
            raise PermissionError("403: client blocked")
        return softmax_victim.predict_proba(X)

    got: list[Progress] = []
    with pytest.raises(PermissionError):
        for p in EquationSolving(domain=digits.domain, budget=100, batch_size=25).steps(blocked_after_50):
            got.append(p)
    assert got[-1].queries_used == 50  # what the attacker holds when the gateway cuts it off
