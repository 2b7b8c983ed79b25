"""``modelcustody_build_info``: one constant series per process naming its version and component.

Joining on it (``* on(instance) group_left(version) modelcustody_build_info``) puts the version beside any
metric, and ``count by (version) (modelcustody_build_info)`` shows a rollout in progress. Registered once per
registry; the value is always 1 (the Prometheus ``_info`` convention).
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Gauge

from services.core.version import __version__


def register_build_info(registry: CollectorRegistry, component: str) -> Gauge:
    gauge = Gauge("modelcustody_build_info", "Version of the running Model Custody component (always 1).",
                  ["version", "component", "python"], registry=registry)
    gauge.labels(__version__, component, platform.python_version()).set(1)
    return gauge
