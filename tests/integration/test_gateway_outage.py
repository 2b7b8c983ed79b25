"""Redis goes away mid-traffic and comes back: every answered row arrives exactly once, in order."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import redis

from services.core.clients import ClientRegistry
from services.core.records import QueryRecord
from services.demo.processes import PrivateRedis
from tests.utils.stack import GatewayTraffic, Server, start_server


def test_records_survive_a_redis_outage_exactly_once(tmp_path: Path, model_server: Server) -> None:
    store = PrivateRedis(tmp_path / "redis", appendonly=True).start()
    port = store.port
    r = redis.Redis.from_url(store.url)
    keys = {n: ClientRegistry(r).add(n)[1] for n in ("ann", "ben")}
    env = {
        "MODELCUSTODY_REDIS_URL": store.url,
        "MODELCUSTODY_DATA_DIR": str(tmp_path / "data"),
        "MODELCUSTODY_GATEWAY_UPSTREAM_URL": model_server.url,
        "MODELCUSTODY_GATEWAY_INSTANCE_ID": "gw-outage",
        "MODELCUSTODY_GATEWAY_REDIS_RETRY_S": "0.2",
    }
    gw = start_server("services.gateway.app:create_app", env, tmp_path, "gateway")
    x = np.random.default_rng(3).uniform(0, 16, size=(4000, 64)).round(2)
    traffic = GatewayTraffic(gw.url, keys, x).start()
    sent, failures = traffic.sent, traffic.failures
    try:
        time.sleep(1.0)
        before_outage = sum(map(len, sent.values()))
        store.stop()  # SIGTERM: Redis goes down while requests keep coming
        time.sleep(1.5)
        during = sum(map(len, sent.values())) - before_outage
        assert gw.metric("modelcustody_querylog_redis_up") == 0
        assert (gw.metric("modelcustody_querylog_spill_bytes") or 0) > 0
        store = PrivateRedis(tmp_path / "redis", port=port, appendonly=True).start()
        time.sleep(1.5)
    finally:
        traffic.stop()
    assert failures == [] and before_outage > 0 and during > 0
    deadline = time.monotonic() + 20
    while gw.metric("modelcustody_querylog_spill_bytes") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.metric("modelcustody_querylog_spill_bytes") == 0
    written = gw.metric("modelcustody_querylog_records_total", {"outcome": "written"}) or 0
    replayed = gw.metric("modelcustody_querylog_records_total", {"outcome": "replayed"}) or 0
    spilled = gw.metric("modelcustody_querylog_records_total", {"outcome": "spilled"}) or 0
    dropped = gw.metric("modelcustody_querylog_records_total", {"outcome": "dropped"})
    assert gw.stop() == 0
    try:
        r = redis.Redis.from_url(store.url)
        records = [QueryRecord.from_stream_fields(f) for _, f in r.xrange("mc:queries")]
        total = sum(map(len, sent.values()))
        assert len({rec.record_id for rec in records}) == len(records) == total
        for name, rows in sent.items():
            assert [rec.input for rec in records if rec.client_id == name] == rows
        assert spilled > 0 and dropped == 0
        assert written + replayed == total
    finally:
        store.stop()
