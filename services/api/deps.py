"""Shared dependencies of the admin API: settings, Redis, admin authentication."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import redis
from fastapi import Depends, HTTPException, Request, status

from services.core.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


def require_admin(request: Request, settings: SettingsDep) -> str:
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    # Constant-time comparison: the token is the only thing between the internet and the admin API.
    if not token or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong admin token",
                            headers={"WWW-Authenticate": "Bearer"})
    return "admin"


AdminDep = Annotated[str, Depends(require_admin)]


def get_celery(request: Request) -> Any:
    """The Celery app the API queues audits and registrations on (created in the lifespan, no worker code)."""
    return request.app.state.celery


CeleryDep = Annotated[Any, Depends(get_celery)]
