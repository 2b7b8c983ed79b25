"""The admin API: clients, policies, alerts, audits, reports, keys, webhook dead letters. Thin routers over
the core modules; errors are RFC 9457 problem details (``services.api.problems``); every route but health,
metrics, the public key and report verification needs a bearer token (``services.api.deps``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY

from services.api import problems
from services.api.routers import alerts, audits, clients, enforcement, health, keys, protected_models, reports, webhooks
from services.core.buildinfo import register_build_info
from services.core.settings import Settings, get_settings
from services.core.signer_client import SignerUnavailable
from services.core.tasks import task_client
from services.core.version import __version__

_build_info_registered = False


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        global _build_info_registered
        if not _build_info_registered:  # the global registry lives as long as the process; apps may not
            register_build_info(REGISTRY, "api")
            _build_info_registered = True
        app.state.settings = settings
        app.state.redis = redis.Redis.from_url(settings.redis_url)
        # Only the client side of Celery: the API queues tasks by name and never imports the worker code.
        app.state.celery = task_client(settings)
        yield
        app.state.celery.close()
        app.state.redis.close()

    app = FastAPI(
        title="Model Custody admin API",
        version=__version__,
        lifespan=lifespan,
        description="Operator actions on a Model Custody deployment. Errors are application/problem+json "
        "(RFC 9457) with a stable `type` (urn:modelcustody:problem:<slug>, listed in docs/operations.md).",
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
    )
    problems.install(app)

    @app.exception_handler(SignerUnavailable)
    async def signer_down(request: Request, exc: Exception) -> JSONResponse:
        return problems.problem_response(request, 503, "dependency-unavailable", "the signer is unavailable; try again")

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        return problems.problem_response(request, 503, "dependency-unavailable", "Redis is unavailable; try again")

    app.include_router(health.router)
    app.include_router(alerts.router)
    app.include_router(clients.router)
    app.include_router(audits.router)
    app.include_router(reports.router)
    app.include_router(keys.router)
    app.include_router(protected_models.router)
    app.include_router(enforcement.router)
    app.include_router(webhooks.router)
    return app
