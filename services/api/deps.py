"""Shared dependencies of the admin API: settings, Redis, Celery, and who is calling (scoped tokens).

Authentication is ``Authorization: Bearer <token>``, declared as the ``HTTPBearer`` security scheme so the
OpenAPI description says so. A token is either ``MODELCUSTODY_ADMIN_TOKEN`` (an ``operator`` named ``admin``,
compared in constant time) or a scoped token from ``modelcustody tokens create`` (looked up by its SHA-256,
``services.core.tokens``). The principal's name is the actor recorded on alert transitions, policy changes
and cancellations: the request body cannot claim to be someone else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

import redis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.problems import Problem
from services.core.settings import Settings
from services.core.tokens import Principal, Scope, TokenStore


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]

bearer = HTTPBearer(
    auto_error=False, description="MODELCUSTODY_ADMIN_TOKEN, or a token from `modelcustody tokens create`"
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def authenticate(credentials: BearerDep, settings: SettingsDep, r: RedisDep) -> Principal:
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise Problem(401, "unauthenticated", "missing bearer token", headers=_CHALLENGE)
    # Constant-time comparison: the token is the only thing between the internet and the admin API.
    if settings.admin_token and hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return Principal(name="admin", scope="operator")
    try:
        principal = TokenStore(r).resolve(token)
    except redis.RedisError:
        raise Problem(503, "dependency-unavailable", "Redis is unavailable; try again") from None
    if principal is None:
        raise Problem(401, "unauthenticated", "unknown or revoked token", headers=_CHALLENGE)
    return principal


def require(scope: Scope) -> Callable[..., Principal]:
    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.allows(scope):
            raise Problem(403, "insufficient-scope", f"token '{principal.name}' has scope {principal.scope}; "
                                                     f"this needs {scope}")
        return principal

    return dependency


ReaderDep = Annotated[Principal, Depends(require("read"))]
AuditorDep = Annotated[Principal, Depends(require("auditor"))]
OperatorDep = Annotated[Principal, Depends(require("operator"))]


def require_admin(request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """For the audit-side routers (reports, protected models): reads need any token, changes an auditor's."""
    needed: Scope = "read" if request.method in ("GET", "HEAD") else "auditor"
    return require(needed)(principal)


AdminDep = Annotated[Principal, Depends(require_admin)]


def get_celery(request: Request) -> Any:
    """The Celery app the API queues audits and registrations on (created in the lifespan, no worker code)."""
    return request.app.state.celery


CeleryDep = Annotated[Any, Depends(get_celery)]
