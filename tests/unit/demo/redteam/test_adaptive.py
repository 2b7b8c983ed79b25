"""Label-only adaptive retraining of a softmax copy (Tramèr et al. §6.2)."""

from __future__ import annotations

from sklearn.pipeline import Pipeline

from services.demo.redteam import AdaptiveRetraining, fidelity
from tests.unit.demo.redteam.conftest import Split


def test_adaptive_retraining_copies_a_softmax_victim_from_labels(digits: Split, softmax_victim: Pipeline) -> None:
    attack = AdaptiveRetraining(domain=digits.domain, n_classes=10, budget=2000, rounds=10)
    steps = list(attack.steps(softmax_victim.predict))
    assert [p.queries_used for p in steps] == list(range(200, 2001, 200))
    assert {p.phase for p in steps[1:]} == {"adaptive"}
    f = fidelity.measure(steps[-1].copy.predict, softmax_victim.predict, digits.X_test, digits.domain)
    # Measured (seeds 0-2): 0.84-0.85 test / 0.99 uniform agreement at 1,800 queries, 0.88-0.93 at 3,000.
    assert f.test_agreement >= 0.78
    assert f.uniform_agreement >= 0.97
    first = fidelity.heldout_agreement(steps[0].copy.predict, softmax_victim.predict, digits.X_test)
    assert f.test_agreement > first + 0.3  # the rounds, not the first random batch, make the copy


def test_uniform_proposals_miss_the_digit_classes(digits: Split, softmax_victim: Pipeline) -> None:
    """The paper's uniform proposal: near-perfect off the data, poor on it (see the module docstring)."""
    attack = AdaptiveRetraining(domain=digits.domain, n_classes=10, budget=1000, rounds=5, sampler="uniform")
    last = attack.run(softmax_victim.predict)
    f = fidelity.measure(last.copy.predict, softmax_victim.predict, digits.X_test, digits.domain)
    assert f.uniform_agreement >= 0.95 and f.test_agreement < 0.5


def test_a_natural_pool_is_selected_without_repeats(digits: Split, softmax_victim: Pipeline) -> None:
    attack = AdaptiveRetraining(domain=digits.domain, n_classes=10, budget=400, rounds=4, sampler=digits.X_pool)
    steps = list(attack.steps(softmax_victim.predict))
    sent = [row.tobytes() for p in steps for row in p.queries]
    assert len(sent) == 400 and len(set(sent)) == 400
    assert fidelity.heldout_agreement(steps[-1].copy.predict, softmax_victim.predict, digits.X_test) >= 0.9
