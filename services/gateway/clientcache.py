"""The gateway's in-memory view of clients, policies and usage, refreshed from Redis in the background.

The hot path never waits on Redis for a known key: it reads dicts. A key not in the snapshot costs one
lookup (so a client added a moment ago works at once) and is then remembered as unknown until the next
refresh. Usage (rows per UTC day) is counted in memory and pushed to Redis with each refresh, so several
gateway instances share a quota with at most one refresh interval of lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core.clients import BY_KEY_KEY, CLIENTS_KEY, POLICIES_KEY, hash_key, parse_snapshot, usage_key, utc_day
from services.core.policy import NO_POLICY, OutputPolicy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass
class ClientCache:
    redis: aioredis.Redis
    refresh_s: float = 2.0
    keys: dict[str, str] = field(default_factory=dict)
    policies: dict[str, OutputPolicy] = field(default_factory=dict)
    _unknown: set[str] = field(default_factory=set)
    _usage: dict[str, int] = field(default_factory=dict)  # today's rows per client, all instances
    _pending_usage: dict[str, int] = field(default_factory=dict)  # rows not yet pushed to Redis
    _day: str = ""
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="client-cache-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self._push_usage()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                # Keep serving from the last snapshot: an outage must not lock every client out.
                log.warning("client refresh failed (%s); serving the cached snapshot", type(exc).__name__)

    async def refresh(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(CLIENTS_KEY)
        pipe.hgetall(BY_KEY_KEY)
        pipe.hgetall(POLICIES_KEY)
        clients, by_key, policies = await pipe.execute()
        self.keys, self.policies = parse_snapshot(clients, by_key, policies)
        self._unknown = set()
        await self._push_usage()

    async def _push_usage(self) -> None:
        day = utc_day(time.time())
        key = usage_key(day)  # shared with the admin API's usage view
        pending, self._pending_usage = self._pending_usage, {}
        try:
            pipe = self.redis.pipeline(transaction=False)
            for cid, n in pending.items():
                pipe.hincrby(key, cid, n)
            # Two days: long enough for any reader of "today" across a UTC midnight.
            pipe.expire(key, 2 * 86400)
            pipe.hgetall(key)
            results = await pipe.execute()
        except BaseException:
            for cid, n in pending.items():  # keep the counts for the next push
                self._pending_usage[cid] = self._pending_usage.get(cid, 0) + n
            raise
        totals: dict[bytes, bytes] = results[-1]
        self._usage = {k.decode(): int(v) for k, v in totals.items()}
        for cid, n in self._pending_usage.items():  # rows counted while the push was in flight
            self._usage[cid] = self._usage.get(cid, 0) + n
        self._day = day

    async def client_for_key(self, api_key: str) -> str | None:
        digest = hash_key(api_key)
        cid = self.keys.get(digest)
        if cid is not None or digest in self._unknown:
            return cid
        # Slow path, once per unknown key per refresh: a client added a moment ago should work now.
        try:
            cid_raw = await self.redis.hget(BY_KEY_KEY, digest)
            if cid_raw is not None:
                info_raw = await self.redis.hget(CLIENTS_KEY, cid_raw)
                if info_raw is not None and not orjson.loads(info_raw).get("revoked", False):
                    cid = cid_raw.decode() if isinstance(cid_raw, bytes) else str(cid_raw)
                    self.keys[digest] = cid
                    return cid
        except (RedisError, OSError):
            return None
        if len(self._unknown) < 100_000:  # bound the memory an attacker spraying keys can take
            self._unknown.add(digest)
        return None

    def policy_for(self, client_id: str) -> OutputPolicy:
        return self.policies.get(client_id, NO_POLICY)

    def admit(self, client_id: str, policy: OutputPolicy, n_rows: int, now: float) -> str | None:
        """Count ``n_rows`` against quota and rate; the reason for a refusal, or None to admit."""
        if policy.daily_quota is not None:
            day = utc_day(now)
            if day != self._day:
                self._usage = {}
                self._day = day
            used = self._usage.get(client_id, 0)
            if used + n_rows > policy.daily_quota:
                return f"daily quota of {policy.daily_quota} rows exhausted ({used} used)"
        if policy.rate_per_s is not None:
            bucket = self._buckets.get(client_id)
            if bucket is None:
                bucket = self._buckets[client_id] = _Bucket(policy.rate_per_s, now)
            # One second of burst: enough for a batch, not enough to defeat the rate.
            bucket.tokens = min(policy.rate_per_s, bucket.tokens + (now - bucket.updated) * policy.rate_per_s)
            bucket.updated = now
            if bucket.tokens < n_rows:
                return f"rate limit of {policy.rate_per_s:g} rows/s exceeded"
            bucket.tokens -= n_rows
        self._usage[client_id] = self._usage.get(client_id, 0) + n_rows
        self._pending_usage[client_id] = self._pending_usage.get(client_id, 0) + n_rows
        return None
