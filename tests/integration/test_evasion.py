"""Evasions of the query log and the detector, each tried end to end through the real gateway.

- The model logged differs from the model served: dot segments, encoded slashes, backslashes and double
  slashes in the path (sent raw with http.client: httpx would normalise them away before sending).
- A client's state poisoned by extreme but finite values: values past float32, or outside the range the
  operator declared for the model, get 400 and are never logged.
- Unbounded per-client state through many model names: the detector analyses at most
  ``max_models_per_client`` models per client and counts the rest.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from services.core.alerts import AlertStore
from services.core.records import QueryRecord
from services.demo.baseline import fit_demo_engine
from services.demo.model_server.models import digits_split
from services.detector.engine import DetectionEngine
from services.detector.service.consumer import STATE_PREFIX, DetectorConfig, DetectorWorker
from services.detector.service.metrics import DetectorMetrics
from services.detector.service.runtime import EngineSet
from tests.utils.stack import Server, oip_body

STREAM = "mc:queries"


def raw_request(server: Server, method: str, path: str, key: str | None, body: Any = None) -> tuple[int, bytes]:
    """One request with the path exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def logged(r: redis.Redis, gateway: Server) -> list[QueryRecord]:
    gateway.stop()  # a graceful stop flushes the query log buffer
    return [QueryRecord.from_stream_fields(fields) for _, fields in r.xrange(STREAM)]


ROW = digits_split().x_holdout[:1]


@pytest.fixture(scope="module")
def detector_engine() -> DetectionEngine:
    return fit_demo_engine("digits-mlp", n_sim_clients=100)  # ~1 s; the calibration floor needs >= 20


BAD_PATHS = [
    ("POST", "/v2/models/unwatched/../digits-mlp/infer"),
    ("POST", "/v2/models/./digits-mlp/infer"),
    ("POST", "/v2/models/unwatched%2F..%2Fdigits-mlp/infer"),
    ("POST", "/v2/models/unwatched%2f..%2fdigits-mlp/infer"),
    ("POST", "/v2/models/unwatched%2E%2E/infer"),
    ("POST", "/v2/models/unwatched\\..\\digits-mlp/infer"),
    ("POST", "/v2/models//digits-mlp/infer"),
    ("POST", "/v1/models/unwatched/../digits-mlp:predict"),
    ("GET", "/v2/health/live/../../models/digits-mlp"),  # a key-free route reaching a keyed one
    ("GET", "/v2/models/digits-mlp/../../health/ready"),
]


def test_a_path_that_could_route_elsewhere_is_refused_and_never_logged(
    start_gateway: Callable[..., Server], add_client: Callable[[str], str], redis_client: redis.Redis
) -> None:
    gateway = start_gateway()
    key = add_client("mallory")
    answers = {}
    for method, path in BAD_PATHS:
        body = {"instances": ROW.tolist()} if path.startswith("/v1/") else oip_body(ROW)
        status, data = raw_request(gateway, method, path, None if "health/live" in path else key,
                                   body if method == "POST" else None)
        answers[path] = (status, data[:120])
    refused = {path: ans for path, ans in answers.items() if ans[0] == 400 and b"path refused" in ans[1]}
    assert refused == answers  # each one refused with its reason
    assert logged(redis_client, gateway) == []


