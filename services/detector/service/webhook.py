"""Webhook delivery of alerts: a durable outbox in Redis, HMAC-SHA256 signatures, retries with backoff.

The receiver verifies ``X-ModelCustody-Signature: sha256=<hex>`` = HMAC-SHA256(secret, "<timestamp>.<body>")
and rejects a ``X-ModelCustody-Timestamp`` older than a few minutes (replay protection), the scheme
Stripe and GitHub webhooks use. An alert is pushed to the outbox in the same step that records it, so
a crash of the detector never loses a notification; deliveries that fail ``max_attempts`` times go to
a dead-letter list an operator can inspect and re-queue.

Each delivery passes the egress policy (``services.core.egress``: a webhook URL that resolves to an
internal address is refused unless the operator allow-listed its network, and the connection is pinned
to the address that was checked), and the receiver's answer body is never read: only its status counts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time

import httpx
import orjson
import redis

from services.core import keys
from services.core.alerts import WEBHOOK_OUTBOX
from services.core.egress import EgressPolicy, EgressRefused
from services.core.webhooks import DEAD_LETTERS

log = logging.getLogger(__name__)

OUTBOX = WEBHOOK_OUTBOX
DEAD = DEAD_LETTERS  # the admin API lists and requeues them (services.core.webhooks)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: float = 300) -> bool:
    try:
        fresh = abs(time.time() - float(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender:
    """Drains the outbox in a background thread. Several detector processes may run one each."""

    def __init__(
        self,
        r: redis.Redis,
        url: str,
        secret: str,
        *,
        max_attempts: int = 8,
        base_backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        on_result: object = None,
        instance: str = "detector",
        egress: EgressPolicy | None = None,  # None: the deployment's (settings)
    ) -> None:
        if max_attempts < 1 or base_backoff_s <= 0:
            raise ValueError("max_attempts must be >= 1 and base_backoff_s > 0")
        self.r = r
        self.url = url
        self.secret = secret
        self.max_attempts = max_attempts
        self.base_backoff_s = base_backoff_s
        if egress is None:
            from services.core.settings import get_settings

            egress = EgressPolicy.from_settings(get_settings())
        self.egress = egress
        # No redirects: a 30x to an internal address would bypass the egress check.
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self.on_result = on_result
        # An item being delivered sits in this instance's processing list, so a crash mid-delivery
        # leaves it there to be re-queued by the next start instead of losing it.
        self.processing = keys.webhook_processing(instance)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        while self.r.lmove(self.processing, OUTBOX, "RIGHT", "RIGHT") is not None:
            pass
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.client.close()

    def deliver_once(self, item: dict[str, object]) -> bool:
        body = orjson.dumps({"event": item["event"], **item["payload"]})  # type: ignore[dict-item]
        ts = f"{time.time():.3f}"
        headers = {
            "Content-Type": "application/json",
            "X-ModelCustody-Event": str(item["event"]),
            "X-ModelCustody-Timestamp": ts,
            "X-ModelCustody-Signature": sign(self.secret, ts, body),
        }
        try:
            target = self.egress.pin(self.url)
        except EgressRefused as exc:
            log.warning("webhook delivery refused by the egress policy: %s", exc)
            return False
        headers["Host"] = target.host_header
        try:
            request = self.client.build_request(
                "POST", target.url, content=body, headers=headers, extensions=target.extensions
            )
            resp = self.client.send(request, stream=True)  # the status is all we need: the body is never read
            resp.close()
        except httpx.HTTPError as exc:
            log.warning("webhook delivery failed: %s", type(exc).__name__)
            return False
        return 200 <= resp.status_code < 300

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.r.blmove(OUTBOX, self.processing, 1, "RIGHT", "LEFT")
            except (redis.RedisError, OSError):
                time.sleep(1)
                continue
            if raw is None:
                continue
            try:
                self._handle(raw)  # type: ignore[arg-type]
            except (redis.RedisError, OSError):
                log.warning("Redis error while delivering a webhook; it stays queued")
                time.sleep(1)

    def _handle(self, raw: bytes) -> None:
        """Deliver one item; at-least-once (a crash between delivery and bookkeeping re-sends it)."""
        item = orjson.loads(raw)
        requeue: bytes | None = None
        wait = float(item.get("not_before", 0)) - time.time()
        if wait > 0:
            requeue, outcome = raw, None  # not due yet: to the back of the queue
        elif self.deliver_once(item):
            outcome = "delivered"
        else:
            item["attempts"] = int(item.get("attempts", 0)) + 1
            if item["attempts"] >= self.max_attempts:
                outcome = "dead_lettered"
            else:
                # Exponential backoff: 0.5, 1, 2, 4 ... s, so a receiver down for a minute still gets it.
                item["not_before"] = time.time() + self.base_backoff_s * 2 ** (item["attempts"] - 1)
                requeue, outcome = orjson.dumps(item), "retrying"
        with self.r.pipeline() as pipe:
            if requeue is not None:
                pipe.lpush(OUTBOX, requeue)
            elif outcome == "dead_lettered":
                pipe.lpush(DEAD, orjson.dumps(item))
            pipe.lrem(self.processing, 1, raw)  # type: ignore[arg-type]
            pipe.execute()
        if outcome is None:
            self._stop.wait(min(wait, 0.25))
        elif callable(self.on_result):
            self.on_result(outcome)
