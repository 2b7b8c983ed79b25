"""Prometheus metrics of a detector process (injected registry; no label per client)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from services.core.metrics import counter, gauge, setup_registry
from services.detector.service.groups import NOT_POOLED_REASONS

# Every label value a series can take, created at start with value 0: an increase()-based alert rule needs the
# series to exist before its first increment, or the first alert after a restart goes unseen.
# services.detector.engine's registry (a test keeps them equal)
SIGNALS = ("boundary", "prada", "ood", "sweep", "steps")
SEVERITIES = ("medium", "high")
WEBHOOK_OUTCOMES = ("delivered", "retrying", "dead_lettered")
CACHE_OUTCOMES = ("hit", "miss")


class DetectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        setup_registry(registry, "detector")
        r = registry
        self.queries = counter(r, "modelcustody_detector_queries_analysed_total", "Query records analysed.")
        self.malformed = counter(
            r,
            "modelcustody_detector_records_malformed_total",
            "Stream entries that were not readable query records (acknowledged and set aside).",
        )
        self.skipped = counter(
            r,
            "modelcustody_detector_records_skipped_total",
            "Records of a model this detector has no baseline for (acknowledged, not analysed).",
        )
        self.over_model_cap = counter(
            r,
            "modelcustody_detector_records_over_model_cap_total",
            "Records of a model beyond a client's cap of distinct models (acknowledged, not analysed).",
        )
        self.responses = counter(
            r,
            "modelcustody_detector_responses_total",
            "Responses to detections by level (observe, notify, enforce).",
            ["level"],
            ("observe", "notify", "enforce"),
        )
        self.policy_changes = counter(
            r,
            "modelcustody_detector_policy_changes_total",
            "Automatic policy tightenings: applied, or only recorded in shadow mode.",
            ["mode"],
            ("applied", "shadow"),
        )
        self.alerts = counter(
            # Detections, not alerts: a detection folded into an open alert counts here too. New alerts are
            # modelcustody_detector_alerts_opened_total.
            r,
            "modelcustody_detector_detections_total",
            "Detections by fired signal and severity (each firing test, also those folded into an open alert).",
            ["signal", "severity"],
        )
        self.alerts_opened = counter(
            r, "modelcustody_detector_alerts_opened_total", "New alerts opened.", ["severity"], SEVERITIES
        )
        self.lag = gauge(
            r,
            "modelcustody_detector_consumer_lag_records",
            "Stream entries not yet delivered to the detectors' consumer group.",
        )
        self.pending = gauge(
            r, "modelcustody_detector_pending_records", "Entries delivered to a detector but not yet acknowledged."
        )
        self.clients_at_level = gauge(r, "modelcustody_detector_clients", "Clients at each risk level.", ["level"])
        self.batch_seconds = Histogram(
            "modelcustody_detector_batch_duration_seconds",
            "Time to analyse and commit one batch read from the stream.",
            # Batches of up to 1,000 records take ~1-100 ms; a stall shows up in the upper buckets.
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry,
        )
        self.commit_conflicts = counter(
            r,
            "modelcustody_detector_commit_conflicts_total",
            "Optimistic commits retried because another detector updated the same client.",
        )
        self.webhooks = counter(
            r,
            "modelcustody_detector_webhook_deliveries_total",
            "Webhook delivery attempts by outcome.",
            ["outcome"],
            WEBHOOK_OUTCOMES,
        )
        self.state_cache = counter(
            r,
            "modelcustody_detector_state_cache_total",
            "Client-state lookups served from this process's cache (hit) or read from Redis (miss).",
            ["outcome"],
            CACHE_OUTCOMES,
        )
        self.reclaimed = counter(
            r, "modelcustody_detector_reclaimed_total", "Stale pending entries taken over from a detector that stopped."
        )
        # Colluding keys (groups.py): no label per group or client, only totals and reasons.
        self.group_detections = counter(
            r,
            "modelcustody_detector_group_detections_total",
            "Cross-client (per source network) tests whose pooled stream alerted with enough members.",
        )
        self.group_alerts_opened = counter(
            r, "modelcustody_detector_group_alerts_opened_total", "New group (colluding keys) alerts opened."
        )
        self.group_rows_not_pooled = counter(
            r,
            "modelcustody_detector_group_rows_not_pooled_total",
            "Rows left out of their network's pooled stream: the network's only client so far (single), over the "
            "member table (members), over the member's row cap (cap), or of a client that alerted alone (explained).",
            ["reason"],
            NOT_POOLED_REASONS,
        )
        self.groups = gauge(r, "modelcustody_detector_groups", "Source-network groups held in Redis.")
        # The population baseline (population.py): below MODELCUSTODY_DETECTOR_POPULATION_MIN_CLIENTS it is
        # warming up and explains nothing; summed over this process's models.
        self.population_clients = gauge(
            r,
            "modelcustody_detector_population_clients",
            "Clients with rows in this detector process's population baselines (summed over models).",
        )
        self.groups_evicted = counter(
            r,
            "modelcustody_detector_groups_evicted_total",
            "Groups dropped, least recently seen first, to keep at most MODELCUSTODY_DETECTOR_GROUP_MAX.",
        )
        for severity in SEVERITIES:
            for signal in SIGNALS:
                self.alerts.labels(signal, severity)
