"""Prometheus metrics of the audit workers (the names dashboards/ and the alert rules use)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from audit.methods import METHODS
from services.core import keys
from services.core.buildinfo import register_build_info

AUDIT_STATUSES = ("done", "failed", "cancelled")
REGISTRATION_STATUSES = ("ready", "failed")
# A hard-limit failure ends the worker process (workers.runner.HardLimit) before any scrape could see a
# counter in its memory, so the count lives in Redis (one hash field per task kind) and every worker exposes it.
HARD_LIMIT_KEY = keys.HARD_LIMIT_FAILURES
HARD_LIMIT_TASKS = ("audit", "registration")


class HardLimitCollector(Collector):
    """``modelcustody_hard_limit_failures_total{task}`` read from Redis at scrape time (deployment-wide: every
    worker exposes the same value, so aggregate with ``max``, not ``sum``)."""

    def __init__(self, r: Any) -> None:
        self.r = r

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "modelcustody_hard_limit_failures",
            "Audits and registrations failed at the hard time limit (their worker ended itself), deployment-wide.",
            labels=["task"],
        )
        try:
            stored: Any = self.r.hgetall(HARD_LIMIT_KEY)
        except Exception:  # noqa: BLE001 - Redis down: no sample this scrape rather than a failed scrape
            return
        counts = {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in stored.items()}
        for task in HARD_LIMIT_TASKS:
            family.add_metric([task], counts.get(task, 0.0))
        yield family


def count_hard_limit_failure(r: Any, task: str) -> None:
    r.hincrby(HARD_LIMIT_KEY, task, 1)


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry, r: Any = None) -> None:
        self.registry = registry
        register_build_info(registry, "worker")  # process metrics come with the default registry workers use
        self.audits = Counter(
            "modelcustody_audits_total",
            "Audits finished by method and final status (done or failed); a redelivered audit counts once.",
            ["method", "status"],
            registry=registry,
        )
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
        # Every label set exists from the start (0), so increase()-based rules see the first failure.
        for method in METHODS:
            self.duration.labels(method)
            for status in AUDIT_STATUSES:
                self.audits.labels(method, status)
        for status in REGISTRATION_STATUSES:
            self.registrations.labels(status)
        if r is not None:
            registry.register(HardLimitCollector(r))
