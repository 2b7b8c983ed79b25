"""Records stored as one JSON value per Redis key plus a sorted-set index (audits, protected models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import redis


class JsonRecord(Protocol):
    def to_json(self) -> bytes: ...


R = TypeVar("R", bound=JsonRecord)


def update_record(r: redis.Redis, key: str, from_json: Callable[[bytes], R], changes: dict[str, Any]) -> R:
    """Set fields of the record at ``key`` atomically (WATCH/MULTI, retried on a concurrent write).

    ``KeyError`` if there is no record at ``key``.
    """
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw: Any = pipe.get(key)
                if raw is None:
                    raise KeyError(key)
                record = from_json(raw)
                for name, value in changes.items():
                    setattr(record, name, value)
                pipe.multi()
                pipe.set(key, record.to_json())
                pipe.execute()
                return record
            except redis.WatchError:
                continue


def list_records(
    r: redis.Redis, index: str, key_of: Callable[[str], str], from_json: Callable[[bytes], R], limit: int
) -> list[R]:
    """The newest ``limit`` records of a sorted-set index (scored by creation time)."""
    ids: Any = r.zrevrange(index, 0, limit - 1)
    raws: Any = r.mget([key_of(i.decode()) for i in ids]) if ids else []
    return [from_json(raw) for raw in raws if raw]
