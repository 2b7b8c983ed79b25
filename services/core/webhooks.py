"""The webhook outbox and its dead letters, as the detector (sender) and the admin API (operator) share them.

An item is JSON ``{"event", "attempts", "not_before", "payload"}``. The sender moves an item it failed to
deliver ``max_attempts`` times from the outbox to the dead-letter list; an operator inspects that list and
requeues it (``POST /v1/webhooks/dead-letters/requeue``) once the receiver is fixed, with the attempts reset.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from services.core import keys
from services.core.alerts import WEBHOOK_OUTBOX

DEAD_LETTERS = keys.WEBHOOK_DEAD

# Atomic per item: pop the oldest dead letter, reset its attempts, push it onto the outbox. A crash between
# the pop and the push cannot lose it. cjson re-encodes the item, which only changes number formatting.
_REQUEUE_ONE = """
local raw = redis.call('RPOP', KEYS[1])
if not raw then return 0 end
local ok, item = pcall(cjson.decode, raw)
if ok and type(item) == 'table' then
  item['attempts'] = 0
  item['not_before'] = 0
  raw = cjson.encode(item)
end
redis.call('LPUSH', KEYS[2], raw)
return 1
"""


def list_dead_letters(r: redis.Redis, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(total, items), oldest first (the sender pushes new dead letters on the left)."""
    total = int(r.llen(DEAD_LETTERS))  # type: ignore[arg-type]
    start, end = -(offset + limit), -(offset + 1)
    raws: Any = r.lrange(DEAD_LETTERS, max(start, -total), end) if offset < total else []
    items = []
    for raw in reversed(raws):
        try:
            items.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            items.append({"event": "unreadable", "attempts": 0, "not_before": 0, "payload": {}})
    return total, items


def requeue_dead_letters(r: redis.Redis, limit: int) -> int:
    """Move up to ``limit`` dead letters, oldest first, back onto the outbox; how many moved."""
    script = r.register_script(_REQUEUE_ONE)
    moved = 0
    for _ in range(limit):
        if not script(keys=[DEAD_LETTERS, WEBHOOK_OUTBOX]):
            break
        moved += 1
    return moved
