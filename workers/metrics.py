"""Prometheus metrics of the audit workers (the names dashboards/ and the alert rules use)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from audit.methods import METHODS
from services.core.buildinfo import register_build_info


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        register_build_info(registry, "worker")  # process metrics come with the default registry workers use
        self.audits = Counter(
            "modelcustody_audits_total",
            "Audits finished by method and final status (done or failed); a redelivered audit counts once.",
            ["method", "status"],
            registry=registry,
        )
        # Every series from 0: a series born at 1 has no increase() in Prometheus (ModelCustodyAuditFailed).
        for method in METHODS:
            for status in ("done", "failed", "cancelled"):
                self.audits.labels(method, status)
        self.duration = Histogram(
            "modelcustody_audit_duration_seconds",
            "Wall time of the attempt that finished an audit (load, queries, report, signature).",
            ["method"],
            # Local files on small models take about a second; HTTP suspects with rate limits take minutes;
            # the top buckets reach the one-hour hard limit.
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.registrations = Counter(
            "modelcustody_registrations_total",
            "Protected-model registrations finished by status.",
            ["status"],
            registry=registry,
        )
