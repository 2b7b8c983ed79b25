"""The admin API: alerts, client risk, audits, reports, keys. Thin routers over the core modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from services.api.routers import alerts, audits, clients, enforcement, health, keys, protected_models, reports
from services.core.settings import Settings, get_settings
from services.core.tasks import task_client
from services.core.version import __version__


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.redis = redis.Redis.from_url(settings.redis_url)
        # Only the client side of Celery: the API queues tasks by name and never imports the worker code.
        app.state.celery = task_client(settings)
        yield
        app.state.celery.close()
        app.state.redis.close()

    app = FastAPI(title="Model Custody admin API", version=__version__, lifespan=lifespan)
    app.include_router(health.router)
    app.include_router(alerts.router)
    app.include_router(clients.router)
    app.include_router(audits.router)
    app.include_router(reports.router)
    app.include_router(keys.router)
    app.include_router(protected_models.router)
    app.include_router(enforcement.router)
    return app
