"""The archiver against a real Redis: segments first, then XACK, then a trim that spares what a consumer
group still needs; and the gateway's MAXLEN bound on the stream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis
from prometheus_client import CollectorRegistry

from services.archiver.service import GROUP, HEAD_KEY, Archiver, ArchiverMetrics
from services.core.archive import Head, verify_archive
from services.core.settings import Settings
from tests.utils.stack import oip_body

STREAM = "mc:queries"


def add(r: redis.Redis, n: int, start: int = 0) -> list[str]:
    return [r.xadd(STREAM, {"v": b"1", "r": orjson.dumps({"seq": start + i})}).decode() for i in range(n)]  # type: ignore[union-attr]


def test_archive_then_ack_then_trim_only_what_every_group_has_read(redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = Settings(env="test", redis_url="redis://unused", archive_dir=tmp_path / "archive",
                        archive_segment_records=50, archive_segment_interval_s=3600)
    registry = CollectorRegistry()
    archiver = Archiver(redis_client, settings, ArchiverMetrics(registry))
    archiver.ensure_group()
    ids = add(redis_client, 120)
    # No detector group yet: archived, but nothing trimmed (a detector started later reads from id 0).
    while archiver.step(block_ms=10):
        pass
    archiver.flush()
    assert Head.load(tmp_path / "archive").records == 120
    assert redis_client.xlen(STREAM) == 120
    # The detectors have read and acknowledged the first 70 entries; 10 more are delivered, still pending.
    redis_client.xgroup_create(STREAM, "detectors", id="0")
    read: Any = redis_client.xreadgroup("detectors", "d1", {STREAM: ">"}, count=80)
    got = [i.decode() for i, _ in read[0][1]]
    redis_client.xack(STREAM, "detectors", *got[:70])
    assert archiver.trim() == 70
    first: Any = redis_client.xrange(STREAM, count=1)
    assert first[0][0].decode() == ids[70]  # the oldest entry a detector still holds pending stays
    assert registry.get_sample_value("modelcustody_archive_trimmed_records_total") == 70
    assert redis_client.get(HEAD_KEY).decode() == Head.load(tmp_path / "archive").last_hash  # type: ignore[union-attr]

    # A crash after the segment was written but before XACK, and the archiver comes back under another name
    # (a new container): the entries are taken over, recognised as archived, and only acknowledged; entries
    # that were read but not yet in a segment are archived by the new one.
    more = add(redis_client, 30, start=120)
    archiver.step(block_ms=10)
    archiver.writer.commit()  # written, then the "crash": nothing acknowledged
    later = add(redis_client, 5, start=150)
    archiver.step(block_ms=10)  # read into the open segment, then lost with the process
    restarted = Archiver(redis_client, settings, ArchiverMetrics(CollectorRegistry()), consumer="archiver-2")
    restarted.recover()
    pending: Any = redis_client.xpending(STREAM, GROUP)
    assert pending["pending"] == 0
    result = verify_archive(tmp_path / "archive")
    assert result.ok and result.records == 155, result.problems
    archived = [orjson.loads(line) for line in _records(tmp_path / "archive")]
    assert [a["id"] for a in archived] == ids + more + later  # every record once, in stream order


def _records(directory: Path) -> list[bytes]:
    import gzip

    out = []
    for path in sorted(directory.glob("segment-*.jsonl.gz")):
        with gzip.open(path, "rb") as f:
            out.extend(line for i, line in enumerate(f) if i)
    return out


def test_the_gateway_bounds_the_stream(start_gateway: Any, add_client: Any, redis_client: redis.Redis) -> None:
    gw = start_gateway(MODELCUSTODY_QUERIES_STREAM_MAXLEN="100")
    key = add_client("busy")
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        for _ in range(60):
            resp = http.post("/v2/models/digits-mlp/infer", json=oip_body(np.zeros((10, 64))),
                             headers={"X-API-Key": key})
            assert resp.status_code == 200
    time.sleep(0.3)
    assert gw.stop() == 0
    # 600 rows logged; "~" trims whole macro nodes (100 entries each by default), so a little above the bound.
    assert redis_client.xlen(STREAM) <= 200

