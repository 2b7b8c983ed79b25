"""Prometheus metrics of a detector process (injected registry; no label per client)."""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from services.core.buildinfo import register_build_info

# Every label value a series can take, created at start with value 0: an increase()-based alert rule needs the
# series to exist before its first increment, or the first alert after a restart goes unseen.
SIGNALS = ("boundary", "prada", "ood", "sweep")  # services.detector.engine's registry (a test keeps them equal)
SEVERITIES = ("medium", "high")
WEBHOOK_OUTCOMES = ("delivered", "retrying", "dead_lettered")
CACHE_OUTCOMES = ("hit", "miss")


class DetectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        register_build_info(registry, "detector")
        if registry is not REGISTRY:  # the default registry has the process collectors already
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.queries = Counter(
            "modelcustody_detector_queries_analysed_total", "Query records analysed.", registry=registry
        )
        self.malformed = Counter(
            "modelcustody_detector_records_malformed_total",
            "Stream entries that were not readable query records (acknowledged and set aside).",
            registry=registry,
        )
        self.skipped = Counter(
            "modelcustody_detector_records_skipped_total",
            "Records of a model this detector has no baseline for (acknowledged, not analysed).",
            registry=registry,
        )
        self.over_model_cap = Counter(
            "modelcustody_detector_records_over_model_cap_total",
            "Records of a model beyond a client's cap of distinct models (acknowledged, not analysed).",
            registry=registry,
        )
        self.responses = Counter(
            "modelcustody_detector_responses_total",
            "Responses to detections by level (observe, notify, enforce).",
            ["level"],
            registry=registry,
        )
        for level in ("observe", "notify", "enforce"):
            self.responses.labels(level)
        self.policy_changes = Counter(
            "modelcustody_detector_policy_changes_total",
            "Automatic policy tightenings: applied, or only recorded in shadow mode.",
            ["mode"],
            registry=registry,
        )
        for mode in ("applied", "shadow"):
            self.policy_changes.labels(mode)
        self.alerts = Counter(
            # Detections, not alerts: a detection folded into an open alert counts here too. New alerts are
            # modelcustody_detector_alerts_opened_total.
            "modelcustody_detector_detections_total",
            "Detections by fired signal and severity (each firing test, also those folded into an open alert).",
            ["signal", "severity"],
            registry=registry,
        )
        self.alerts_opened = Counter(
            "modelcustody_detector_alerts_opened_total", "New alerts opened.", ["severity"], registry=registry
        )
        self.lag = Gauge(
            "modelcustody_detector_consumer_lag_records",
            "Stream entries not yet delivered to the detectors' consumer group.",
            registry=registry,
        )
        self.pending = Gauge(
            "modelcustody_detector_pending_records",
            "Entries delivered to a detector but not yet acknowledged.",
            registry=registry,
        )
        self.clients_at_level = Gauge(
            "modelcustody_detector_clients", "Clients at each risk level.", ["level"], registry=registry
        )
        self.batch_seconds = Histogram(
            "modelcustody_detector_batch_duration_seconds",
            "Time to analyse and commit one batch read from the stream.",
            # Batches of up to 1,000 records take ~1-100 ms; a stall shows up in the upper buckets.
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry,
        )
        self.commit_conflicts = Counter(
            "modelcustody_detector_commit_conflicts_total",
            "Optimistic commits retried because another detector updated the same client.",
            registry=registry,
        )
        self.webhooks = Counter(
            "modelcustody_detector_webhook_deliveries_total",
            "Webhook delivery attempts by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.state_cache = Counter(
            "modelcustody_detector_state_cache_total",
            "Client-state lookups served from this process's cache (hit) or read from Redis (miss).",
            ["outcome"],
            registry=registry,
        )
        self.reclaimed = Counter(
            "modelcustody_detector_reclaimed_total",
            "Stale pending entries taken over from a detector that stopped.",
            registry=registry,
        )
        for severity in SEVERITIES:
            self.alerts_opened.labels(severity)
            for signal in SIGNALS:
                self.alerts.labels(signal, severity)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)
        for outcome in CACHE_OUTCOMES:
            self.state_cache.labels(outcome)
