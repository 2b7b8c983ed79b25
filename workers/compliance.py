"""The periodic compliance report as a Celery task; celery beat schedules it (``workers.celery_app``)."""

from __future__ import annotations

import redis

from services.core.settings import get_settings
from services.core.tasks import COMPLIANCE_REPORT_TASK
from workers.celery_app import app
from workers.compliance_report import write_compliance_report


@app.task(name=COMPLIANCE_REPORT_TASK)
def compliance_report(period_s: float | None = None) -> str:
    """Sign and store the report for the last ``period_s`` (default: the schedule's interval); its path."""
    settings = get_settings()
    r = redis.Redis.from_url(settings.redis_url)
    try:
        return str(write_compliance_report(r, settings, period_s=period_s or settings.compliance_report_interval_s))
    finally:
        r.close()
