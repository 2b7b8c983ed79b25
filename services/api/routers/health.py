"""Liveness (``/livez``: the process answers), readiness (``/healthz``: 503 while Redis is unreachable, so a
load balancer or compose's healthcheck stops sending work), metrics, and who the calling token is."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.deps import ReaderDep, RedisDep
from services.api.problems import errors
from services.api.schemas import Health, Live, Whoami
from services.core.version import __version__

router = APIRouter(tags=["health"])


@router.get("/livez", response_model=Live)
def live() -> Live:
    return Live(status="ok", version=__version__)


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "Redis is down"}})
def ready(r: RedisDep) -> JSONResponse:
    try:
        redis_ok = bool(r.ping())
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        redis_ok = False
    body = Health(status="ok" if redis_ok else "unavailable", redis=redis_ok, version=__version__)
    return JSONResponse(body.model_dump(), status_code=200 if redis_ok else 503)


@router.get("/v1/whoami", response_model=Whoami, responses=errors())
def whoami(who: ReaderDep) -> Whoami:
    """The calling token's name (the actor recorded on changes) and scope."""
    return Whoami(name=who.name, scope=who.scope)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    from prometheus_client import REGISTRY

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
