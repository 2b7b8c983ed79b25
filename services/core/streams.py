"""Redis Streams helpers shared by the consumers of the query log (detector, archiver)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group from the start of the stream (a consumer deployed later still reads the
    earlier entries); the stream is created if missing, and an existing group is left as it is."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def run_steps(step: Callable[[], object], stop: threading.Event, log: logging.Logger) -> None:
    """Call ``step`` until ``stop`` is set; while Redis is unreachable, log it and retry every second (a
    consumer outlives a Redis restart instead of exiting)."""
    while not stop.is_set():
        try:
            step()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("Redis unavailable (%s); retrying", type(exc).__name__)
            stop.wait(1.0)
