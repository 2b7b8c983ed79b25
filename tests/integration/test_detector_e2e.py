"""Gateway → Redis → detector → alert → webhook, with real processes, and a detector killed mid-stream.

Clients query the real model server through the real gateway over HTTP; detector processes (the real
`modelcustody serve detector`) consume the query log; a real HTTP listener receives the signed webhook; the
admin API (real uvicorn) serves the alert and the client's risk. The first detector is SIGKILLed while
traffic flows and a second one, under another consumer name, takes over its pending entries: every
answered row must end up analysed exactly once (the per-client query counts in the detector state equal
the rows sent, and nothing is left pending).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from services.demo.model_server.models import digits_split, holdout_halves
from services.detector.service.consumer import GROUP, STATE_PREFIX
from services.detector.service.webhook import verify
from tests.utils.stack import Server, oip_body, start_detector, start_server

SECRET = "test-webhook-secret-0123456789"
ADMIN = "test-admin-token-0123456789"


class WebhookListener:
    """A real HTTP server on loopback recording what the detector POSTs; fails the first delivery (a retry)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.refused = 0
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if listener.refused == 0:  # the receiver is briefly down: the sender must retry
                    listener.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                listener.received.append(
                    {
                        "body": body,
                        "timestamp": self.headers["X-ModelCustody-Timestamp"],
                        "signature": self.headers["X-ModelCustody-Signature"],
                    }
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def baseline(detector_baseline: Path) -> Path:
    return detector_baseline


@pytest.fixture()
def webhook() -> Iterator[WebhookListener]:
    listener = WebhookListener()
    yield listener
    listener.close()


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, state: Callable[[], object] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} {state()}")


