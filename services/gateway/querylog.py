"""The durable query log: every answered row becomes a record in the Redis Stream ``mc:queries``.

Hot path: ``offer()`` appends one entry per request to an in-process bounded deque (no I/O, no JSON).
A background task drains the deque every few milliseconds and writes the rows to Redis in one
pipelined MULTI/EXEC per batch. The transaction also stores this gateway's last committed sequence
number (``mc:gateway:<instance>:seq``), which makes delivery exactly-once across outages:

- Redis unreachable → the batch goes to a local append-only spill file (fsynced), and so does every
  later batch while the file is non-empty, so records stay in order.
- Redis back → the file is replayed in order; rows whose ``seq`` is not above the committed sequence
  (a transaction that did commit before the connection dropped) are skipped, then the file is removed.
- Shutdown drains the buffer to Redis, or to the spill file if Redis is down; a restarted gateway with
  the same instance id replays it.
- Redis loses acknowledged writes (``appendfsync everysec`` and a host crash: about the last second) →
  every write is a compare-and-append (a Lua script): it goes in only if Redis still holds the sequence
  number this gateway last committed. When it does not, and whenever an idle gateway checks (every
  second), the rows Redis lost are put back from the local journal (``journal.py``) under their original
  stream ids, before anything newer: the stream holds each row once and in order, and the consumer
  groups, whose state rolled back with it, read them again as new.

A full buffer (Redis slow *and* spilling behind) makes ``offer()`` return False: the gateway answers
503 (fail-closed, the default) or, when fail-open is configured, answers and counts the record as
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.core import keys
from services.core.records import SCHEMA_VERSION, OutputKind, Protocol, QueryRecord
from services.gateway.journal import Journal, JournalRow
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, ConnectionError)
_VERSION_FIELD = str(SCHEMA_VERSION).encode()
# How often an idle gateway asks Redis for its committed sequence number: a Redis that lost rows while no
# request came is noticed within a second (one GET a second per gateway).
_VERIFY_S = 1.0

# Compare-and-append. KEYS: stream, this gateway's sequence key. ARGV: the sequence number the gateway
# believes committed, the one to store after, MAXLEN (0: none), schema version, then (stream id or "*",
# record) per row. Answers Redis's committed number when it differs (nothing written), else the ids.
# An explicit id (a row put back after a loss) that Redis refuses (not above the stream's top) is kept
# when that entry is there or was trimmed (below the first entry), else added as a new entry.
_APPEND_LUA = """
local committed = tonumber(redis.call('GET', KEYS[2]) or '0')
if committed ~= tonumber(ARGV[1]) then return committed end
local maxlen = tonumber(ARGV[3])
local function xadd(id, record)
  local args = {KEYS[1]}
  if maxlen > 0 then args[2] = 'MAXLEN'; args[3] = '~'; args[4] = ARGV[3] end
  args[#args + 1] = id; args[#args + 1] = 'v'; args[#args + 1] = ARGV[4]
  args[#args + 1] = 'r'; args[#args + 1] = record
  return redis.pcall('XADD', unpack(args))
end
local function before(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local ids = {}
for i = 5, #ARGV, 2 do
  local id, record = ARGV[i], ARGV[i + 1]
  local res = xadd(id, record)
  if type(res) == 'table' and res.err then
    if id == '*' then return res end
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    if #redis.call('XRANGE', KEYS[1], id, id) > 0 or #first == 0 or before(id, first[1][1]) then
      res = id
    else
      res = xadd('*', record)
      if type(res) == 'table' and res.err then return res end
    end
  end
  ids[#ids + 1] = res
end
redis.call('SET', KEYS[2], ARGV[2])
return ids
"""


@dataclass(slots=True)
class AnsweredRequest:
    """One answered request as the hot path hands it over; expanded into per-row records later."""

    ts: float
    client_id: str
    model: str
    protocol: Protocol
    request_id: str
    inputs: np.ndarray  # [n, d]
    outputs: np.ndarray | None  # [n, k] as returned to the client
    output_kind: OutputKind
    status: int
    upstream_latency_s: float
    policy: str
    watermark: list[str] | None = None  # per row, the answer watermark served (QueryRecord.watermark)
    network: str = ""  # the request's source network (QueryRecord.network)


class QueryLogWriter:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        instance: str,
        spill_dir: Path,
        metrics: GatewayMetrics,
        buffer_max: int = 100_000,
        batch_max: int = 1_000,
        flush_interval_s: float = 0.005,
        retry_s: float = 1.0,
        fail_open: bool = False,
        stream_maxlen: int | None = None,
        journal_retain_s: float = 10.0,
    ) -> None:
        if buffer_max < 1 or batch_max < 1 or flush_interval_s <= 0:
            raise ValueError("buffer_max and batch_max must be >= 1 and flush_interval_s > 0")
        self.redis = redis
        self.stream = stream
        self.instance = instance
        self.seq_key = keys.gateway_seq(instance)
        self.spill_path = spill_dir / f"{instance}.spill.jsonl"
        self.journal = Journal(spill_dir, instance, journal_retain_s)
        self._append = redis.register_script(_APPEND_LUA)
        self.metrics = metrics
        self.buffer_max = buffer_max
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self.fail_open = fail_open
        self.stream_maxlen = stream_maxlen
        self._buffer: deque[AnsweredRequest] = deque()
        self._buffered_rows = 0
        self._next_seq = 1
        self._committed = 0  # the last sequence number this gateway knows Redis holds
        self._next_verify = 0.0
        self._redis_up = True
        self._next_probe = 0.0
        self._replay_offset = 0
        self._has_spill = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wakeup = asyncio.Event()

    # ---------------------------------------------------------------- hot path
    def offer(self, entry: AnsweredRequest) -> bool:
        """Queue an answered request. False when the buffer is full (caller decides 503 or drop)."""
        n = len(entry.inputs)
        if self._buffered_rows + n > self.buffer_max:
            if self.fail_open:
                self.metrics.querylog_records.labels("dropped").inc(n)
            return False
        self._buffer.append(entry)
        self._buffered_rows += n
        if self._buffered_rows >= self.batch_max:
            self._wakeup.set()
        return True

    def has_room(self, n_rows: int) -> bool:
        return self._buffered_rows + n_rows <= self.buffer_max

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_spill_tail()
        self._has_spill = self._spill_file_nonempty()
        self.journal.open()
        self._committed = self.journal.last_seq()  # the journal holds only rows Redis acknowledged
        committed = 0
        try:
            committed = int(await self.redis.get(self.seq_key) or 0)
        except _REDIS_DOWN:
            self._mark_down()
        self._next_seq = max(committed, self._committed, self._spill_last_seq()) + 1
        if self._redis_up:
            try:
                await self._reconcile(committed)  # a Redis that lost rows while this gateway was down
            except _REDIS_DOWN:
                self._mark_down()
        self._update_spill_gauge()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="querylog-flusher")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush everything: to Redis if it answers, else to the spill file. Nothing is lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._task is not None:
            # The flag as well as the cancel: on Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that
            # races with its inner wait finishing (fixed in 3.12), and the flusher would then run on while this
            # await never returned (seen as a hung test). The flag ends its loop at the next turn either way.
            self._stopping = True
            self._wakeup.set()
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout_s)
            if not self._task.done():
                log.warning("query-log flusher did not stop within %.1f s; flushing from stop()", timeout_s)
            self._task = None
        self._next_probe = 0.0
        while self._buffer or self._spill_pending():
            if loop.time() > deadline:
                break
            await self._flush_once()
            if not self._redis_up:
                break
        self.abandon()

    def abandon(self) -> None:
        """Spill what is still buffered and close the journal, without waiting for Redis: the end of ``stop``,
        and what the gateway does when ``stop`` itself did not finish in time (a write stuck on a dead
        connection). The next start replays the spill file."""
        if self._buffer:  # Redis down or too slow: keep the rest on disk for the next start
            self._spill(self._drain(self._buffered_rows + 1))
        self.journal.close()

    @property
    def buffered_rows(self) -> int:
        return self._buffered_rows

    # ---------------------------------------------------------------- flusher
    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.flush_interval_s)
            self._wakeup.clear()
            try:
                await self._flush_once()
            except Exception:  # never let the flusher die: records would pile up silently
                log.exception("query-log flush failed; retrying")
                await asyncio.sleep(self.retry_s)

    async def _flush_once(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._redis_up and loop.time() < self._next_probe:
            if self._buffer:
                self._spill(self._drain(self.batch_max * 10))
            return
        if self._spill_pending():
            if self._buffer:  # keep order: new rows queue behind the spilled ones
                self._spill(self._drain(self.batch_max * 10))
            await self._replay_spill()
            return
        if not self._buffer:
            if loop.time() >= self._next_verify:
                await self._verify()
            return
        while self._buffer:
            records = self._drain(self.batch_max)
            try:
                await self._write(records)
            except asyncio.CancelledError:
                # A shutdown that ran out of time: these rows left the buffer, so keep them on disk (the replay
                # skips any that did reach Redis, by sequence number).
                self._spill(records)
                raise
            except _REDIS_DOWN as exc:
                log.warning("Redis unreachable (%s); spilling query log to %s", type(exc).__name__, self.spill_path)
                self._mark_down()
                self._spill(records)
                return
            self.metrics.querylog_records.labels("written").inc(len(records))
            self._mark_up()

    def _drain(self, max_rows: int) -> list[QueryRecord]:
        records: list[QueryRecord] = []
        while self._buffer and len(records) < max_rows:
            entry = self._buffer.popleft()
            self._buffered_rows -= len(entry.inputs)
            records.extend(self._expand(entry))
        self.metrics.buffer_depth.set(self._buffered_rows)
        return records

    def _expand(self, e: AnsweredRequest) -> list[QueryRecord]:
        n = len(e.inputs)
        inputs = e.inputs.tolist()
        outputs = e.outputs.tolist() if e.outputs is not None else [None] * n
        first = self._next_seq
        self._next_seq += n
        return [
            QueryRecord(
                record_id=f"{self.instance}:{first + i}",
                gateway=self.instance,
                seq=first + i,
                ts=e.ts,
                client_id=e.client_id,
                model=e.model,
                protocol=e.protocol,
                request_id=e.request_id,
                row=i,
                batch_size=n,
                input=inputs[i],
                output=outputs[i],
                output_kind=e.output_kind,
                status=e.status,
                upstream_latency_s=e.upstream_latency_s,
                policy=e.policy,
                watermark=e.watermark[i] if e.watermark is not None else "",
                network=e.network,
            )
            for i in range(n)
        ]

    async def _write(self, records: list[QueryRecord]) -> None:
        await self._write_encoded([(r.seq, orjson.dumps(r)) for r in records])

    async def _write_encoded(self, rows: list[tuple[int, bytes]]) -> None:
        if not rows:
            return
        for _ in range(3):
            # max(): after adopting a higher number (see _reconcile) the stored one must not go back.
            last = max(rows[-1][0], self._committed)
            committed = await self._append_rows([(seq, "*", payload) for seq, payload in rows], last)
            if committed is None:
                return
            await self._reconcile(committed)
        raise RuntimeError(f"{self.seq_key} keeps changing under this gateway: a second gateway with its id?")

    async def _append_rows(self, rows: list[JournalRow], new_committed: int) -> int | None:
        """Compare-and-append; None when written (and journaled), else the number Redis holds instead."""
        args: list[bytes | str | int] = [self._committed, new_committed, self.stream_maxlen or 0, _VERSION_FIELD]
        for _, stream_id, payload in rows:
            args += [stream_id, payload]
        result = await self._append(keys=[self.stream, self.seq_key], args=args)
        if not isinstance(result, list):
            return int(result)
        self.journal.append([(seq, sid.decode(), payload) for (seq, _, payload), sid in zip(rows, result, strict=True)])
        self._committed = new_committed
        self._next_verify = asyncio.get_running_loop().time() + _VERIFY_S
        self.journal.confirmed()
        return None

    async def _verify(self) -> None:
        """An idle gateway's check that Redis still holds what it committed (Redis may have lost it)."""
        self._next_verify = asyncio.get_running_loop().time() + _VERIFY_S
        try:
            await self._reconcile(int(await self.redis.get(self.seq_key) or 0))
        except _REDIS_DOWN:
            self._mark_down()
            return
        self.journal.confirmed()
        self._mark_up()

    async def _reconcile(self, committed: int) -> None:
        """Bring this gateway's idea of its committed sequence number and Redis's together.

        Below ours: Redis lost rows it had acknowledged; put them back from the journal, in order, under
        their stream ids. Above ours: a transaction committed whose answer never arrived (the connection
        dropped after EXEC); those rows are in Redis, and the spill replay skips them by sequence number.
        """
        if committed > self._committed:
            self._committed = committed
            self._next_seq = max(self._next_seq, committed + 1)
            return
        if committed == self._committed:
            return
        believed = self._committed
        rows = [row for row in self.journal.rows(committed) if row[0] <= believed]
        missing = believed - committed - len(rows)
        log.error(
            "Redis lost %d committed query-log rows of %s (seq %d..%d); %d put back from the journal",
            believed - committed, self.instance, committed + 1, believed, len(rows),
        )
        if missing:  # older than the journal keeps: the journal's retention is shorter than Redis's loss
            log.error("%d lost rows are no longer in the journal", missing)
            self.metrics.querylog_records.labels("lost").inc(missing)
        self._committed = committed
        try:
            for i in range(0, max(len(rows), 1), self.batch_max):
                chunk = rows[i : i + self.batch_max]
                last = believed if i + self.batch_max >= len(rows) else chunk[-1][0]
                diverged = await self._append_rows(chunk, last)
                if diverged is not None:  # changed again under us (another crash): start over from there
                    self._committed = believed
                    await self._reconcile(diverged)
                    return
                self.metrics.querylog_records.labels("recovered").inc(len(chunk))
        except BaseException:
            # Interrupted (Redis gone again): the next reconcile must still see the rows not yet put back.
            self._committed = believed
            raise

    # ---------------------------------------------------------------- spill file
    def _spill(self, records: list[QueryRecord]) -> None:
        if not records:
            return
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        with open(self.spill_path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # a spilled record must survive a gateway crash
        self._has_spill = True
        self.metrics.querylog_records.labels("spilled").inc(len(records))
        self._update_spill_gauge()

    def _repair_spill_tail(self) -> None:
        """Cut a torn last line (a crash mid-write) so the next append starts on a fresh line."""
        if not self._spill_file_nonempty():
            return
        with open(self.spill_path, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            log.warning("cutting a torn %d-byte line off %s", len(data) - keep, self.spill_path)
            fh.truncate(keep)

    def _spill_pending(self) -> bool:
        return self._has_spill  # a flag, not a stat() per flush: this is checked every few ms

    def _spill_file_nonempty(self) -> bool:
        return self.spill_path.exists() and self.spill_path.stat().st_size > 0

    def _spill_last_seq(self) -> int:
        if not self._spill_file_nonempty():
            return 0
        last = 0
        with open(self.spill_path, "rb") as fh:
            for line in fh:
                if line.strip():
                    with contextlib.suppress(orjson.JSONDecodeError):
                        last = max(last, int(orjson.loads(line)["seq"]))
        return last

    async def _replay_spill(self) -> None:
        """Replay the spill file in order; on success remove it. Idempotent by sequence number.

        ``_replay_offset`` remembers how far an interrupted replay got, so the counters count each
        record once; after a gateway restart it starts at 0 and the sequence check alone dedupes.
        """
        counted = self.metrics.querylog_records
        try:
            await self._reconcile(int(await self.redis.get(self.seq_key) or 0))
            committed = self._committed
            batch: list[tuple[int, bytes]] = []
            skipped = 0
            with open(self.spill_path, "rb") as fh:
                fh.seek(self._replay_offset)
                while True:
                    raw = fh.readline()
                    line = raw.strip()
                    if line:
                        try:
                            seq = int(orjson.loads(line)["seq"])
                        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                            # A torn last line from a crash mid-write: nothing was acknowledged for it.
                            log.warning("skipping an unreadable line in %s", self.spill_path)
                            seq = -1
                        if seq > committed:
                            batch.append((seq, line))
                        elif seq >= 0:
                            # Its transaction committed before the connection dropped: written already.
                            skipped += 1
                    if batch and (len(batch) >= self.batch_max or not raw):
                        await self._write_encoded(batch)
                        committed = self._committed
                        counted.labels("replayed").inc(len(batch))
                        batch = []
                    if skipped and (not batch or not raw):
                        counted.labels("written").inc(skipped)
                        skipped = 0
                    if not batch:
                        self._replay_offset = fh.tell()
                    if not raw:
                        break
        except _REDIS_DOWN:
            self._mark_down()
            return
        self.spill_path.unlink(missing_ok=True)
        self._has_spill = False
        self._replay_offset = 0
        self._update_spill_gauge()
        self._mark_up()
        log.info("replayed the spilled query log to Redis")

    def _update_spill_gauge(self) -> None:
        size = self.spill_path.stat().st_size if self.spill_path.exists() else 0
        self.metrics.spill_bytes.set(size)

    def _mark_down(self) -> None:
        self._redis_up = False
        self._next_probe = asyncio.get_running_loop().time() + self.retry_s
        self.metrics.redis_up.set(0)

    def _mark_up(self) -> None:
        if not self._redis_up:
            log.info("Redis reachable again")
        self._redis_up = True
        self.metrics.redis_up.set(1)
