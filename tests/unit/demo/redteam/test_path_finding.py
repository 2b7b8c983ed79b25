"""Decision-tree path finding from labels or leaf probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from services.demo.redteam import TreePathFinding, fidelity
from tests.unit.demo.redteam.conftest import Split


def test_label_only_path_finding_extracts_a_16_leaf_tree(digits: Split, tree_victim: DecisionTreeClassifier) -> None:
    steps = list(TreePathFinding(domain=digits.domain, n_classes=10, budget=3500).steps(tree_victim.predict))
    last = steps[-1]
    f = fidelity.measure(last.copy.predict, tree_victim.predict, digits.X_test, digits.domain)
    # Measured (seeds 0-3): 2,500-2,580 queries; 0.989-1.0 test and 0.96-0.97 uniform agreement (uniform
    # points within epsilon/2 of a threshold can fall on the wrong side; test pixels are integers).
    assert last.queries_used < 3000
    assert f.test_agreement >= 0.97 and f.uniform_agreement >= 0.94
    leaves = max(p.info.get("leaves", 0) for p in steps)
    assert 12 <= leaves <= 20
    # The signature: every line-search query differs from the explored input in one feature.
    batch = next(p for p in steps if p.phase == "line-search").queries
    changed = (batch != np.median(batch, axis=0)).sum(axis=1)
    assert np.all(changed <= 1)


def test_probabilities_tell_merged_leaves_apart(digits: Split) -> None:
    victim = DecisionTreeClassifier(max_leaf_nodes=32, random_state=0).fit(digits.X_victim, digits.y_victim)
    attack = TreePathFinding(domain=digits.domain, n_classes=10, budget=6000, use_probabilities=True)
    last = attack.run(victim.predict_proba)
    f = fidelity.measure(last.copy.predict_proba, victim.predict_proba, digits.X_test, digits.domain)
    # Measured (seeds 0-3): 5,130-5,250 queries, 0.996-1.0 test agreement, TVD <= 0.004.
    assert f.test_agreement >= 0.98
    assert f.test_tvd is not None and f.test_tvd < 0.02
    assert last.queries_used < 6000  # finished (verification came back clean) before the budget


def test_natural_start_points_reach_the_data_first(digits: Split, tree_victim: DecisionTreeClassifier) -> None:
    attack = TreePathFinding(domain=digits.domain, n_classes=10, budget=2000, start_points=digits.X_pool[:5])
    last = attack.run(tree_victim.predict)
    # Measured (4 start sets): 0.98-1.0 test agreement at 1,940-2,000 queries.
    assert fidelity.heldout_agreement(last.copy.predict, tree_victim.predict, digits.X_test) >= 0.95