def test_the_model_logged_is_the_model_served(
    start_gateway: Callable[..., Server], add_client: Callable[[str], str], redis_client: redis.Redis
) -> None:
    gateway = start_gateway()
    key = add_client("alice")
    for path in ("/v2/models/digits-mlp/infer", "/v2/models/digits-logreg/infer"):
        status, data = raw_request(gateway, "POST", path, key, oip_body(ROW))
        assert status == 200, data[:200]
    status, _ = raw_request(gateway, "POST", "/v1/models/digits-tree:predict", key, {"instances": ROW.tolist()})
    assert status == 200
    status, data = raw_request(gateway, "GET", "/v2/models/digits-mlp", key)
    assert status == 200 and json.loads(data)["name"] == "digits-mlp"
    assert raw_request(gateway, "GET", "/v2/models/digits-mlp", None)[0] == 401
    assert raw_request(gateway, "GET", "/v2/health/ready", None)[0] == 200
    status, data = raw_request(gateway, "POST", "/v2/models/.hidden/infer", key, oip_body(ROW))
    assert status == 400 and "model name" in json.loads(data)["error"]
    assert [rec.model for rec in logged(redis_client, gateway)] == ["digits-mlp", "digits-logreg", "digits-tree"]


def test_values_past_float32_or_outside_the_declared_range_get_400(
    start_gateway: Callable[..., Server], add_client: Callable[[str], str], redis_client: redis.Redis
) -> None:
    gateway = start_gateway(MODELCUSTODY_GATEWAY_INPUT_RANGES=json.dumps({"digits-mlp": [0, 16]}))
    key = add_client("mallory")
    headers = {"X-API-Key": key}
    huge = ROW.copy()
    huge[0, 0] = 1e39  # finite in JSON and float64, infinite in float32
    outside = ROW.copy()
    outside[0, 5] = 17.0
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        resp = http.post("/v2/models/digits-logreg/infer", json=oip_body(huge), headers=headers)
        assert resp.status_code == 400 and "float32" in resp.json()["error"]
        resp = http.post("/v1/models/digits-logreg:predict", json={"instances": huge.tolist()}, headers=headers)
        assert resp.status_code == 400 and "float32" in resp.json()["error"]
        resp = http.post("/v2/models/digits-mlp/infer", json=oip_body(outside), headers=headers)
        assert resp.status_code == 400 and "[0, 16]" in resp.json()["error"]
        # In range: answered. Another model has no declared range: only float32 applies.
        assert http.post("/v2/models/digits-mlp/infer", json=oip_body(ROW), headers=headers).status_code == 200
        assert http.post("/v2/models/digits-logreg/infer", json=oip_body(outside), headers=headers).status_code == 200
    records = logged(redis_client, gateway)
    assert [(rec.model, max(rec.input)) for rec in records] == [("digits-mlp", ROW.max()), ("digits-logreg", 17.0)]


def test_many_model_names_cannot_grow_a_clients_state(
    start_gateway: Callable[..., Server],
    add_client: Callable[[str], str],
    redis_url: str,
    detector_engine: DetectionEngine,
) -> None:
    r = redis.Redis.from_url(redis_url)
    gateway = start_gateway()
    key = add_client("mallory")
    models = ("digits-mlp", "digits-logreg", "digits-tree")  # all 64 features: one catch-all engine analyses each
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for model in models:
            body = oip_body(ROW.repeat(10, axis=0))
            resp = http.post(f"/v2/models/{model}/infer", json=body, headers={"X-API-Key": key})
            assert resp.status_code == 200
    gateway.stop()
    registry = CollectorRegistry()
    worker = DetectorWorker(
        r,
        EngineSet({"*": detector_engine}),
        AlertStore(r),
        DetectorMetrics(registry),
        DetectorConfig(block_ms=20, max_models_per_client=2),
    )
    worker.ensure_group()
    deadline = time.monotonic() + 30
    while worker.step() and time.monotonic() < deadline:
        pass
    fields: Any = r.hkeys(STATE_PREFIX + "mallory")
    engines = sorted(f.decode() for f in fields if f.startswith(b"engine:"))
    assert engines == ["engine:digits-logreg", "engine:digits-mlp"]  # the first two models seen, no third
    assert registry.get_sample_value("modelcustody_detector_records_over_model_cap_total") == 10
    assert registry.get_sample_value("modelcustody_detector_queries_analysed_total") == 20
    assert int(r.hget(STATE_PREFIX + "mallory", "queries")) == 20  # type: ignore[arg-type]
