"""Celery tasks: run an audit, register a protected model. State lives in Redis records, not in Celery.

Each task reads its record, marks it running (counting the attempt), reports progress both to the record
and to the task state (``PROGRESS`` with ``{"progress", "message"}``), and ends it done or failed. A message
redelivered after its worker died (acks_late, see ``workers.celery_app``) finds the record still
"running" and runs it again from the start (attempt n+1); one redelivered after the audit finished finds it
done and only acknowledges. An audit whose worker died ``MAX_ATTEMPTS`` times is failed rather than retried
forever: a suspect that kills its worker (out of memory, say) would otherwise kill every worker in turn.

Cancelling (``POST /v1/audits/{id}/cancel``): a queued audit is marked cancelled by the API and skipped here;
a running one carries ``cancel_requested_by`` and stops at its next progress update (at most
``PROGRESS_INTERVAL_S`` after the method reports progress), ending cancelled rather than failed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import REGISTRY, start_http_server

from services.core.audits import FINISHED, AuditStore
from services.core.protected import ProtectedIndex
from services.core.settings import Settings, get_settings
from services.core.tasks import REGISTER_PROTECTED_TASK, RUN_AUDIT_TASK
from workers.celery_app import app
from workers.metrics import AuditMetrics, count_hard_limit_failure

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
PROGRESS_INTERVAL_S = 0.25  # at most four record writes a second per audit; a poll every second sees movement


class AuditFailed(RuntimeError):
    """Raised after the record is marked failed, so the Celery task state is FAILURE too."""


class AuditCancelled(Exception):
    """Raised from a progress update once an operator asked for the audit to stop."""


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    audits: AuditStore
    protected: ProtectedIndex
    metrics: AuditMetrics


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """Created on first use in the worker process (docs/design.md, habit 6: nothing connects at import)."""
    global _runtime
    if _runtime is None:
        settings = get_settings()
        r = redis.Redis.from_url(settings.redis_url)
        _runtime = Runtime(settings, r, AuditStore(r), ProtectedIndex(r), AuditMetrics(REGISTRY, r))
    return _runtime


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    from services.core.signer_client import SignerNotConfigured, require_signer

    try:
        require_signer(get_settings())  # also for `celery -A workers.celery_app worker`, not only our CLI
    except SignerNotConfigured as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None  # SystemExit: Celery's signal dispatch swallows ordinary exceptions
    port = get_settings().worker_metrics_port
    if port:
        start_http_server(port)
        log.info("worker metrics on :%d/metrics", port)
    runtime()  # register the metrics now so a scrape before the first audit sees them


class _Progress:
    def __init__(self, task: Task, update: Any, ident: str) -> None:
        self.task, self.update, self.ident = task, update, ident
        self.last = 0.0

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        fraction = round(min(1.0, max(0.0, fraction)), 4)
        record = self.update(progress=fraction, message=message)
        cancelled_by = getattr(record, "cancel_requested_by", None)
        if cancelled_by:
            raise AuditCancelled(f"cancelled by {cancelled_by}")
        if self.task.request.id:  # absent when called directly (tests)
            self.task.update_state(state="PROGRESS", meta={"id": self.ident, "progress": fraction, "message": message})


@app.task(bind=True, name=RUN_AUDIT_TASK)
def run_audit(self: Task, audit_id: str) -> dict[str, Any]:
    from workers.runner import Deadline, HardLimit, execute_audit

    rt = runtime()
    record = rt.audits.get(audit_id)
    if record is None:
        log.warning("audit %s does not exist; dropping its message", audit_id)
        return {"id": audit_id, "status": "missing"}
    if record.status in FINISHED:
        return {"id": audit_id, "status": record.status, "duplicate_delivery": True}
    attempts = record.attempts + 1
    if attempts > MAX_ATTEMPTS:
        reason = f"gave up after {record.attempts} attempts: the worker was lost during each"
        rt.audits.update(audit_id, status="failed", error=reason, message=reason, finished_at=time.time())
        rt.metrics.audits.labels(record.method, "failed").inc()
        raise AuditFailed(reason)
    record = rt.audits.update(
        audit_id, status="running", attempts=attempts, started_at=time.time(), task_id=self.request.id,
        progress=0.0, error=None, message="started" if attempts == 1 else f"restarted (attempt {attempts})",
    )
    progress = _Progress(self, lambda **kw: rt.audits.update(audit_id, **kw), audit_id)
    started = time.monotonic()
    hard = rt.settings.audit_hard_time_limit_s

    def hard_limit_reached() -> None:
        reason = f"hard time limit of {hard:g} s exceeded; the worker ended itself"
        rt.audits.update(audit_id, status="failed", error=reason, message=f"failed: {reason}", finished_at=time.time())
        count_hard_limit_failure(rt.redis, "audit")

    try:
        with HardLimit(hard, hard_limit_reached, f"audit {audit_id}"):
            outcome = execute_audit(record, rt.settings, progress, Deadline(rt.settings.audit_soft_time_limit_s))
    except (SoftTimeLimitExceeded, TimeoutError) as exc:
        error = f"time limit: {exc}" if str(exc) else "time limit exceeded"
    except AuditCancelled as exc:
        rt.audits.update(audit_id, status="cancelled", message=str(exc), finished_at=time.time())
        rt.metrics.audits.labels(record.method, "cancelled").inc()
        return {"id": audit_id, "status": "cancelled"}
    except Exception as exc:  # noqa: BLE001 - any failure ends the audit as failed, with the reason
        log.exception("audit %s failed", audit_id)
        error = f"{type(exc).__name__}: {exc}"
    else:
        rt.audits.update(
            audit_id, status="done", progress=1.0, message=f"done: {outcome.verdict}", decision=outcome.verdict,
            report_path=str(outcome.report_path), finished_at=time.time(),
        )
        rt.metrics.audits.labels(record.method, "done").inc()
        rt.metrics.duration.labels(record.method).observe(time.monotonic() - started)
        return {"id": audit_id, "status": "done", "decision": outcome.verdict, "p_value": outcome.p_value,
                "queries_used": outcome.queries_used}
    rt.audits.update(audit_id, status="failed", error=error, message=f"failed: {error}", finished_at=time.time())
    rt.metrics.audits.labels(record.method, "failed").inc()
    rt.metrics.duration.labels(record.method).observe(time.monotonic() - started)
    raise AuditFailed(error)


@app.task(bind=True, name=REGISTER_PROTECTED_TASK)
def register_protected(self: Task, protected_id: str) -> dict[str, Any]:
    from workers.runner import HardLimit, execute_registration

    rt = runtime()
    record = rt.protected.get(protected_id)
    if record is None:
        return {"id": protected_id, "status": "missing"}
    if record.status in ("ready", "failed"):
        return {"id": protected_id, "status": record.status, "duplicate_delivery": True}
    attempts = record.attempts + 1
    if attempts > MAX_ATTEMPTS:
        reason = f"gave up after {record.attempts} attempts: the worker was lost during each"
        rt.protected.update(protected_id, status="failed", error=reason, message=reason, finished_at=time.time())
        rt.metrics.registrations.labels("failed").inc()
        raise AuditFailed(reason)
    record = rt.protected.update(
        protected_id, status="registering", attempts=attempts, task_id=self.request.id, error=None, message="started"
    )
    progress = _Progress(self, lambda **kw: rt.protected.update(protected_id, **kw), protected_id)
    hard = rt.settings.audit_hard_time_limit_s

    def hard_limit_reached() -> None:
        reason = f"hard time limit of {hard:g} s exceeded; the worker ended itself"
        rt.protected.update(protected_id, status="failed", error=reason, message=f"failed: {reason}",
                            finished_at=time.time())
        count_hard_limit_failure(rt.redis, "registration")

    try:
        with HardLimit(hard, hard_limit_reached, f"registration {protected_id}"):
            protected = execute_registration(record, rt.settings, progress)
    except Exception as exc:  # noqa: BLE001 - any failure ends the registration as failed, with the reason
        log.exception("registration %s failed", protected_id)
        error = f"{type(exc).__name__}: {exc}"
        rt.protected.update(protected_id, status="failed", error=error, message=f"failed: {error}",
                            finished_at=time.time())
        rt.metrics.registrations.labels("failed").inc()
        raise AuditFailed(error) from None
    rt.protected.update(
        protected_id, status="ready", progress=1.0, message="registered", finished_at=time.time(),
        registered_at=protected.registered_at, registration_sha256=protected.digest, methods=protected.methods(),
    )
    rt.metrics.registrations.labels("ready").inc()
    return {"id": protected_id, "status": "ready", "registration_sha256": protected.digest}
