"""Periodic compliance reports: what the custody service saw and did over a period, signed like audit reports.

A compliance officer gets, per period (default: the last 24 hours), one in-toto statement in a DSSE
envelope signed with the service's Ed25519 key (the same key and verification as audit reports):

- query log: records logged in the period (counted from the stream's own entry ids, which are the
  millisecond times Redis assigned when the gateway wrote them);
- detector: clients at each risk level now; alerts opened in the period by severity and by current
  status, the signals that fired, the median query count at which alerts opened, policies tightened;
  webhook deliveries waiting and dead-lettered;
- audits submitted in the period by method, status and decision; protected models registered.

The statement's subject is the period itself, with as digest the SHA-256 of the sorted alert and audit
ids it covers: the report commits to exactly which alerts and audits it summarises, so a later dispute
("this alert was hidden from the report") can be settled by recomputing the digest from Redis.
Building it reads Redis only; counting the query log is O(records in the period), in pages.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from audit.signing import COMPLIANCE_PREDICATE
from services.core import keys
from services.core.alerts import Alert
from services.core.audits import AuditRecord
from services.core.settings import Settings
from services.core.signer_client import signer_for
from services.core.storage import reports_dir, write_atomic
from services.core.version import __version__

PAGE = 10_000  # stream entries per XRANGE page while counting


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def count_stream_entries(r: redis.Redis, stream: str, since: float, until: float) -> int:
    """Entries whose id time lies in [since, until), paging with XRANGE (exclusive start after a page)."""
    start, end = f"{int(since * 1000)}-0", f"{int(until * 1000) - 1}-18446744073709551615"
    n = 0
    while True:
        page: Any = r.xrange(stream, start, end, count=PAGE)
        n += len(page)
        if len(page) < PAGE:
            return n
        start = "(" + page[-1][0].decode()


def _records(r: redis.Redis, index: str, prefix: str, since: float, until: float) -> list[bytes]:
    ids: Any = r.zrangebyscore(index, since, f"({until}")
    if not ids:
        return []
    raws: Any = r.mget([prefix + i.decode() for i in ids])
    return [raw for raw in raws if raw]


def build_compliance_report(r: redis.Redis, settings: Settings, *, since: float, until: float) -> dict[str, Any]:
    """The report's predicate (plain JSON); ``ValueError`` for an empty or inverted period."""
    if not until > since:
        raise ValueError(f"the period must end after it starts (since={since}, until={until})")
    alerts = [Alert.from_json(raw) for raw in _records(r, keys.ALERTS_INDEX, keys.ALERT_PREFIX, since, until)]
    audits = [AuditRecord.from_json(raw) for raw in _records(r, keys.AUDITS_INDEX, keys.AUDIT_PREFIX, since, until)]
    protected: Any = r.zcount(keys.PROTECTED_INDEX, since, f"({until}")
    levels: Any = r.hvals(keys.RISK_LEVELS)
    fired = Counter(signal for a in alerts for signal in a.fired_signals)
    opened_at = [a.queries_at_open for a in alerts]
    return {
        "report": "compliance",
        "period": {"since": iso(since), "until": iso(until), "since_unix": since, "until_unix": until},
        "generated_at": iso(time.time()),
        "software": {"name": "modelcustody", "version": __version__},
        "query_log": {
            "stream": settings.queries_stream,
            "records_logged": count_stream_entries(r, settings.queries_stream, since, until),
        },
        "detector": {
            "clients_by_risk_level": dict(Counter(level.decode() for level in levels)),
            "alerts_opened": len(alerts),
            "alerts_by_severity": dict(Counter(a.severity for a in alerts)),
            "alerts_by_status_now": dict(Counter(a.status for a in alerts)),
            "signals_fired": dict(fired),
            "median_queries_at_alert": statistics.median(opened_at) if opened_at else None,
            "policies_tightened": sum(1 for a in alerts if a.policy_applied),
            "technique": "AML.T0024",
            "alerts": [
                {
                    "id": a.id,
                    "client_id": a.client_id,
                    "severity": a.severity,
                    "status": a.status,
                    "opened_at": iso(a.opened_at),
                    "risk_score": a.risk_score,
                    "fired_signals": a.fired_signals,
                }
                for a in sorted(alerts, key=lambda a: a.opened_at)
            ],
        },
        "webhook": {
            "waiting": r.llen(keys.WEBHOOK_OUTBOX),
            "dead_lettered": r.llen(keys.WEBHOOK_DEAD),
        },
        "audits": {
            "submitted": len(audits),
            "by_method": dict(Counter(a.method for a in audits)),
            "by_status": dict(Counter(a.status for a in audits)),
            "by_decision": dict(Counter(a.decision or "pending" for a in audits)),
            "ids": sorted(a.id for a in audits),
        },
        "protected_models_registered": int(protected),
    }


def covered_digest(predicate: dict[str, Any]) -> str:
    """SHA-256 over the sorted ids of the alerts and audits the report covers."""
    ids = sorted([a["id"] for a in predicate["detector"]["alerts"]] + predicate["audits"]["ids"])
    return hashlib.sha256(orjson.dumps(ids)).hexdigest()


def write_compliance_report(
    r: redis.Redis, settings: Settings, *, period_s: float = 86_400.0, until: float | None = None
) -> Path:
    """Build, sign and store the report for the ``period_s`` before ``until`` (default now); returns its path."""

    end = time.time() if until is None else until
    predicate = build_compliance_report(r, settings, since=end - period_s, until=end)
    subject = {
        "name": f"modelcustody-compliance/{predicate['period']['since']}/{predicate['period']['until']}",
        "digest": {"sha256": covered_digest(predicate)},
    }
    envelope = signer_for(settings).sign(predicate, [subject], COMPLIANCE_PREDICATE)
    stamp = datetime.fromtimestamp(end, UTC).strftime("%Y%m%dT%H%M%SZ")
    return write_atomic(reports_dir(settings) / f"compliance-{stamp}.dsse.json", envelope)
