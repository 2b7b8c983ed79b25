"""The solve-template statistic (audit.solve_template): an equation-solving copy of marked probabilities is found,
a model that never saw them is claimed no more often than α (no server)."""

from __future__ import annotations

import numpy as np

from audit.answer_watermark import AnswerWatermark
from audit.api_watermark import LoggedAnswers, run_api_watermark
from audit.solve_template import SolveReference, solve_softmax_linear
from audit.suspects.base import CallableSuspect

K, D = 10, 16


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _owner(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A non-linear owner (a linear solve cannot reproduce it exactly): tanh features, then softmax."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.5, (D, 24)), rng.normal(0, 1.5, (24, K))


def _proba(owner: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    w1, w2 = owner
    return _softmax(np.tanh(np.asarray(x, np.float64) @ w1) @ w2)


def _linear(theta: np.ndarray) -> CallableSuspect:
    def proba(q: np.ndarray) -> np.ndarray:
        return _softmax(np.hstack([np.asarray(q, np.float64), np.ones((len(q), 1))]) @ theta.T)

    return CallableSuspect(lambda q: proba(q).argmax(axis=1), proba)


def _design(x: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])


def test_the_solve_reproduces_a_softmax_linear_model_exactly() -> None:
    rng = np.random.default_rng(0)
    theta = rng.normal(0, 2, (K, D + 1))
    theta[0] = 0.0
    x = rng.uniform(0, 1, (200, D))
    np.testing.assert_allclose(solve_softmax_linear(_design(x), _softmax(_design(x) @ theta.T)), theta, atol=1e-8)


def test_an_equation_solving_copy_carries_the_keys_template_and_is_claimed() -> None:
    owner = _owner()
    rng = np.random.default_rng(1)
    x_log = rng.uniform(0, 1, (400, D)).astype(np.float32)
    claimed_with, claimed_without = 0, 0
    for i in range(6):
        mark = AnswerWatermark(f"solve-template-test-{i:02d}-secret".encode(), n_classes=K, input_dim=D, frequency=6.0)
        served = mark.mark_probabilities(x_log, _proba(owner, x_log)).probabilities
        copy = _linear(solve_softmax_linear(_design(x_log), served))  # the thief's least-squares solve
        reference = SolveReference.fit(x_log.astype(np.float64), _proba(owner, x_log))
        # the true key's template is the copy's departure from the reference solve
        angle = mark.frequency * (x_log.astype(np.float64) @ mark.projection[:, None]) + mark.phase
        template = reference.templates(mark.served_for_signal, mark.target_class, angle, x_log[:200])[:, 0]
        q = copy.probabilities(x_log[:200])
        assert q is not None
        departure = reference.departure(x_log[:200], q, mark.target_class)
        assert np.corrcoef(template, departure)[0, 1] > 0.95
        logged = LoggedAnswers(x_log.astype(np.float64), served.tolist(), ["probabilities"] * len(x_log), ["thief"])
        owner_suspect = CallableSuspect(lambda q: _proba(owner, q).argmax(1), lambda q: _proba(owner, q))
        params = {"clients": ["thief"], "n_null_keys": 999, "alpha": 0.01}
        ev = run_api_watermark(copy, mark, params, logged=logged, owner=owner_suspect)
        assert ev["phases"]["probabilities"]["solve_rows"] == len(x_log)
        claimed_with += ev["verdict"] == "claim"
        off = run_api_watermark(copy, mark, {**params, "solve_template": False}, logged=logged, owner=owner_suspect)
        assert off["phases"]["probabilities"]["solve_rows"] == 0
        claimed_without += off["verdict"] == "claim"
    assert claimed_with == 6 and claimed_with >= claimed_without


def test_models_that_never_saw_the_marked_answers_are_claimed_at_most_at_alpha() -> None:
    """Over 60 keys at α = 0.1 (99 wrong keys): an equation-solving copy of the *unmarked* owner on other inputs,
    and a second owner-like model, both independent of the key. Bound: Binomial(120, 0.1) exceeds 22 with
    probability < 0.5 %."""
    owner = _owner()
    rng = np.random.default_rng(2)
    x_log = rng.uniform(0, 1, (300, D)).astype(np.float32)
    x_other = rng.uniform(0, 1, (300, D))
    clean_copy = _linear(solve_softmax_linear(_design(x_other), _proba(owner, x_other)))
    other_owner = _owner(seed=9)
    other = CallableSuspect(lambda q: _proba(other_owner, q).argmax(1), lambda q: _proba(other_owner, q))
    reference = SolveReference.fit(x_log.astype(np.float64), _proba(owner, x_log))
    claims = 0
    for i in range(60):
        mark = AnswerWatermark(f"solve-template-null-{i:03d}-secret".encode(), n_classes=K, input_dim=D, frequency=6.0)
        for suspect in (clean_copy, other):
            q = suspect.probabilities(x_log[:150])
            ev = mark.verify_probabilities(
                x_log[:150], q, baseline=_proba(owner, x_log[:150]), alpha=0.1, n_null_keys=99, seed=i, solve=reference
            )
            assert ev.solve_rows == len(x_log)
            claims += ev.claimed
    assert claims <= 22
