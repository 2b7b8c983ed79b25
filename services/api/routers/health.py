from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.deps import RedisDep
from services.core.version import __version__

router = APIRouter(tags=["health"])


@router.get("/healthz")
def health(r: RedisDep) -> dict[str, object]:
    try:
        redis_ok = bool(r.ping())
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        redis_ok = False
    return {"status": "ok" if redis_ok else "degraded", "redis": redis_ok, "version": __version__}


@router.get("/metrics")
def metrics() -> Response:
    from prometheus_client import REGISTRY

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
