"""Redis (AOF, ``appendfsync everysec`` as in compose) crashes and loses its unsynced tail mid-traffic.

The gateway had answered, and committed to Redis, rows that the restarted Redis no longer holds. After the
restart every answered row must be in the query log exactly once, in each client's order, and the detector's
state must count each exactly once (its state and acknowledgements rolled back together with the stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from services.core.clients import ClientRegistry
from services.core.records import QueryRecord
from services.demo.processes import PrivateRedis
from services.detector.service.consumer import GROUP, STATE_PREFIX
from tests.utils.redis_faults import aof_mark, crash_losing_tail
from tests.utils.stack import GatewayTraffic, Server, start_detector, start_server


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _analysed(r: redis.Redis) -> int:
    total = 0
    for key in r.scan_iter(STATE_PREFIX + "*"):
        raw: Any = r.hget(key, "queries")
        total += int(raw or 0)
    return total


def test_rows_committed_before_redis_loses_its_tail_are_logged_and_analysed_exactly_once(
    tmp_path: Path, model_server: Server, detector_baseline: Path
) -> None:
    store = PrivateRedis(tmp_path / "redis", appendfsync="everysec").start()
    port = store.port
    r = redis.Redis.from_url(store.url)
    keys = {n: ClientRegistry(r).add(n)[1] for n in ("ann", "ben")}
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": store.url,
        "MODELCUSTODY_DATA_DIR": str(tmp_path / "data"),
        "MODELCUSTODY_GATEWAY_UPSTREAM_URL": model_server.url,
        "MODELCUSTODY_GATEWAY_INSTANCE_ID": "gw-crash",
        "MODELCUSTODY_GATEWAY_INPUT_DIM": "64",
        "MODELCUSTODY_GATEWAY_REDIS_RETRY_S": "0.2",
        "MODELCUSTODY_DETECTOR_REFERENCE_PATH": str(detector_baseline),
        "MODELCUSTODY_DETECTOR_BATCH_MAX": "50",
        # Uniform probing is what the detector alerts on; a quota tightened mid-test would turn answers into 429s.
        "MODELCUSTODY_DETECTOR_RESPONSE": "notify",
    }
    gw = start_server("services.gateway.app:create_app", env, tmp_path, "gateway")
    detector, _ = start_detector(env, tmp_path, "det-crash")
    x = np.random.default_rng(5).uniform(0, 16, size=(6000, 64)).round(2)
    traffic = GatewayTraffic(gw.url, keys, x).start()
    sent, failures = traffic.sent, traffic.failures
    try:
        time.sleep(1.0)
        mark = aof_mark(store)  # what the disk holds for sure; what follows is only in the page cache
        at_mark = sum(map(len, sent.values()))
        time.sleep(1.0)
        at_crash = sum(map(len, sent.values()))
        cut = crash_losing_tail(store, mark)
        store = PrivateRedis(tmp_path / "redis", port=port, appendfsync="everysec").start()
        time.sleep(1.5)
    finally:
        traffic.stop()
    try:
        assert failures == [] and cut > 0 and at_crash > at_mark > 0
        total = sum(map(len, sent.values()))
        r = redis.Redis.from_url(store.url)
        _wait(lambda: r.xlen("mc:queries") >= total, 20)
        records = [QueryRecord.from_stream_fields(f) for _, f in r.xrange("mc:queries")]
        assert len(records) == total, f"{total - len(records)} answered rows missing after the crash"
        assert len({rec.record_id for rec in records}) == total
        for name, rows in sent.items():
            assert [rec.input for rec in records if rec.client_id == name] == rows
        recovered = gw.metric("modelcustody_querylog_records_total", {"outcome": "recovered"}) or 0
        assert recovered > 0  # the crash did take committed rows with it, and the gateway put them back
        assert gw.metric("modelcustody_querylog_records_total", {"outcome": "lost"}) == 0

        def settled() -> bool:
            pending: Any = r.xpending("mc:queries", GROUP)
            return _analysed(r) >= total and not pending["pending"]

        _wait(settled, 20)
        assert _analysed(r) == total
        assert r.xpending("mc:queries", GROUP)["pending"] == 0  # type: ignore[index]
    finally:
        gw.stop()
        detector.stop()
        store.stop()
