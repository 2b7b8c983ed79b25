"""The alert store and the webhook sender against a real Redis and a real HTTP listener on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import redis

from services.core.alerts import WEBHOOK_OUTBOX, AlertStore
from services.detector.service.webhook import DEAD, WebhookSender, verify

SIGNAL = [{"signal": "ood", "statistic": 0.9, "threshold": 0.2, "p_value": 1e-9, "fired": True}]


def detect(store: AlertStore, client: str, severity: str = "medium", risk: float = 12.0, queries: int = 100) -> Any:
    return store.raise_or_update(
        client_id=client,
        severity=severity,
        risk_score=risk,
        signals=SIGNAL,
        fired=["ood"],
        window_start=1.0,
        window_end=2.0,
        queries_seen=queries,
        model="digits-mlp",
        risk_threshold=9.8,
        queries_at_test=queries - 30,
    )


def events(r: redis.Redis) -> list[str]:
    entries: Any = r.xrange("mc:alerts")
    return [fields[b"event"].decode() for _, fields in entries]


def test_detections_fold_into_one_alert_and_escalate(redis_client: redis.Redis) -> None:
    store = AlertStore(redis_client, notify=True)
    first, new = detect(store, "mallory")
    assert new and first.status == "open" and first.queries_at_open == 70 and first.model == "digits-mlp"
    again, new = detect(store, "mallory", risk=15.0, queries=150)
    assert not new and again.id == first.id and again.detections == 2
    assert again.risk_score == 15.0 and again.queries_seen == 150 and again.queries_at_open == 70
    high, new = detect(store, "mallory", severity="high", queries=200)
    assert not new and high.severity == "high"
    assert events(redis_client) == ["opened", "updated", "escalated"]
    # The webhook outbox got the opening and the escalation, written in the same transaction as the alert.
    queued = [orjson.loads(x)["event"] for x in redis_client.lrange(WEBHOOK_OUTBOX, 0, -1)]  # type: ignore[union-attr]
    assert sorted(queued) == ["alert.escalated", "alert.opened"]
    other, new = detect(store, "eve")
    assert new and other.id != first.id
    assert [a.client_id for a in store.list(status="open")] == ["eve", "mallory"]


def test_lifecycle_and_a_new_alert_after_resolution(redis_client: redis.Redis) -> None:
    store = AlertStore(redis_client)  # notify=False: no webhook configured, nothing queued
    alert, _ = detect(store, "mallory")
    acked = store.transition(alert.id, "acknowledged", actor="soc", note="looking")
    assert acked.status == "acknowledged" and acked.history[-1]["by"] == "soc"
    # Detections while acknowledged still fold into the same alert.
    assert detect(store, "mallory")[0].id == alert.id
    with pytest.raises(ValueError, match="cannot become"):
        store.transition(alert.id, "open", actor="soc")  # type: ignore[arg-type]
    store.transition(alert.id, "resolved", actor="soc")
    with pytest.raises(ValueError):
        store.transition(alert.id, "acknowledged", actor="soc")
    with pytest.raises(KeyError):
        store.transition("al_missing", "resolved", actor="soc")
    fresh, new = detect(store, "mallory")
    assert new and fresh.id != alert.id
    assert redis_client.llen(WEBHOOK_OUTBOX) == 0


class Listener:
    def __init__(self, fail_first: int) -> None:
        self.bodies: list[tuple[bytes, dict[str, str]]] = []
        self.calls = 0
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                listener.calls += 1
                if listener.calls <= fail_first:
                    self.send_response(500)
                else:
                    listener.bodies.append((body, dict(self.headers)))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture()
def flaky_listener() -> Iterator[Listener]:
    listener = Listener(fail_first=2)
    yield listener
    listener.server.shutdown()


def test_webhook_retries_with_backoff_and_signs(redis_client: redis.Redis, flaky_listener: Listener) -> None:
    store = AlertStore(redis_client, notify=True)
    alert, _ = detect(store, "mallory")
    outcomes: list[str] = []
    sender = WebhookSender(
        redis_client, flaky_listener.url, "s3cret", base_backoff_s=0.05, instance="t", on_result=outcomes.append
    )
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while not flaky_listener.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop()
    assert outcomes == ["retrying", "retrying", "delivered"]
    body, headers = flaky_listener.bodies[0]
    assert verify("s3cret", headers["X-ModelCustody-Timestamp"], body, headers["X-ModelCustody-Signature"])
    assert not verify("s3cret", headers["X-ModelCustody-Timestamp"], body + b" ", headers["X-ModelCustody-Signature"])
    assert json.loads(body)["id"] == alert.id
    assert redis_client.llen(WEBHOOK_OUTBOX) == 0 and redis_client.llen("mc:webhook:processing:t") == 0


def test_undeliverable_webhook_goes_to_the_dead_letter_list(redis_client: redis.Redis) -> None:
    store = AlertStore(redis_client, notify=True)
    detect(store, "mallory")
    outcomes: list[str] = []
    # Nothing listens on this port: every attempt fails to connect.
    sender = WebhookSender(
        redis_client, "http://127.0.0.1:9/hook", "s", max_attempts=2, base_backoff_s=0.05, on_result=outcomes.append
    )
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while "dead_lettered" not in outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop()
    assert outcomes == ["retrying", "dead_lettered"]
    dead = [orjson.loads(x) for x in redis_client.lrange(DEAD, 0, -1)]  # type: ignore[union-attr]
    assert len(dead) == 1 and dead[0]["attempts"] == 2 and dead[0]["payload"]["client_id"] == "mallory"


def test_a_webhook_to_an_internal_address_is_refused_unless_allow_listed(redis_client: redis.Redis) -> None:
    from services.core.egress import EgressPolicy

    item = {"event": "alert.opened", "attempts": 0, "not_before": 0.0, "payload": {"id": "al_1"}}
    flaky_listener = Listener(fail_first=0)
    refused = WebhookSender(redis_client, flaky_listener.url, "s", egress=EgressPolicy(()))
    assert refused.deliver_once(item) is False  # loopback, not allow-listed (as in env=prod)
    refused.client.close()
    assert flaky_listener.bodies == []  # nothing reached the receiver
    allowed = WebhookSender(redis_client, flaky_listener.url, "s", egress=EgressPolicy(["127.0.0.0/8"]))
    assert allowed.deliver_once(item) is True
    allowed.client.close()
    assert len(flaky_listener.bodies) == 1
    flaky_listener.server.shutdown()
