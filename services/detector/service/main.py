"""A detector process: engines, the stream consumer, the webhook sender and a Prometheus endpoint.

``modelcustody serve detector`` runs ``run_detector``. SIGTERM/SIGINT stop the consumer after its current
batch (already committed or not yet started: nothing half-done), then the webhook sender.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType

import redis
from prometheus_client import CollectorRegistry, start_http_server

from services.core.alerts import AlertStore
from services.core.egress import EgressPolicy
from services.core.response import ResponseConfig
from services.core.settings import Settings, get_settings, settings_section
from services.detector.population import PopulationConfig
from services.detector.service.consumer import DetectorConfig, DetectorWorker
from services.detector.service.groups import GroupConfig
from services.detector.service.metrics import DetectorMetrics
from services.detector.service.runtime import EngineSet, ReferenceResolver, load_or_fit_engines
from services.detector.service.webhook import WebhookSender

log = logging.getLogger(__name__)


def build_worker(
    settings: Settings,
    r: redis.Redis,
    metrics: DetectorMetrics,
    fallback: Callable[[], EngineSet] | None = None,
    resolve_reference: ReferenceResolver | None = None,
) -> DetectorWorker:
    """``fallback`` builds the engines when no baseline is configured (the CLI passes the demo's outside prod)."""
    engines = load_or_fit_engines(
        settings.detector_reference_path,
        fallback,
        reference_model=settings.detector_reference_model,
        resolve_reference=resolve_reference,
    )
    alerts = AlertStore(
        r, stream=settings.alerts_stream, window_s=settings.alert_window_s, notify=bool(settings.webhook_url)
    )
    population = settings_section(settings, "detector_population_", PopulationConfig)
    config = DetectorConfig(
        stream=settings.queries_stream,
        consumer=settings.detector_consumer or f"{socket.gethostname()}-{os.getpid()}",
        batch_max=settings.detector_batch_max,
        reclaim_idle_s=settings.detector_reclaim_idle_s,
        response=ResponseConfig.from_settings(settings),
        max_models_per_client=settings.detector_max_models_per_client,
        state_cache_clients=settings.detector_state_cache_clients,
        groups=GroupConfig.from_settings(settings) if settings.detector_groups else None,
        group_max=settings.detector_group_max,
        group_idle_s=settings.detector_group_idle_s,
        group_response=settings.detector_group_response,
        population=population if settings.detector_population else None,
        population_save_s=settings.detector_population_save_s,
    )
    return DetectorWorker(r, engines, alerts, metrics, config)


def run_detector(
    settings: Settings | None = None,
    fallback: Callable[[], EngineSet] | None = None,
    resolve_reference: ReferenceResolver | None = None,
) -> None:
    settings = settings or get_settings()
    r = redis.Redis.from_url(settings.redis_url)
    registry = CollectorRegistry()
    metrics = DetectorMetrics(registry)
    worker = build_worker(settings, r, metrics, fallback, resolve_reference)
    sender: WebhookSender | None = None
    if settings.webhook_url:
        sender = WebhookSender(
            r,
            settings.webhook_url,
            settings.webhook_secret,
            instance=worker.consumer,
            on_result=lambda outcome: metrics.webhooks.labels(outcome).inc(),
            egress=EgressPolicy.from_settings(settings),
        )
        sender.start()
    if settings.detector_metrics_port:
        start_http_server(settings.detector_metrics_port, registry=registry)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("detector %s ready: models %s", worker.consumer, ", ".join(worker.engines))
    try:
        worker.run()
    finally:
        if sender is not None:
            sender.stop()
        r.close()
