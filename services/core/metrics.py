"""Helpers shared by the components' Prometheus metrics (gateway, detector, archiver): one way to set up a
registry and to declare a series, so that every component's series are built alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, PlatformCollector, ProcessCollector

from services.core.buildinfo import register_build_info


def setup_registry(registry: CollectorRegistry, component: str) -> None:
    """``modelcustody_build_info`` plus the process and platform collectors (process_cpu_seconds_total,
    process_resident_memory_bytes, ...) on a registry of the component's own."""
    register_build_info(registry, component)
    if registry is not REGISTRY:  # the default registry has the process collectors already
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)


def counter(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    values: Iterable[str] = (),
) -> Counter:
    """A counter; with ``values``, the series of each (single-label) value created at 0, so that an
    increase()-based alert rule sees the series before its first increment."""
    metric = Counter(name, documentation, list(labels), registry=registry)
    for value in values:
        metric.labels(value)
    return metric


def gauge(registry: CollectorRegistry, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    return Gauge(name, documentation, list(labels), registry=registry)
