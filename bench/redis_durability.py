"""What holding the query log through a Redis crash costs: the gateway's journal vs ``appendfsync always``.

    python bench/redis_durability.py [--rows 20000] [--repeats 3] [--quick]

Prints one JSON object as its last line:
- ``sigkill_lost_acknowledged``: rows a Redis with ``appendfsync everysec`` had acknowledged and no longer
  held after a SIGKILL and restart (200 rows a transaction, killed right after the last reply). Redis
  write(2)s its AOF before replying and the page cache outlives the process: a SIGKILL alone loses nothing;
  ``everysec`` loses its unsynced tail only when the host dies, which ``tests/utils/redis_faults.py``
  reproduces for the tests.
- ``rows_per_s_multi_everysec``: the reference, the gateway's former write (one MULTI/EXEC of XADDs and
  the sequence number), with Redis as in compose (``everysec``).
- ``ratio_journal_vs_multi``: the gateway's write now (compare-and-append script + journal line), same Redis.
- ``ratio_always_vs_everysec``: the former write with ``appendfsync always`` (each transaction fsynced
  before its reply) against ``everysec``.
- ``ratio_small_always_vs_everysec``: the same for small single-command writes (``HSET``), what every other
  Redis user (detectors' commits, Celery, the API) would pay with ``always``.
Each for batches of ``batch_small`` and ``batch_large`` rows (the gateway's batch is what arrived in its
20 ms flush interval: tens of rows at moderate load, up to 1,000 under pressure).

Method: one process writes sequentially (no concurrency: a fsync is not hidden behind other work); a
record is a real ``QueryRecord`` of 64 features (~1.3 KB of JSON); the modes alternate within each round and
the figures are medians of ``--repeats`` rounds, so load from other processes hits all alike. Ratios, not
absolute times: the disk and the machine decide those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from services.core.records import QueryRecord  # noqa: E402
from services.demo.processes import PrivateRedis  # noqa: E402
from services.gateway.metrics import GatewayMetrics  # noqa: E402
from services.gateway.querylog import QueryLogWriter  # noqa: E402


def _payloads(n: int, seed: int) -> list[bytes]:
    x = np.random.default_rng(seed).uniform(0, 16, size=(n, 64)).round(3)
    probs = np.full(10, 0.1).tolist()
    return [
        orjson.dumps(
            QueryRecord(
                record_id=f"bench:{i}", gateway="bench", seq=i, ts=time.time(), client_id=f"c{i % 50}",
                model="digits-mlp", protocol="oip-v2", request_id=f"r{i}", row=0, batch_size=1,
                input=x[i].tolist(), output=probs, output_kind="probabilities", status=200,
                upstream_latency_s=0.001, policy="none",
            )
        )
        for i in range(n)
    ]


def sigkill_loss(workdir: Path) -> int:
    store = PrivateRedis(workdir, appendfsync="everysec").start()
    r = redis.Redis.from_url(store.url)
    acked = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        pipe = r.pipeline(transaction=True)
        for _ in range(200):
            pipe.xadd("s", {"r": b"x" * 1000})
        pipe.execute()
        acked += 200
    store.kill()
    store = PrivateRedis(workdir, port=store.port, appendfsync="everysec").start()
    held = int(redis.Redis.from_url(store.url).xlen("s"))
    store.stop()
    return acked - held


async def _multi(r: aioredis.Redis, payloads: list[bytes], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(payloads), batch):
        pipe = r.pipeline(transaction=True)
        for p in payloads[i : i + batch]:
            pipe.xadd("mc:queries", {"v": b"1", "r": p}, maxlen=1_000_000, approximate=True)
        pipe.set("mc:gateway:bench:seq", i + batch)
        await pipe.execute()
    return len(payloads) / (time.perf_counter() - t0)


async def _journal(r: aioredis.Redis, payloads: list[bytes], batch: int, spill: Path) -> float:
    w = QueryLogWriter(
        r, stream="mc:queries", instance=f"bench-{time.monotonic_ns()}", spill_dir=spill,
        metrics=GatewayMetrics(CollectorRegistry()), batch_max=batch, stream_maxlen=1_000_000,
    )
    w.journal.open()
    rows = list(enumerate(payloads, start=1))
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        await w._write_encoded(rows[i : i + batch])
    rate = len(payloads) / (time.perf_counter() - t0)
    w.journal.close()
    return rate


async def _small(r: aioredis.Redis, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await r.hset("mc:bench:h", str(i % 100), i)
    return n / (time.perf_counter() - t0)


async def run(rows: int, repeats: int, batches: tuple[int, int], seed: int) -> dict[str, object]:
    payloads = _payloads(rows, seed)
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["sigkill_lost_acknowledged"] = sigkill_loss(Path(tmp) / "kill")
        stores = {mode: PrivateRedis(Path(tmp) / mode, appendfsync=mode).start() for mode in ("everysec", "always")}
        try:
            clients = {mode: aioredis.Redis.from_url(s.url) for mode, s in stores.items()}
            rates: dict[str, list[float]] = {}
            for _ in range(repeats):
                for batch in batches:
                    for mode, c in clients.items():
                        await c.flushall()
                        rates.setdefault(f"multi_{mode}_{batch}", []).append(await _multi(c, payloads, batch))
                    await clients["everysec"].flushall()
                    rate = await _journal(clients["everysec"], payloads, batch, Path(tmp) / "journal")
                    rates.setdefault(f"journal_everysec_{batch}", []).append(rate)
                for mode, c in clients.items():
                    rates.setdefault(f"small_{mode}", []).append(await _small(c, max(rows // 4, 500)))
            med = {k: statistics.median(v) for k, v in rates.items()}
            for batch, name in zip(batches, ("batch_small", "batch_large"), strict=True):
                out[name] = batch
                out[f"rows_per_s_multi_everysec_{name}"] = round(med[f"multi_everysec_{batch}"])
                out[f"ratio_journal_vs_multi_{name}"] = round(
                    med[f"journal_everysec_{batch}"] / med[f"multi_everysec_{batch}"], 3
                )
                out[f"ratio_always_vs_everysec_{name}"] = round(
                    med[f"multi_always_{batch}"] / med[f"multi_everysec_{batch}"], 3
                )
            out["ratio_small_always_vs_everysec"] = round(med["small_always"] / med["small_everysec"], 3)
            for c in clients.values():
                await c.aclose()
        finally:
            for s in stores.values():
                s.stop()
    out.update(rows=rows, repeats=repeats, seed=seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2,000 rows, one round (development)")
    args = parser.parse_args()
    rows, repeats = (2_000, 1) if args.quick else (args.rows, args.repeats)
    print(json.dumps(asyncio.run(run(rows, repeats, (20, 500), args.seed))))


if __name__ == "__main__":
    main()