def metric(port: int, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def analysed(r: redis.Redis, client: str) -> int:
    raw: Any = r.hget(STATE_PREFIX + client, "queries")
    return int(raw) if raw else 0


def send(http: httpx.Client, key: str, x: np.ndarray, batch: int) -> int:
    for i in range(0, len(x), batch):
        resp = http.post("/v2/models/digits-mlp/infer", json=oip_body(x[i : i + batch]), headers={"X-API-Key": key})
        resp.raise_for_status()
    return len(x)


def test_detector_alerts_on_the_attacker_only_and_survives_a_kill(
    tmp_path: Path,
    redis_url: str,
    start_gateway: Callable[..., Server],
    add_client: Callable[[str], str],
    baseline: Path,
    webhook: WebhookListener,
) -> None:
    r = redis.Redis.from_url(redis_url)
    gateway = start_gateway(MODELCUSTODY_GATEWAY_INPUT_DIM="64")
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": redis_url,
        "MODELCUSTODY_DATA_DIR": str(tmp_path / "data"),
        "MODELCUSTODY_DETECTOR_REFERENCE_PATH": str(baseline),
        "MODELCUSTODY_DETECTOR_BATCH_MAX": "50",
        "MODELCUSTODY_DETECTOR_RECLAIM_IDLE_S": "2",
        "MODELCUSTODY_WEBHOOK_URL": webhook.url,
        "MODELCUSTODY_WEBHOOK_SECRET": SECRET,
        "MODELCUSTODY_ADMIN_TOKEN": ADMIN,
    }
    keys = {name: add_client(name) for name in ("benign-a", "benign-b", "attacker")}
    _, _, x_traffic, _ = holdout_halves(digits_split(0))
    rng = np.random.default_rng(3)
    benign_rows = {name: x_traffic[rng.permutation(len(x_traffic))[:300]] for name in ("benign-a", "benign-b")}
    # Equation-solving style probing: uniform random points of the input box, far from any digit.
    attack_rows = rng.uniform(0, 16, size=(400, 64))
    sent = dict.fromkeys(keys, 0)

    first, _ = start_detector(env, tmp_path, "det-1")
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for name, rows in benign_rows.items():
            sent[name] += send(http, keys[name], rows[:150], batch=5)
        sent["attacker"] += send(http, keys["attacker"], attack_rows[:200], batch=10)
        wait_until(
            lambda: analysed(r, "benign-a") > 0,
            120,
            "the first detector to analyse records",
            lambda: (tmp_path / "detector-det-1.log").read_text()[-3000:],
        )
        first.kill()  # SIGKILL: no graceful anything, whatever batch it held stays pending
        assert first.proc.wait(10) != 0
        for name, rows in benign_rows.items():
            sent[name] += send(http, keys[name], rows[150:], batch=7)
        sent["attacker"] += send(http, keys["attacker"], attack_rows[200:], batch=10)

    # Whatever the killed detector held is pending on it; to be sure the take-over path runs, a "ghost"
    # detector also reads 30 entries and dies without acknowledging them.
    ghost: Any = r.xreadgroup(GROUP, "det-ghost", {"mc:queries": ">"}, count=30)
    assert sum(len(entries) for _, entries in ghost) == 30
    second, second_port = start_detector(env, tmp_path, "det-2")
    api = start_server("services.api.main:create_app", env, tmp_path / "logs", "api")
    try:
        wait_until(
            lambda: all(analysed(r, c) == n for c, n in sent.items()),
            120,
            f"every record to be analysed: {sent}",
            lambda: (
                {c: analysed(r, c) for c in sent},
                r.xinfo_groups("mc:queries"),
                r.xinfo_consumers("mc:queries", GROUP),
                (tmp_path / "detector-det-2.log").read_text()[-3000:],
            ),
        )
        groups: Any = r.xinfo_groups("mc:queries")
        group = next(g for g in groups if g["name"] in (GROUP, GROUP.encode()))
        last: Any = r.xinfo_stream("mc:queries")["last-generated-id"]
        assert group["pending"] == 0 and group["last-delivered-id"] == last  # all delivered, all acknowledged
        assert {c: analysed(r, c) for c in sent} == sent  # each row analysed exactly once: no loss, no double

        def opened() -> list[dict[str, Any]]:
            return [d for d in webhook.received if json.loads(d["body"])["event"] == "alert.opened"]

        # The refused first attempt is retried with backoff: an escalation of the same alert (a later test at
        # level high) can be delivered before it; receivers key on the alert id, not on arrival order.
        wait_until(
            lambda: len(opened()) >= 1,
            120,
            "the webhook",
            lambda: (
                webhook.refused,
                r.llen("mc:webhook:outbox"),
                (tmp_path / "detector-det-2.log").read_text()[-3000:],
            ),
        )
        delivery = opened()[0]
        assert verify(SECRET, delivery["timestamp"], delivery["body"], delivery["signature"])
        assert not verify("wrong-secret", delivery["timestamp"], delivery["body"], delivery["signature"])
        payload = json.loads(delivery["body"])
        assert payload["event"] == "alert.opened"
        assert payload["client_id"] == "attacker"
        assert payload["technique"] == "AML.T0024"
        assert webhook.refused == 1  # the first attempt was refused and retried

        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=api.url, timeout=10) as admin:
            assert admin.get("/v1/alerts").status_code == 401
            alerts = admin.get("/v1/alerts", headers=headers).json()["items"]
            assert [a["client_id"] for a in alerts] == ["attacker"]  # none on the benign clients
            alert = alerts[0]
            assert alert["status"] == "open" and alert["model"] == "digits-mlp"
            assert alert["risk_score"] >= alert["risk_threshold"] > 0
            assert alert["queries_at_open"] <= 100  # caught within the first two tests of 50 queries
            by_signal = {s["signal"]: s for s in alert["signals"]}
            assert {"boundary", "prada", "ood", "sweep"} <= set(by_signal)
            assert all("statistic" in s and "threshold" in s and "p_value" in s for s in alert["signals"])
            assert "ood" in alert["fired_signals"]

            ack = admin.post(f"/v1/alerts/{alert['id']}/ack", headers=headers, json={"note": "looking"})
            assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"
            assert admin.post("/v1/alerts/al_nope/ack", headers=headers).status_code == 404

            risk = admin.get("/v1/clients/attacker/risk", headers=headers).json()
            assert risk["level"] in ("medium", "high") and risk["queries_seen"] == sent["attacker"]
            calm = admin.get("/v1/clients/benign-a/risk", headers=headers).json()
            assert calm["level"] == "low" and calm["risk_score"] < calm["threshold"]
            assert admin.get("/v1/clients/nobody/risk", headers=headers).status_code == 404

        # The high-risk attacker's policy was tightened to labels only; the alert says so; the gateway applies it.
        assert risk["level"] == "high"  # uniform probing is far past the high threshold
        with httpx.Client(base_url=api.url, timeout=10) as admin:
            noted = admin.get(f"/v1/alerts/{alert['id']}", headers=headers).json()["policy_applied"]
        assert noted["label_only"] is True and noted["daily_quota"] == 1000
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            wait_until(
                lambda: (
                    http.post(
                        "/v2/models/digits-mlp/infer",
                        json=oip_body(attack_rows[:1]),
                        headers={"X-API-Key": keys["attacker"]},
                    ).json()["outputs"][0]["datatype"]
                    == "INT64"
                ),
                10,
                "the tightened policy to reach the gateway",
            )

        assert metric(second_port, "modelcustody_detector_reclaimed_total") >= 30
        assert metric(second_port, "modelcustody_detector_queries_analysed_total") >= 30
    finally:
        second.stop()
        api.stop()
