"""The response does not punish on one detection: enforcement needs persistence or an operator, shadow mode
changes nothing for clients, allowlisted clients are observed only, and every change can be reverted.

Real gateway (uvicorn subprocess), real Redis, the real DetectorWorker driven step by step in this process
(so the test decides when each batch is analysed), the real admin API (uvicorn subprocess) over loopback.
The attacker probes uniform random points of the input box (equation-solving style): level high at the
first test (20 queries), so persistence is what separates the first detection from enforcement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from services.core.alerts import WEBHOOK_OUTBOX, AlertStore
from services.core.clients import ClientRegistry
from services.core.policy import OutputPolicy
from services.core.response import ResponseConfig
from services.core.settings import Settings
from services.demo.baseline import fit_demo_engine
from services.detector.engine import DetectionEngine
from services.detector.service.consumer import DetectorConfig, DetectorWorker
from services.detector.service.metrics import DetectorMetrics
from services.detector.service.runtime import EngineSet
from tests.utils.stack import Server, oip_body, start_server

ADMIN = "test-admin-token-0123456789"
MODEL = "digits-mlp"


@pytest.fixture(scope="module")
def engine() -> DetectionEngine:
    return fit_demo_engine(MODEL, n_sim_clients=100)  # ~1 s; the calibration floor needs >= 20 streams


class Stack:
    def __init__(self, r: redis.Redis, gateway: Server, api: Server, engine: DetectionEngine, shadow: bool) -> None:
        self.r = r
        self.gateway = gateway
        self.api = api
        self.registry = CollectorRegistry()
        response = replace(ResponseConfig.from_settings(Settings.model_construct()), shadow=shadow)
        self.worker = DetectorWorker(
            r,
            EngineSet({MODEL: engine}),
            AlertStore(r, notify=True),  # webhooks go to the outbox; the test reads the outbox
            DetectorMetrics(self.registry),
            DetectorConfig(block_ms=20, response=response),
        )
        self.worker.ensure_group()
        self.http = httpx.Client(base_url=gateway.url, timeout=30)
        self.admin = httpx.Client(base_url=api.url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"})
        self.sent = 0
        self.rng = np.random.default_rng(7)

    def query(self, key: str, n: int) -> dict[str, Any]:
        """Send n uniform random rows in one request; the answer's output tensor."""
        x = self.rng.uniform(0, 16, size=(n, 64))
        resp = self.http.post(f"/v2/models/{MODEL}/infer", json=oip_body(x), headers={"X-API-Key": key})
        assert resp.status_code == 200, resp.text
        self.sent += n
        return resp.json()["outputs"][0]  # type: ignore[no-any-return]

    def analyse(self) -> None:
        """Wait until the gateway logged every row sent, then let the detector consume them all."""
        deadline = time.monotonic() + 20
        while self.r.xlen("mc:queries") < self.sent:
            assert time.monotonic() < deadline, "the gateway did not log the rows"
            time.sleep(0.02)
        while self.worker.step():
            pass

    def alert(self, client: str) -> dict[str, Any]:
        alerts = self.admin.get("/v1/alerts", params={"client_id": client}).json()
        assert len(alerts) == 1, alerts
        return alerts[0]  # type: ignore[no-any-return]

    def policy(self, client: str) -> OutputPolicy:
        return ClientRegistry(self.r).get_policy(client)

    def wait_for_datatype(self, key: str, datatype: str) -> None:
        deadline = time.monotonic() + 10  # the gateway refreshes policies every 0.2 s in these tests
        while (got := self.query(key, 1)["datatype"]) != datatype:
            assert time.monotonic() < deadline, f"answers stayed {got}, expected {datatype}"
            time.sleep(0.1)

    def close(self) -> None:
        self.http.close()
        self.admin.close()


def make_stack(
    tmp_path: Path, redis_url: str, start_gateway: Callable[..., Server], engine: DetectionEngine, shadow: bool
) -> Stack:
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": redis_url,
        "MODELCUSTODY_DATA_DIR": str(tmp_path / "data"),
        "MODELCUSTODY_ADMIN_TOKEN": ADMIN,
        "MODELCUSTODY_DETECTOR_SHADOW_MODE": "true" if shadow else "false",
    }
    api = start_server("services.api.main:create_app", env, tmp_path / "logs", "api")
    gateway = start_gateway(MODELCUSTODY_GATEWAY_INPUT_DIM="64")
    return Stack(redis.Redis.from_url(redis_url), gateway, api, engine, shadow)


