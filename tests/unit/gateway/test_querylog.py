"""QueryLogWriter against a real Redis: spill on shutdown while Redis is down, replay on the next start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.core.records import QueryRecord
from services.demo.processes import free_port
from services.gateway.metrics import GatewayMetrics
from services.gateway.querylog import AnsweredRequest, QueryLogWriter


def _entry(i: int, n: int) -> AnsweredRequest:
    x = np.full((n, 4), float(i))
    return AnsweredRequest(
        time.time(), "c1", "m", "oip-v2", f"r{i}", x, np.full((n, 2), 0.5), "probabilities", 200, 0.001, "none"
    )


def _writer(url: str, spill_dir: Path, registry: CollectorRegistry, **kw: object) -> QueryLogWriter:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    return QueryLogWriter(
        client,
        stream="mc:queries",
        instance="unit",
        spill_dir=spill_dir,
        metrics=GatewayMetrics(registry),
        retry_s=0.05,
        **kw,
    )  # type: ignore[arg-type]


async def test_spilled_records_are_replayed_by_the_next_start(tmp_path: Path, redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    reg1 = CollectorRegistry()
    w1 = _writer(dead, tmp_path, reg1)
    await w1.start()
    for i in range(5):
        assert w1.offer(_entry(i, 3))
    await asyncio.sleep(0.05)
    await w1.stop()
    spill = tmp_path / "unit.spill.jsonl"
    assert len(spill.read_bytes().splitlines()) == 15
    assert reg1.get_sample_value("modelcustody_querylog_records_total", {"outcome": "spilled"}) == 15
    # A torn line, as a crash mid-write would leave it, must not stop the replay.
    with open(spill, "ab") as fh:
        fh.write(b'{"record_id": "unit:99", "se')

    reg2 = CollectorRegistry()
    w2 = _writer(redis_url, tmp_path, reg2)
    await w2.start()
    assert w2.offer(_entry(5, 2))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if not spill.exists():
            break
    await w2.stop()
    assert not spill.exists()
    records = [QueryRecord.from_stream_fields(f) for _, f in redis.Redis.from_url(redis_url).xrange("mc:queries")]
    assert [r.seq for r in records] == list(range(1, 18))
    assert [r.input[0] for r in records] == [float(i) for i in range(5) for _ in range(3)] + [5.0, 5.0]
    assert reg2.get_sample_value("modelcustody_querylog_records_total", {"outcome": "replayed"}) == 17


async def test_full_buffer_refuses_or_counts_a_drop(tmp_path: Path, redis_url: str) -> None:
    reg = CollectorRegistry()
    closed = _writer(redis_url, tmp_path, reg, buffer_max=4)
    assert closed.offer(_entry(0, 3)) and not closed.offer(_entry(1, 3))
    assert reg.get_sample_value("modelcustody_querylog_records_total", {"outcome": "dropped"}) == 0
    reg_open = CollectorRegistry()
    opened = _writer(redis_url, tmp_path / "o", reg_open, buffer_max=4, fail_open=True)
    assert opened.offer(_entry(0, 3)) and not opened.offer(_entry(1, 3))
    assert reg_open.get_sample_value("modelcustody_querylog_records_total", {"outcome": "dropped"}) == 3


async def _settle(w: QueryLogWriter, r: redis.Redis, n: int) -> None:
    for _ in range(200):
        await asyncio.sleep(0.02)
        if r.xlen("mc:queries") >= n and not w.buffered_rows:
            return


def _lose_tail(r: redis.Redis, keep: int) -> None:
    """Put Redis in the state a crash that lost its last writes leaves: the stream, the stream's last id and
    the gateway's sequence number of an earlier moment."""
    entries = r.xrange("mc:queries")
    r.xdel("mc:queries", *[entry_id for entry_id, _ in entries[keep:]])
    r.execute_command("XSETID", "mc:queries", entries[keep - 1][0])
    r.set("mc:gateway:unit:seq", keep)


