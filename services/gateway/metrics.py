"""Prometheus metrics of the gateway. Built on an injected registry so tests read a fresh one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from services.core.metrics import counter, gauge, setup_registry

# Proxy hops on loopback take ~0.3-3 ms; model calls up to seconds: buckets span 0.25 ms .. 10 s.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        setup_registry(registry, "gateway")
        r = registry
        self.requests = counter(
            r,
            "modelcustody_gateway_requests_total",
            "Requests answered by the gateway, by protocol (oip-v2, kserve-v1, generic) and HTTP status class.",
            ["protocol", "code"],
        )
        self.request_duration = _latency(
            r,
            "modelcustody_gateway_request_duration_seconds",
            "Time from the request's arrival to the answer, including the upstream call.",
        )
        self.upstream_duration = _latency(
            r, "modelcustody_gateway_upstream_duration_seconds", "Time the upstream model API took to answer."
        )
        self.rows = counter(
            r,
            "modelcustody_gateway_rows_total",
            "Query rows forwarded to the model (a batched request counts each row).",
        )
        self.querylog_records = counter(
            r,
            "modelcustody_querylog_records_total",
            "Query-log records by outcome: written to Redis, spilled to disk, replayed from disk, dropped; "
            "recovered: acknowledged by a Redis that then lost them (a crash), put back from the journal; "
            "lost: such rows the journal no longer held.",
            ["outcome"],
            ("written", "spilled", "replayed", "dropped", "recovered", "lost"),
        )
        self.buffer_depth = gauge(
            r, "modelcustody_querylog_buffer_records", "Records waiting in the in-process buffer for the next flush."
        )
        self.spill_bytes = gauge(
            r,
            "modelcustody_querylog_spill_bytes",
            "Size of the local spill file holding records not yet replayed to Redis.",
        )
        self.redis_up = gauge(
            r, "modelcustody_querylog_redis_up", "1 while the query log reaches Redis, 0 while it spills to disk."
        )
        self.watermarked_rows = counter(
            r,
            "modelcustody_gateway_watermarked_rows_total",
            "Answer rows served through the answer watermark, by mark: probabilities (keyed cosine), label "
            "(label mark, unchanged), label-flipped (label replaced) and label-boundary (runner-up served near the "
            "boundary).",
            ["mark"],
            ("probabilities", "label", "label-flipped", "label-boundary"),
        )
        self.watermark_skipped_rows = counter(
            r,
            "modelcustody_gateway_watermark_skipped_rows_total",
            "Answer rows served unmarked because the watermark could not canonicalise their inputs.",
        )


def _latency(registry: CollectorRegistry, name: str, documentation: str) -> Histogram:
    """A latency histogram by protocol (the request's and the upstream call's share buckets)."""
    return Histogram(name, documentation, ["protocol"], buckets=LATENCY_BUCKETS, registry=registry)
