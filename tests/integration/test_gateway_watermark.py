"""The answer watermark through real gateway processes, a real upstream and a real Redis query log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from sklearn.datasets import load_digits

from services.core.clients import ClientRegistry
from services.core.policy import OutputPolicy
from services.core.records import QueryRecord
from tests.utils.stack import Server, oip_body, start_server

SECRET = "integration-test-answer-watermark"
URL = "/v2/models/digits-mlp/infer"


def _ask(base: str, key: str, x: np.ndarray) -> np.ndarray:
    resp = httpx.post(base + URL, json=oip_body(x), headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    tensor = resp.json()["outputs"][0]
    return np.asarray(tensor["data"]).reshape(tensor["shape"])


@pytest.fixture()
def model_server(tmp_path: Path) -> Iterator[Server]:
    """Overrides the conftest's upstream for ``start_gateway``: a real HTTP classifier that starts in about a
    second (the demo model server trains three models first). Each gateway here names its own instance id."""
    server = start_server("tests.utils.upstreams:create_softmax_app", {}, tmp_path / "logs", "softmax")
    yield server
    server.stop()


def test_two_gateways_serve_the_same_marked_answers_and_log_the_mark(
    start_gateway: Any, add_client: Any, redis_client: redis.Redis
) -> None:
    env = {
        "MODELCUSTODY_ANSWER_WATERMARK_SECRET": SECRET,
        "MODELCUSTODY_ANSWER_WATERMARK_FREQUENCY": "1.5",  # digits pixels are 0..16: ~23/16 rad per unit
    }
    gw_a = start_gateway(MODELCUSTODY_GATEWAY_INSTANCE_ID="gw-a", **env)
    gw_b = start_gateway(MODELCUSTODY_GATEWAY_INSTANCE_ID="gw-b", **env)
    gw_off = start_gateway(MODELCUSTODY_GATEWAY_INSTANCE_ID="gw-off", MODELCUSTODY_ANSWER_WATERMARK_MODE="off")
    prob_key, label_key = add_client("prob"), add_client("labels")
    ClientRegistry(redis_client).set_policy("labels", OutputPolicy(label_only=True))
    x = load_digits().data[:400]

    upstream = _ask(gw_off.url, prob_key, x)
    marked_a = _ask(gw_a.url, prob_key, x)
    marked_b = _ask(gw_b.url, prob_key, x[::-1])[::-1]  # another instance, another batch order
    np.testing.assert_array_equal(marked_a, marked_b)
    assert np.array_equal(marked_a.argmax(axis=1), upstream.argmax(axis=1))  # top-1 never changes
    change = np.abs(marked_a - upstream).max(axis=1)
    # Confident answers leave no mass to take out of the keyed class when the cosine is negative, so about
    # half the rows barely move; the other half move by up to the amplitude.
    assert change.max() <= 0.1 + 1e-9 and np.quantile(change, 0.75) > 0.02  # the default amplitude is 0.1

    deadline = time.monotonic() + 15  # the gateways refresh client policies every 0.2 s (slower under load)
    while time.monotonic() < deadline and any(_ask(gw.url, label_key, x[:1]).shape[1] != 1 for gw in (gw_a, gw_b)):
        time.sleep(0.1)
    labels_a = _ask(gw_a.url, label_key, x)[:, 0]
    labels_b = np.concatenate([_ask(gw_b.url, label_key, x[i : i + 100])[:, 0] for i in range(0, len(x), 100)])
    np.testing.assert_array_equal(labels_a, labels_b)  # in other batches on another instance: the same labels
    changed = labels_a != upstream.argmax(axis=1)
    top2 = np.sort(upstream, axis=1)[:, -2:]
    near = top2[:, 1] - top2[:, 0] < 0.5  # the boundary mark's default band (top-2 margin below 0.5)

    for gw in (gw_a, gw_b, gw_off):
        assert gw.stop() == 0
    records = [QueryRecord.from_stream_fields(f) for _, f in redis_client.xrange("mc:queries")]
    by = {(r.gateway, r.client_id): [] for r in records}  # type: dict[tuple[str, str], list[QueryRecord]]
    for r in records:
        by[(r.gateway, r.client_id)].append(r)
    assert {r.watermark for r in by[("gw-off", "prob")]} == {""}
    assert {r.watermark for r in by[("gw-a", "prob")]} == {"probabilities"}
    np.testing.assert_allclose([r.output for r in by[("gw-a", "prob")]], marked_a)  # the log holds what was served
    served_batch = by[("gw-a", "labels")][-len(x) :]  # the rows before it are the policy-refresh polls
    label_tags = np.array([r.watermark for r in served_batch])
    dawn, moved = label_tags == "label-flipped", label_tags == "label-boundary"
    assert 0 < dawn.sum() <= 20  # 1 % of 400 is 4; 20 is far beyond any binomial excursion
    assert not np.any(changed & ~(dawn | moved)) and np.all(changed[moved])  # every change is tagged
    assert not np.any(moved & ~near)  # the boundary mark acts only in the band