async def test_rows_a_redis_lost_are_put_back_under_their_ids(tmp_path: Path, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    reg = CollectorRegistry()
    w = _writer(redis_url, tmp_path, reg)
    await w.start()
    for i in range(5):
        assert w.offer(_entry(i, 2))
    await _settle(w, r, 10)
    before = r.xrange("mc:queries")
    _lose_tail(r, 6)
    assert w.offer(_entry(5, 2))  # the next write notices (its compare fails) and repairs first
    await _settle(w, r, 12)
    # Idle: the once-a-second check notices a loss without any new write.
    _lose_tail(r, 11)
    for _ in range(150):
        await asyncio.sleep(0.02)
        if r.xlen("mc:queries") == 12:
            break
    await w.stop()
    after = r.xrange("mc:queries")
    assert [entry_id for entry_id, _ in after[:10]] == [entry_id for entry_id, _ in before]
    assert [QueryRecord.from_stream_fields(f).seq for _, f in after] == list(range(1, 13))
    assert reg.get_sample_value("modelcustody_querylog_records_total", {"outcome": "recovered"}) == 5
    assert reg.get_sample_value("modelcustody_querylog_records_total", {"outcome": "lost"}) == 0


async def test_a_restarted_gateway_repairs_from_its_journal(tmp_path: Path, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    w1 = _writer(redis_url, tmp_path, CollectorRegistry())
    await w1.start()
    for i in range(4):
        assert w1.offer(_entry(i, 3))
    await _settle(w1, r, 12)
    await w1.stop()
    _lose_tail(r, 5)
    reg = CollectorRegistry()
    w2 = _writer(redis_url, tmp_path, reg)
    await w2.start()  # Redis and the gateway both restarted: the journal on disk still holds the rows
    assert w2.offer(_entry(9, 1))
    await _settle(w2, r, 13)
    await w2.stop()
    seqs = [QueryRecord.from_stream_fields(f).seq for _, f in r.xrange("mc:queries")]
    assert seqs == list(range(1, 14))
    assert reg.get_sample_value("modelcustody_querylog_records_total", {"outcome": "recovered"}) == 7


async def test_a_lost_row_overtaken_by_another_gateway_is_added_once_with_a_new_id(
    tmp_path: Path, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    w = _writer(redis_url, tmp_path, CollectorRegistry())
    await w.start()
    for i in range(3):
        assert w.offer(_entry(i, 2))
    await _settle(w, r, 6)
    _lose_tail(r, 4)
    # Another gateway writes after the restart, before this one notices: the lost ids are below its entries.
    r.xadd("mc:queries", {"v": b"1", "r": b"{}"})
    await w._verify()
    await w.stop()
    records = [f for _, f in r.xrange("mc:queries") if f[b"r"] != b"{}"]
    seqs = [QueryRecord.from_stream_fields(f).seq for f in records]
    assert sorted(seqs) == list(range(1, 7)) and len(seqs) == 6


async def test_stop_returns_when_the_flusher_swallows_its_cancellation(tmp_path: Path, redis_url: str) -> None:
    """Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that races with its inner wait finishing;
    the flusher then runs on. ``stop`` must still return (its flag ends the loop) and still flush every row."""
    r = redis.Redis.from_url(redis_url)
    w = _writer(redis_url, tmp_path, CollectorRegistry())
    real_flush = w._flush_once
    swallowed = 0
    inside = asyncio.Event()

    async def flush_swallowing_one_cancel() -> None:  # what the 3.11 race looks like from the loop's side
        nonlocal swallowed
        inside.set()
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            swallowed += 1
        await real_flush()

    w._flush_once = flush_swallowing_one_cancel  # type: ignore[method-assign]
    await w.start()
    assert w.offer(_entry(0, 2))
    await asyncio.wait_for(inside.wait(), timeout=5.0)
    await asyncio.wait_for(w.stop(timeout_s=5.0), timeout=10.0)
    assert swallowed >= 1
    assert [QueryRecord.from_stream_fields(f).seq for _, f in r.xrange("mc:queries")] == [1, 2]
