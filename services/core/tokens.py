"""Scoped admin-API tokens, stored only as their SHA-256, created by ``modelcustody tokens create``.

Three scopes, each a superset of the one before it where it matters to an operator on call:

- ``read``: every ``GET`` of the admin API (a dashboard, a SIEM pulling alerts, an auditor's reviewer);
- ``auditor``: ``read`` plus submitting and cancelling audits and registering protected models;
- ``operator``: everything, including clients, keys, policies, alert acknowledgement and webhook requeue.

The single ``MODELCUSTODY_ADMIN_TOKEN`` of earlier versions keeps working as an ``operator`` token named
``admin``. Tokens are 256-bit random strings, so a plain SHA-256 is enough (no dictionary to guess from, as
for the gateway's client keys); the clear token is printed once and never stored or logged.

Redis layout: ``mc:admin:tokens`` hash, sha256(token) → JSON {name, scope, created_at, hint}; and
``mc:admin:token_names`` hash, name → sha256, so a name is unique and a token can be revoked by name.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Literal, cast

import orjson
import redis

from services.core import keys

Scope = Literal["read", "auditor", "operator"]
SCOPES: tuple[Scope, ...] = ("read", "auditor", "operator")
TOKENS_KEY = keys.ADMIN_TOKENS
NAMES_KEY = keys.ADMIN_TOKEN_NAMES
TOKEN_PREFIX = "mca_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the actor recorded on every change they make, and what they may do."""

    name: str
    scope: Scope
    created_at: float = 0.0
    hint: str = ""

    def allows(self, needed: Scope) -> bool:
        if needed == "read":
            return True
        if needed == "auditor":
            return self.scope in ("auditor", "operator")
        return self.scope == "operator"


class TokenStore:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def create(self, name: str, scope: str) -> tuple[Principal, str]:
        if not _NAME_RE.match(name):
            raise ValueError("token name must be 1-64 characters of letters, digits, '_', '.', '@', '-'")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if name == "admin":
            raise ValueError("'admin' is the name of MODELCUSTODY_ADMIN_TOKEN; choose another")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = hash_token(token)
        principal = Principal(name=name, scope=cast(Scope, scope), created_at=time.time(),
                              hint=token[: len(TOKEN_PREFIX) + 4])
        if not self.r.hsetnx(NAMES_KEY, name, digest):
            raise ValueError(f"a token named '{name}' already exists")
        self.r.hset(TOKENS_KEY, digest, orjson.dumps(asdict(principal)))
        return principal, token

    def resolve(self, token: str) -> Principal | None:
        raw = self.r.hget(TOKENS_KEY, hash_token(token))
        return Principal(**orjson.loads(raw)) if raw else None  # type: ignore[arg-type]

    def list(self) -> list[Principal]:
        raw: dict[bytes, bytes] = self.r.hgetall(TOKENS_KEY)  # type: ignore[assignment]
        return sorted((Principal(**orjson.loads(v)) for v in raw.values()), key=lambda p: p.created_at)

    def revoke(self, name: str) -> None:
        digest = self.r.hget(NAMES_KEY, name)
        if digest is None:
            raise KeyError(f"no token named '{name}'")
        with self.r.pipeline() as pipe:
            pipe.hdel(TOKENS_KEY, digest)  # type: ignore[arg-type]
            pipe.hdel(NAMES_KEY, name)
            pipe.execute()
