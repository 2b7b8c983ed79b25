"""Colluding keys through the real gateway, Redis and detector process: the per-network group test.

Ten API keys behind one trusted proxy (a loopback address the gateway is told to trust) split one probing
attack, each key sending fewer rows than the first per-client test needs: only the pooled stream of their
source network can see it, and the detector opens one group alert naming the ten keys, at `notify`, with no
policy change. Ten benign keys, each on its own network, raise nothing. And a client that is not a trusted
proxy cannot choose its network with an X-Forwarded-For header: ten probing keys on ten networks all claiming
one address are recorded with their own peers' networks and form no group.

Clients reach the gateway from distinct loopback source addresses (127.0.x.y: all local on Linux), so the
gateway sees real, different TCP peers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis

from services.core.alerts import AlertStore
from services.core.clients import ClientRegistry
from services.demo.model_server.models import digits_split, holdout_halves
from services.demo.processes import ManagedProcess, free_port, wait_for_port
from services.detector.service.consumer import STATE_PREFIX
from tests.integration.test_detector_e2e import metric, wait_until
from tests.utils.stack import REPO, Server, oip_body

PROXY = "127.0.0.2"  # the operator's reverse proxy
MODEL = "/v2/models/digits-mlp/infer"


def client_from(gateway: Server, address: str) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url, timeout=30, transport=httpx.HTTPTransport(local_address=address, retries=0)
    )


def analysed(r: redis.Redis, client: str) -> int:
    raw: Any = r.hget(STATE_PREFIX + client, "queries")
    return int(raw) if raw else 0


def recorded_networks(r: redis.Redis) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for _, fields in r.xrange("mc:queries"):  # type: ignore[union-attr]
        rec = orjson.loads(fields[b"r"])
        out.setdefault(rec["client_id"], set()).add(rec["network"])
    return out


def test_keys_behind_one_proxy_network_raise_a_group_alert_spread_keys_and_spoofed_headers_do_not(
    tmp_path: Path,
    redis_url: str,
    start_gateway: Callable[..., Server],
    add_client: Callable[[str], str],
    detector_baseline: Path,
) -> None:
    r = redis.Redis.from_url(redis_url)
    gateway = start_gateway(MODELCUSTODY_GATEWAY_INPUT_DIM="64", MODELCUSTODY_GATEWAY_TRUSTED_PROXIES=f'["{PROXY}/32"]')
    colluders = {f"sybil-{k}": add_client(f"sybil-{k}") for k in range(10)}
    benign = {f"benign-{k}": add_client(f"benign-{k}") for k in range(10)}
    spoofers = {f"spoof-{k}": add_client(f"spoof-{k}") for k in range(10)}
    rng = np.random.default_rng(5)
    # Equation-solving style probing (uniform points of the input box): 8 rows a key, under the first
    # per-client test at 20 queries; 80 pooled.
    probe = rng.uniform(0, 16, size=(80, 64))
    _, _, x_traffic, _ = holdout_halves(digits_split(0))
    sent: dict[str, int] = {}

    with client_from(gateway, PROXY) as via_proxy:
        for round_ in range(2):  # interleaved, as a coordinating attacker would send
            for k, key in enumerate(colluders.values()):
                rows = probe[k * 8 + round_ * 4 : k * 8 + round_ * 4 + 4]
                # The client's own claim first, then what our proxy appended: the addresses it rents.
                xff = f"192.0.2.77, 203.0.113.{10 + k}"
                resp = via_proxy.post(MODEL, json=oip_body(rows), headers={"X-API-Key": key, "X-Forwarded-For": xff})
                resp.raise_for_status()
    sent.update(dict.fromkeys(colluders, 8))
    for k, (name, key) in enumerate(benign.items()):
        with client_from(gateway, f"127.0.{10 + k}.1") as own_network:
            rows = x_traffic[rng.permutation(len(x_traffic))[:30]]
            for i in range(0, 30, 5):
                own_network.post(MODEL, json=oip_body(rows[i : i + 5]), headers={"X-API-Key": key}).raise_for_status()
        sent[name] = 30
    for k, (name, key) in enumerate(spoofers.items()):
        with client_from(gateway, f"127.0.{40 + k}.1") as untrusted:
            rows = probe[k * 8 : k * 8 + 8]
            headers = {"X-API-Key": key, "X-Forwarded-For": "203.0.113.200"}  # not a proxy of ours: ignored
            untrusted.post(MODEL, json=oip_body(rows), headers=headers).raise_for_status()
        sent[name] = 8

    port = free_port()
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": redis_url,
        "MODELCUSTODY_DATA_DIR": str(tmp_path / "data"),
        "MODELCUSTODY_DETECTOR_REFERENCE_PATH": str(detector_baseline),
        "MODELCUSTODY_DETECTOR_METRICS_PORT": str(port),
        "MODELCUSTODY_ADMIN_TOKEN": "test-admin-token-0123456789",
    }
    detector = ManagedProcess(
        [sys.executable, "-m", "services.cli", "serve", "detector"], env=env, log_path=tmp_path / "det.log", cwd=REPO
    )
    try:
        wait_for_port(port, 60, detector.proc)
        wait_until(
            lambda: all(analysed(r, c) == n for c, n in sent.items()),
            120,
            "every record to be analysed",
            lambda: (tmp_path / "det.log").read_text()[-3000:],
        )
        networks = recorded_networks(r)
        assert all(networks[c] == {"203.0.113.0/24"} for c in colluders)  # the proxy's header was believed
        assert [networks[c] for c in benign] == [{f"127.0.{10 + k}.0/24"} for k in range(10)]
        # The header an untrusted peer sent was ignored: each spoofer is recorded with its own peer's network.
        assert [networks[c] for c in spoofers] == [{f"127.0.{40 + k}.0/24"} for k in range(10)]

        alerts = AlertStore(r).list()
        assert [(a.kind, a.client_id) for a in alerts] == [("group", "group:203.0.113.0/24")]
        group = alerts[0]
        assert group.members == sorted(colluders)
        assert group.model == "digits-mlp" and group.risk_score >= group.risk_threshold > 0
        assert "ood" in group.fired_signals
        assert group.response["level"] == "notify"
        assert group.policy_applied is None and group.policy_changes == []
        registry = ClientRegistry(r)
        assert all(not registry.get_policy(c).label_only for c in colluders)  # never an automatic change
        assert metric(port, "modelcustody_detector_group_alerts_opened_total") == 1
        assert metric(port, "modelcustody_detector_group_detections_total") >= 1
    finally:
        detector.stop()


def test_groups_are_bounded_and_counted(redis_url: str, detector_baseline: Path) -> None:
    """At most group_max groups in Redis: the least recently seen are dropped and counted; one-client
    networks pool nothing (counted as single)."""
    from prometheus_client import CollectorRegistry

    from services.core.records import QueryRecord
    from services.detector.service.consumer import DetectorConfig, DetectorWorker
    from services.detector.service.metrics import DetectorMetrics
    from services.detector.service.runtime import load_engines

    r = redis.Redis.from_url(redis_url)
    metrics = DetectorMetrics(CollectorRegistry())
    worker = DetectorWorker(
        r, load_engines(detector_baseline), AlertStore(r), metrics, DetectorConfig(group_max=3, block_ms=10)
    )
    worker.ensure_group()
    x = np.random.default_rng(0).uniform(0, 16, size=(5, 64))
    now = time.time()  # groups idle for a day leave the index: the records must be recent
    for seq, net in enumerate(range(5), start=1):  # five networks, one client and one row each, in time order
        rec = QueryRecord(
            record_id=f"t:{seq}",
            gateway="t",
            seq=seq,
            ts=now + seq,
            client_id=f"c{net}",
            model="digits-mlp",
            protocol="oip-v2",
            request_id=str(seq),
            row=0,
            batch_size=1,
            input=x[net].tolist(),
            output=None,
            output_kind="none",
            status=200,
            upstream_latency_s=0.0,
            policy="none",
            network=f"198.51.{net}.0/24",
        )
        r.xadd("mc:queries", rec.to_stream_fields())  # type: ignore[arg-type]
        worker.step()
    kept: Any = r.zrange("mc:det:groups", 0, -1)
    assert [g.decode() for g in kept] == [f"digits-mlp|198.51.{n}.0/24" for n in (2, 3, 4)]
    assert not r.exists("mc:det:group:digits-mlp|198.51.0.0/24")
    get = metrics.registry.get_sample_value
    assert get("modelcustody_detector_groups_evicted_total") == 2
    assert get("modelcustody_detector_group_rows_not_pooled_total", {"reason": "single"}) == 5
