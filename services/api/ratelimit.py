"""A per-source token bucket, in process, for the API's unauthenticated endpoints that cost CPU.

In process on purpose: the limit protects this process's CPU, so the state belongs to it (two API replicas
each allow the rate; the operator's front proxy can add a global limit). The source is the peer address
of the TCP connection. ``X-Forwarded-For`` is not read: anyone can send it, and a limiter keyed on a
client-chosen value limits nothing. Behind a reverse proxy every client shares the proxy's bucket, which
errs on the safe side (docs/operations.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst`` per key; at most ``max_keys`` keys remembered.

    Forgetting the least recently seen key when full hands a new full bucket to whoever comes back after
    ``max_keys`` other sources: the memory stays bounded, and an attacker gains nothing an extra address
    would not give him anyway.
    """

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 10_000) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s must be > 0, burst and max_keys >= 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait

    @staticmethod
    def retry_after(wait_s: float) -> str:
        return str(max(1, math.ceil(wait_s)))
