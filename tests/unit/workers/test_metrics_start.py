"""Every labelled series exists from the start (value 0), so increase()-based alert rules fire on the first
event after a restart; hard-limit failures are counted where a dying worker cannot lose them (Redis)."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry

from audit.methods import METHODS
from services.detector.engine import _REGISTRY as DETECTOR_SIGNALS
from services.detector.service.metrics import SIGNALS, DetectorMetrics
from workers.metrics import AuditMetrics, count_hard_limit_failure


def test_detector_series_exist_before_the_first_event() -> None:
    assert set(SIGNALS) == set(DETECTOR_SIGNALS)
    registry = CollectorRegistry()
    DetectorMetrics(registry)
    get = registry.get_sample_value
    for severity in ("medium", "high"):
        assert get("modelcustody_detector_alerts_opened_total", {"severity": severity}) == 0
        for signal in SIGNALS:
            assert get("modelcustody_detector_detections_total", {"signal": signal, "severity": severity}) == 0
    for outcome in ("delivered", "retrying", "dead_lettered"):
        assert get("modelcustody_detector_webhook_deliveries_total", {"outcome": outcome}) == 0


def test_audit_series_exist_and_hard_limit_failures_survive_the_worker(redis_client: redis.Redis) -> None:
    registry = CollectorRegistry()
    AuditMetrics(registry, redis_client)
    get = registry.get_sample_value
    for method in METHODS:
        for status in ("done", "failed", "cancelled"):
            assert get("modelcustody_audits_total", {"method": method, "status": status}) == 0
    assert get("modelcustody_registrations_total", {"status": "failed"}) == 0
    assert get("modelcustody_hard_limit_failures_total", {"task": "audit"}) == 0
    count_hard_limit_failure(redis_client, "audit")  # what the worker does just before it ends itself
    # A new worker's registry (the old process is gone) reads the count back.
    fresh = CollectorRegistry()
    AuditMetrics(fresh, redis_client)
    assert fresh.get_sample_value("modelcustody_hard_limit_failures_total", {"task": "audit"}) == 1
    assert fresh.get_sample_value("modelcustody_hard_limit_failures_total", {"task": "registration"}) == 0
