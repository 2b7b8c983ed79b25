"""Prometheus metrics of the gateway. Built on an injected registry so tests read a fresh one."""

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

# Proxy hops on loopback take ~0.3-3 ms; model calls up to seconds: buckets span 0.25 ms .. 10 s.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        register_build_info(registry, "gateway")
        if registry is not REGISTRY:  # the default registry has the process collectors already
            ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            PlatformCollector(registry=registry)
        self.requests = Counter(
            "modelcustody_gateway_requests_total",
            "Requests answered by the gateway, by protocol (oip-v2, kserve-v1, generic) and HTTP status class.",
            ["protocol", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "modelcustody_gateway_request_duration_seconds",
            "Time from the request's arrival to the answer, including the upstream call.",
            ["protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "modelcustody_gateway_upstream_duration_seconds",
            "Time the upstream model API took to answer.",
            ["protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rows = Counter(
            "modelcustody_gateway_rows_total",
            "Query rows forwarded to the model (a batched request counts each row).",
            registry=registry,
        )
        self.querylog_records = Counter(
            "modelcustody_querylog_records_total",
            "Query-log records by outcome: written to Redis, spilled to disk, replayed from disk, dropped.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("written", "spilled", "replayed", "dropped"):
            self.querylog_records.labels(outcome)
        self.buffer_depth = Gauge(
            "modelcustody_querylog_buffer_records",
            "Records waiting in the in-process buffer for the next flush.",
            registry=registry,
        )
        self.spill_bytes = Gauge(
            "modelcustody_querylog_spill_bytes",
            "Size of the local spill file holding records not yet replayed to Redis.",
            registry=registry,
        )
        self.redis_up = Gauge(
            "modelcustody_querylog_redis_up",
            "1 while the query log reaches Redis, 0 while it spills to disk.",
            registry=registry,
        )
        self.watermarked_rows = Counter(
            "modelcustody_gateway_watermarked_rows_total",
            "Answer rows served through the answer watermark, by mark: probabilities (keyed cosine), label "
            "(label mark, unchanged) and label-flipped (label replaced).",
            ["mark"],
            registry=registry,
        )
        for mark in ("probabilities", "label", "label-flipped"):
            self.watermarked_rows.labels(mark)
        self.watermark_skipped_rows = Counter(
            "modelcustody_gateway_watermark_skipped_rows_total",
            "Answer rows served unmarked because the watermark could not canonicalise their inputs.",
            registry=registry,
        )
