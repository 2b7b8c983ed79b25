"""Redis Streams helpers shared by the consumers of the query log (detector, archiver)."""

from __future__ import annotations

import redis


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group from the start of the stream (a consumer deployed later still reads the
    earlier entries); the stream is created if missing, and an existing group is left as it is."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
