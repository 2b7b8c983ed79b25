"""Extraction alerts: stored in Redis, de-duplicated per client and window, with a lifecycle.

Layout:
- ``mc:alerts``               stream of alert events (opened, updated, acknowledged, resolved) for SIEMs
- ``mc:alert:<id>``           the alert record (JSON)
- ``mc:alerts:index``         sorted set id → opened-at, for listing newest first
- ``mc:alert:open:<client>``  the id of the client's open alert; while it lives (one window), new
                              detections update that alert instead of opening another

Lifecycle: open → acknowledged → resolved. A resolved alert frees the client: the next detection
opens a new alert. An acknowledged one still absorbs detections until its window ends.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
import redis

from services.core import keys
from services.core.jsonrecords import update_record

AlertStatus = Literal["open", "acknowledged", "resolved"]
ATLAS_TECHNIQUE = "AML.T0024"  # MITRE ATLAS: Exfiltration via ML Inference API
ATLAS_NAME = "Exfiltration via ML Inference API"
# The webhook outbox: an opened alert is pushed here in the same MULTI/EXEC that records it, so a crash
# between "alert stored" and "webhook queued" cannot happen (services.detector.service.webhook drains it).
WEBHOOK_OUTBOX = keys.WEBHOOK_OUTBOX


@dataclass
class Alert:
    id: str
    client_id: str
    status: AlertStatus
    severity: str  # "medium" | "high"
    risk_score: float
    window_start: float
    window_end: float
    opened_at: float
    updated_at: float
    queries_seen: int  # the client's queries analysed when the alert was last updated
    signals: list[dict[str, Any]]  # per signal: name, statistic, threshold, p_value, fired, evidence
    fired_signals: list[str]
    technique: str = ATLAS_TECHNIQUE
    technique_name: str = ATLAS_NAME
    detections: int = 1  # detections folded into this alert (de-duplication)
    history: list[dict[str, Any]] = field(default_factory=list)  # status changes: who, when, note
    policy_applied: dict[str, Any] | None = None
    queries_at_open: int = 0  # the client's queries analysed when the alert opened (detection latency)
    model: str = ""  # the model whose queries raised it
    risk_threshold: float = 0.0  # the risk score from which the detector alerts (benign FPR budget)
    # The detector's latest response (services/core/response.py): level observe/notify/enforce and why.
    response: dict[str, Any] = field(default_factory=dict)
    # Every policy change made for this alert (automatic or confirmed), with reason; reversible via the API.
    policy_changes: list[dict[str, Any]] = field(default_factory=list)
    # "client": one client's own stream; "group": the pooled stream of a source network's clients (colluding
    # keys), whose client_id is "group:<network>" and whose members are the clients it counted.
    kind: str = "client"
    members: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Alert:
        return cls(**orjson.loads(raw))


class AlertStore:
    def __init__(
        self, r: redis.Redis, *, stream: str = keys.ALERTS_STREAM, window_s: float = 3600.0, notify: bool = False
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.r = r
        self.notify = notify  # queue a webhook for each opened or escalated alert
        self.stream = stream
        self.window_s = window_s

    def key(self, alert_id: str) -> str:
        return keys.alert(alert_id)

    def current(self, client_id: str) -> Alert | None:
        """The client's open (or acknowledged, still absorbing) alert, if any."""
        current_id = self.r.get(keys.open_alert(client_id))
        if not current_id:
            return None
        alert = self.get(current_id.decode())  # type: ignore[union-attr]
        return None if alert is None or alert.status == "resolved" else alert

    def raise_or_update(
        self,
        *,
        client_id: str,
        severity: str,
        risk_score: float,
        signals: list[dict[str, Any]],
        fired: list[str],
        window_start: float,
        window_end: float,
        queries_seen: int,
        model: str = "",
        risk_threshold: float = 0.0,
        queries_at_test: int | None = None,  # the client's query count at the test that fired
        response: dict[str, Any] | None = None,  # the response decided for this detection
        kind: str = "client",
        members: list[str] | None = None,
    ) -> tuple[Alert, bool]:
        """Open an alert for the client, or fold this detection into its open one. Returns (alert, is_new).

        A webhook is queued for an opened or escalated alert when the store notifies and the response is
        not ``observe``; an alert whose response rises from ``observe`` counts as escalated.
        """
        now = time.time()
        level = (response or {}).get("level", "notify")
        notify = self.notify and level != "observe"
        open_key = keys.open_alert(client_id)
        for _ in range(10):  # optimistic concurrency: detectors in other processes may race on a client
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(open_key)
                    current_id = pipe.get(open_key)
                    current = None
                    if current_id:
                        raw = pipe.get(self.key(current_id.decode()))  # type: ignore[union-attr]
                        current = Alert.from_json(raw) if raw else None
                        if current is not None and current.status == "resolved":
                            current = None
                    if current is None:
                        alert = Alert(
                            id=f"al_{int(now)}_{secrets.token_hex(4)}",
                            client_id=client_id,
                            status="open",
                            severity=severity,
                            risk_score=risk_score,
                            window_start=window_start,
                            window_end=window_end,
                            opened_at=now,
                            updated_at=now,
                            queries_seen=queries_seen,
                            signals=signals,
                            fired_signals=fired,
                            queries_at_open=queries_seen if queries_at_test is None else queries_at_test,
                            model=model,
                            risk_threshold=risk_threshold,
                            response=dict(response or {}),
                            kind=kind,
                            members=sorted(members or []),
                        )
                        event = "opened"
                    else:
                        alert = current
                        alert.detections += 1
                        alert.updated_at = now
                        alert.window_end = max(alert.window_end, window_end)
                        alert.queries_seen = queries_seen
                        if risk_score >= alert.risk_score:
                            alert.risk_score, alert.signals = risk_score, signals
                        alert.fired_signals = sorted(set(alert.fired_signals) | set(fired))
                        alert.members = sorted(set(alert.members) | set(members or []))
                        event = "updated"
                        if severity == "high" and alert.severity != "high":
                            alert.severity = "high"
                            event = "escalated"
                        if response is not None:
                            if alert.response.get("level") == "observe" and level != "observe":
                                event = "escalated"
                            alert.response = dict(response)
                    pipe.multi()
                    pipe.set(self.key(alert.id), alert.to_json())
                    pipe.zadd(keys.ALERTS_INDEX, {alert.id: alert.opened_at})
                    if event == "opened":
                        pipe.set(open_key, alert.id, ex=int(self.window_s))
                    pipe.xadd(self.stream, {"event": event, "alert": alert.to_json()}, maxlen=100_000, approximate=True)
                    if notify and event in ("opened", "escalated"):
                        item = {"event": f"alert.{event}", "attempts": 0, "not_before": 0.0, "payload": asdict(alert)}
                        pipe.lpush(WEBHOOK_OUTBOX, orjson.dumps(item))
                    pipe.execute()
                    return alert, event == "opened"
                except redis.WatchError:
                    continue
        raise RuntimeError(f"could not record an alert for {client_id}: too much contention")

    def record_policy(self, alert_id: str, policy: dict[str, Any]) -> Alert:
        """Note on the alert the output policy the detector applied to its client (shown to the SOC)."""
        return update_record(self.r, self.key(alert_id), Alert.from_json, {"policy_applied": policy})

    def get(self, alert_id: str) -> Alert | None:
        raw = self.r.get(self.key(alert_id))
        return Alert.from_json(raw) if raw else None  # type: ignore[arg-type]

    def list(self, *, status: str | None = None, client_id: str | None = None, limit: int = 100) -> list[Alert]:
        ids = self.r.zrevrange(keys.ALERTS_INDEX, 0, -1)
        out: list[Alert] = []
        for chunk_start in range(0, len(ids), 200):  # type: ignore[arg-type]
            chunk = ids[chunk_start : chunk_start + 200]  # type: ignore[index]
            for raw in self.r.mget([self.key(i.decode()) for i in chunk]):  # type: ignore[union-attr]
                if raw is None:
                    continue
                alert = Alert.from_json(raw)
                if (status is None or alert.status == status) and (client_id is None or alert.client_id == client_id):
                    out.append(alert)
                    if len(out) >= limit:
                        return out
        return out

    def transition(self, alert_id: str, to: AlertStatus, *, actor: str, note: str = "") -> Alert:
        allowed = {"open": {"acknowledged", "resolved"}, "acknowledged": {"resolved"}, "resolved": set()}
        key = self.key(alert_id)
        first = self.get(alert_id)
        if first is None:
            raise KeyError(alert_id)
        open_key = keys.open_alert(first.client_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, open_key)
                    raw = pipe.get(key)
                    alert = Alert.from_json(raw)  # type: ignore[arg-type]
                    if to not in allowed[alert.status]:
                        raise ValueError(f"alert {alert_id} is {alert.status}; it cannot become {to}")
                    frees_client = to == "resolved" and (pipe.get(open_key) or b"").decode() == alert_id  # type: ignore[union-attr]
                    alert.status = to
                    alert.updated_at = time.time()
                    alert.history.append({"status": to, "by": actor, "at": alert.updated_at, "note": note})
                    pipe.multi()
                    pipe.set(key, alert.to_json())
                    if frees_client:
                        pipe.delete(open_key)
                    pipe.xadd(self.stream, {"event": to, "alert": alert.to_json()}, maxlen=100_000, approximate=True)
                    pipe.execute()
                    return alert
                except redis.WatchError:
                    continue
