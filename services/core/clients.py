"""API clients: who may query the model, identified by an API key stored only as its SHA-256.

Keys are 256-bit random tokens, so a plain SHA-256 (not a slow password hash) is enough: there is no
dictionary to guess from, and the gateway can look a key up in O(1). The clear key is printed once by
``modelcustody clients add`` and never stored or logged.

Redis layout (all hashes, small enough to load whole):
- ``mc:clients``          client id → JSON {id, created_at, revoked, key_hint}
- ``mc:clients:by_key``   sha256(key) → client id
- ``mc:policies``         client id → JSON output policy (written by operators and the detector)
- ``mc:policy:history:<client>``  list of JSON {at, by, policy}, newest first: the operators' changes
- ``mc:usage:<YYYYMMDD>`` client id → rows admitted that UTC day (the gateways' shared quota counter)
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

from services.core import keys
from services.core.policy import OutputPolicy

CLIENTS_KEY = keys.CLIENTS
BY_KEY_KEY = keys.CLIENTS_BY_KEY
POLICIES_KEY = keys.POLICIES
KEY_PREFIX = "mck_"
POLICY_HISTORY_MAX = 100  # changes kept per client: months of operator edits, a few kB
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def utc_day(ts: float) -> str:
    """The quota day a timestamp counts against (UTC), as named in ``mc:usage:<day>``."""
    return time.strftime("%Y%m%d", time.gmtime(ts))


def usage_key(day: str) -> str:
    return keys.usage(day)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(slots=True)
class ClientInfo:
    id: str
    created_at: float
    revoked: bool = False
    key_hint: str = ""  # the first characters of the key, so an operator can tell keys apart

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ClientInfo:
        return cls(**orjson.loads(raw))


def validate_client_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError("client name must be 1-64 characters of letters, digits, '_', '.', '-'")
    return name


class ClientRegistry:
    """Synchronous registry used by the CLI, the admin API and tests."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def add(self, name: str) -> tuple[ClientInfo, str]:
        validate_client_name(name)
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        info = ClientInfo(id=name, created_at=time.time(), key_hint=api_key[: len(KEY_PREFIX) + 4])
        if not self.r.hsetnx(CLIENTS_KEY, name, info.to_json()):
            raise ValueError(f"client '{name}' already exists")
        self.r.hset(BY_KEY_KEY, hash_key(api_key), name)
        return info, api_key

    def list(self) -> list[ClientInfo]:
        raw: dict[bytes, bytes] = self.r.hgetall(CLIENTS_KEY)  # type: ignore[assignment]
        return sorted((ClientInfo.from_json(v) for v in raw.values()), key=lambda c: c.created_at)

    def get(self, name: str) -> ClientInfo | None:
        raw = self.r.hget(CLIENTS_KEY, name)
        return ClientInfo.from_json(raw) if raw else None  # type: ignore[arg-type]

    def revoke(self, name: str) -> ClientInfo:
        info = self.get(name)
        if info is None:
            raise KeyError(f"no client '{name}'")
        info.revoked = True
        self.r.hset(CLIENTS_KEY, name, info.to_json())
        # Drop the key mapping too, so a revoked key can never resolve again.
        by_key: dict[bytes, bytes] = self.r.hgetall(BY_KEY_KEY)  # type: ignore[assignment]
        stale = [h for h, cid in by_key.items() if cid.decode() == name]
        if stale:
            self.r.hdel(BY_KEY_KEY, *stale)
        return info

    def rotate_key(self, name: str) -> tuple[ClientInfo, str]:
        """A new key for an active client; the old one stops resolving at the gateways' next refresh."""
        info = self.get(name)
        if info is None:
            raise KeyError(f"no client '{name}'")
        if info.revoked:
            raise ValueError(f"client '{name}' is revoked; create a new client instead")
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        info.key_hint = api_key[: len(KEY_PREFIX) + 4]
        by_key: dict[bytes, bytes] = self.r.hgetall(BY_KEY_KEY)  # type: ignore[assignment]
        stale = [h for h, cid in by_key.items() if cid.decode() == name]
        with self.r.pipeline() as pipe:  # MULTI/EXEC: never a moment with both keys or with none
            if stale:
                pipe.hdel(BY_KEY_KEY, *stale)
            pipe.hset(BY_KEY_KEY, hash_key(api_key), name)
            pipe.hset(CLIENTS_KEY, name, info.to_json())
            pipe.execute()
        return info, api_key

    def set_policy(self, name: str, policy: OutputPolicy, *, actor: str | None = None) -> None:
        """Replace the client's policy; with an ``actor``, also record the change in the client's history."""
        if actor is None:
            self.r.hset(POLICIES_KEY, name, orjson.dumps(policy.to_dict()))
            return
        entry = orjson.dumps({"at": time.time(), "by": actor, "policy": policy.to_dict()})
        history = keys.policy_history(name)
        with self.r.pipeline() as pipe:
            pipe.hset(POLICIES_KEY, name, orjson.dumps(policy.to_dict()))
            pipe.lpush(history, entry)
            pipe.ltrim(history, 0, POLICY_HISTORY_MAX - 1)
            pipe.execute()

    def policy_history(self, name: str, limit: int = POLICY_HISTORY_MAX) -> builtins.list[dict[str, Any]]:
        raws: Any = self.r.lrange(keys.policy_history(name), 0, limit - 1)
        return [orjson.loads(raw) for raw in raws]

    def usage_today(self, name: str, now: float | None = None) -> tuple[str, int]:
        """(day, rows admitted so far): what the gateways pushed, at most one refresh interval behind."""
        day = utc_day(time.time() if now is None else now)
        raw = self.r.hget(usage_key(day), name)
        return day, int(raw) if raw else 0  # type: ignore[arg-type]

    def get_policy(self, name: str) -> OutputPolicy:
        raw = self.r.hget(POLICIES_KEY, name)
        return OutputPolicy.from_dict(orjson.loads(raw)) if raw else OutputPolicy()  # type: ignore[arg-type]


def parse_snapshot(
    clients: dict[bytes, bytes], by_key: dict[bytes, bytes], policies: dict[bytes, bytes]
) -> tuple[dict[str, str], dict[str, OutputPolicy]]:
    """Key-hash → client id for active clients, and client id → policy: the gateway's in-memory view."""
    active = {k.decode() for k, v in clients.items() if not orjson.loads(v).get("revoked", False)}
    keys = {h.decode(): cid.decode() for h, cid in by_key.items() if cid.decode() in active}
    parsed: dict[str, OutputPolicy] = {}
    for cid, raw in policies.items():
        try:
            parsed[cid.decode()] = OutputPolicy.from_dict(orjson.loads(raw))
        except (ValueError, TypeError, orjson.JSONDecodeError):
            # A malformed policy must not open the gate: block the client until an operator fixes it.
            parsed[cid.decode()] = OutputPolicy(blocked=True, reason="malformed policy in Redis")
    return keys, parsed


def client_snapshot_json(info: ClientInfo, policy: OutputPolicy) -> dict[str, Any]:
    return {**asdict(info), "policy": policy.to_dict()}
