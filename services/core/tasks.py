"""The task queue as every component sees it: task names and the Celery configuration.

The admin API queues tasks by name through a client it builds here (``task_client``) and never imports the
worker code; the workers (``workers.celery_app``) build their app from the same ``celery_config``, so the
two sides cannot disagree on broker, serialisation or visibility timeout.

Reliability settings, each for a reason:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it finished, so a
  worker killed mid-audit (OOM, SIGKILL, node loss) leaves the message to be redelivered.
- ``worker_prefetch_multiplier=1``: an audit takes minutes; a worker must not hoard queued audits.
- ``visibility_timeout``: the Redis transport redelivers an unacknowledged message after this long, so it
  must exceed the longest audit (the hard time limit), or a running audit would be started twice.
- soft/hard time limits: the soft one lets the task record "failed: time limit"; the hard one kills it.
  Celery enforces them only in the prefork pool; ``modelcustody serve worker`` runs the solo pool (one
  process: a SIGKILL takes the audit with it, nothing orphaned), where the soft limit is checked by the
  task itself at every progress report (``workers.runner.Deadline``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from services.core.settings import Settings

RUN_AUDIT_TASK = "workers.tasks.run_audit"
REGISTER_PROTECTED_TASK = "workers.tasks.register_protected"
COMPLIANCE_REPORT_TASK = "workers.compliance.compliance_report"
WORKER_MODULES = ("workers.tasks", "workers.compliance")


def celery_config(s: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": s.audit_soft_time_limit_s,
        "task_time_limit": s.audit_hard_time_limit_s,
        "broker_transport_options": {
            "visibility_timeout": s.audit_visibility_timeout_s,
            # kombu sweeps for expired unacknowledged messages every interval × throttle seconds (default
            # 10 × 10); a fifth of the visibility timeout (at most 10 s), every time, bounds the extra delay
            # before a dead worker's audit is redelivered without loading Redis (one ZRANGE per sweep).
            "unacked_restore_interval": max(0.5, min(10.0, s.audit_visibility_timeout_s / 5)),
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": s.audit_visibility_timeout_s},
        "task_track_started": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 7 * 86400,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if s.compliance_report_interval_s > 0:
        # Run by `celery -A workers.celery_app beat` (one beat process per deployment, see docker-compose.yml).
        config["beat_schedule"] = {
            "compliance-report": {"task": COMPLIANCE_REPORT_TASK, "schedule": s.compliance_report_interval_s}
        }
    return config


def task_client(s: Settings) -> Celery:
    """A Celery app that only sends tasks by name (it registers none)."""
    app = Celery("modelcustody", broker=s.broker_url, backend=s.redis_url)
    app.conf.update(celery_config(s))
    return app