def test_enforcement_needs_persistence_or_an_operator_and_is_reversible(
    tmp_path: Path,
    redis_url: str,
    start_gateway: Callable[..., Server],
    add_client: Callable[[str], str],
    engine: DetectionEngine,
) -> None:
    keys = {name: add_client(name) for name in ("prober", "one-off", "bulk-partner")}
    s = make_stack(tmp_path, redis_url, start_gateway, engine, shadow=False)
    try:
        mode = s.admin.get("/v1/response").json()
        assert mode["response"] == "enforce" and mode["shadow_mode"] is False and mode["enforce_after_tests"] == 3

        # One detection (the test at 20 queries, level high): notified, nothing changes for the client.
        s.query(keys["prober"], 20)
        s.analyse()
        alert = s.alert("prober")
        assert alert["severity"] == "high" and alert["response"]["level"] == "notify"
        assert "not persistent yet" in alert["response"]["reason"]
        assert alert["policy_changes"] == [] and s.policy("prober") == OutputPolicy()
        assert s.query(keys["prober"], 1)["datatype"] == "FP64"  # still probabilities
        assert s.r.llen(WEBHOOK_OUTBOX) == 1  # notify: the opened alert went to the webhook

        # The tests at 50 and 100 queries are over the threshold too: 3 consecutive, enforcement applies.
        s.query(keys["prober"], 30)
        s.analyse()
        assert s.alert("prober")["policy_changes"] == []  # two consecutive tests are not enough
        s.query(keys["prober"], 50)
        s.analyse()
        alert = s.alert("prober")
        assert alert["response"]["level"] == "enforce"
        (change,) = alert["policy_changes"]
        assert change["by"] == "detector" and change["trigger"] == "persistence" and change["applied"] is True
        assert "3 consecutive tests" in change["reason"]
        assert change["policy_before"] == OutputPolicy().to_dict()
        assert s.policy("prober").label_only and s.policy("prober").daily_quota == 1000
        s.wait_for_datatype(keys["prober"], "INT64")  # the gateway applies it: labels only
        assert s.registry.get_sample_value("modelcustody_detector_policy_changes_total", {"mode": "applied"}) == 1

        # The operator reverts it: the policy before comes back, and the detector does not re-apply it.
        url = f"/v1/alerts/{alert['id']}/policy-changes/{change['id']}/revert"
        reverted = s.admin.post(url, json={"actor": "soc-anna", "note": "known load test"})
        assert reverted.status_code == 200, reverted.text
        assert reverted.json()["policy_changes"][0]["reverted"]["by"] == "soc-anna"
        assert s.policy("prober") == OutputPolicy()
        assert s.admin.post(url).status_code == 409  # already reverted
        s.wait_for_datatype(keys["prober"], "FP64")
        s.query(keys["prober"], 60)
        s.analyse()
        alert = s.alert("prober")
        assert len(alert["policy_changes"]) == 1 and s.policy("prober") == OutputPolicy()
        assert "reverted" in alert["response"]["reason"]

        # A client with one detection: an operator confirms enforcement through the API.
        s.query(keys["one-off"], 20)
        s.analyse()
        one_off = s.alert("one-off")
        assert one_off["response"]["level"] == "notify" and s.policy("one-off") == OutputPolicy()
        assert s.admin.post("/v1/alerts/al_nope/enforce").status_code == 404
        confirmed = s.admin.post(f"/v1/alerts/{one_off['id']}/enforce", json={"actor": "soc-ben", "note": "seen it"})
        assert confirmed.status_code == 200 and confirmed.json()["applied"] is True
        assert confirmed.json()["change"]["trigger"] == "operator"
        assert s.policy("one-off").label_only

        # A known bulk customer, allowlisted: its detections are recorded but neither sent nor enforced.
        assert s.admin.get("/v1/clients/nobody/tier").status_code == 404
        assert s.admin.put("/v1/clients/bulk-partner/tier", json={"tier": "gold"}).status_code == 422
        tier = s.admin.put(
            "/v1/clients/bulk-partner/tier",
            json={"tier": "allowlisted", "expected_daily_queries": 50_000, "actor": "soc-anna"},
        )
        assert tier.status_code == 200 and tier.json()["set_by"] == "soc-anna"
        assert s.admin.get("/v1/clients/bulk-partner/tier").json()["tier"] == "allowlisted"
        outbox = s.r.llen(WEBHOOK_OUTBOX)
        s.query(keys["bulk-partner"], 100)
        s.analyse()
        bulk = s.alert("bulk-partner")
        assert bulk["response"]["level"] == "observe" and "allowlisted" in bulk["response"]["reason"]
        assert bulk["policy_changes"] == [] and s.policy("bulk-partner") == OutputPolicy()
        assert s.r.llen(WEBHOOK_OUTBOX) == outbox
    finally:
        s.close()
        s.api.stop()


def test_shadow_mode_changes_nothing_for_clients_and_records_what_would_have_happened(
    tmp_path: Path,
    redis_url: str,
    start_gateway: Callable[..., Server],
    add_client: Callable[[str], str],
    engine: DetectionEngine,
) -> None:
    key = add_client("prober")
    s = make_stack(tmp_path, redis_url, start_gateway, engine, shadow=True)
    try:
        assert s.admin.get("/v1/response").json()["shadow_mode"] is True
        for n in (20, 30, 50, 100):  # tests at 20, 50, 100, 200: persistent, level high
            s.query(key, n)
            s.analyse()
        alert = s.alert("prober")
        assert alert["response"]["level"] == "enforce" and alert["response"]["shadow"] is True
        (change,) = alert["policy_changes"]
        assert change["shadow"] is True and change["applied"] is False
        assert change["policy_after"]["label_only"] is True  # what would have been applied
        assert alert["policy_applied"] is None
        assert s.policy("prober") == OutputPolicy()
        assert s.registry.get_sample_value("modelcustody_detector_policy_changes_total", {"mode": "shadow"}) == 1
        # An operator's confirmation is recorded too, and applies nothing either.
        confirmed = s.admin.post(f"/v1/alerts/{alert['id']}/enforce").json()
        assert confirmed["applied"] is False and confirmed["change"]["shadow"] is True
        revert = s.admin.post(f"/v1/alerts/{alert['id']}/policy-changes/{change['id']}/revert")
        assert revert.status_code == 409  # nothing was applied, nothing to revert
        assert s.policy("prober") == OutputPolicy()
        time.sleep(0.5)  # over two gateway policy refreshes: nothing may have reached it
        assert all(s.query(key, 1)["datatype"] == "FP64" for _ in range(3))  # probabilities, as before
    finally:
        s.close()
        s.api.stop()
