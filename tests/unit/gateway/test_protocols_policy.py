from __future__ import annotations

import numpy as np
import pytest

from services.core import protocols
from services.core.policy import OutputPolicy, apply_policy


def test_oip_rows_accept_flat_and_nested_data() -> None:
    flat = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    nested = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}]}
    assert protocols.oip_rows(flat, 3).tolist() == protocols.oip_rows(nested, None).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"inputs": []}, "non-empty"),
        ({"inputs": [{"shape": [2, 2], "data": [1, 2, 3]}]}, "needs 4"),
        ({"inputs": [{"shape": [1, -2], "data": [1, 2]}]}, "positive"),
        ({"inputs": [{"shape": [1, 2], "data": [1, None]}]}, "null"),
        ({"inputs": [{"shape": [1, 2], "data": [1, "a"]}]}, "numbers"),
        ({"inputs": [{"shape": [1, 2], "data": [1e400, 1]}]}, "infinity"),
    ],
)
def test_oip_rows_reject_bad_tensors(body: dict[str, object], reason: str) -> None:
    with pytest.raises(protocols.BadRequest, match=reason):
        protocols.oip_rows(body, None)


def test_generic_paths_and_output_kinds() -> None:
    body = {"data": {"rows": [[0.0, 1.0]]}}
    assert protocols.generic_rows(body, "data.rows", 2).shape == (1, 2)
    with pytest.raises(protocols.BadRequest, match="JSON path"):
        protocols.generic_rows(body, "data.missing", None)
    assert protocols.classify_output(np.array([[0.2, 0.8]])) == "probabilities"
    assert protocols.classify_output(np.array([[3.0]])) == "label"
    assert protocols.classify_output(np.array([[2.5, -1.0]])) == "raw"


def test_policies_transform_probabilities() -> None:
    rng = np.random.default_rng(0)
    p = np.array([[0.05, 0.15, 0.8], [0.5, 0.3, 0.2]])
    assert apply_policy(p, OutputPolicy(label_only=True), rng).tolist() == [[2], [0]]
    top = apply_policy(p, OutputPolicy(top_k=1, round_decimals=1), rng)
    assert top.tolist() == [[0.0, 0.0, 0.8], [0.5, 0.0, 0.0]]
    noisy = apply_policy(np.tile(p, (200, 1)), OutputPolicy(noise_sigma=0.1), rng)
    assert np.allclose(noisy.sum(axis=1), 1.0) and (noisy >= 0).all() and not np.allclose(noisy[::2], p[0])


def test_tightening_never_loosens() -> None:
    a = OutputPolicy(round_decimals=3, daily_quota=1000)
    b = OutputPolicy(round_decimals=1, label_only=True, daily_quota=5000, noise_sigma=0.05)
    t = a.tightened(b)
    assert (t.round_decimals, t.daily_quota, t.label_only, t.noise_sigma) == (1, 1000, True, 0.05)
    with pytest.raises(ValueError, match="top_k"):
        OutputPolicy(top_k=0)
