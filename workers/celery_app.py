"""The Celery application of the audit workers (Redis broker and result backend).

Its configuration and the task names live in ``services.core.tasks``, shared with the admin API's client.
``app`` exists at import because ``celery -A workers.celery_app`` and the task decorators need it; only
worker processes (and ``modelcustody serve worker``) import this module.
"""

from __future__ import annotations

from celery import Celery

from services.core.settings import Settings, get_settings
from services.core.tasks import WORKER_MODULES, celery_config


def create_celery(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    app = Celery("modelcustody", broker=s.broker_url, backend=s.redis_url, include=list(WORKER_MODULES))
    app.conf.update(celery_config(s))
    return app


app = create_celery()
