"""Two detector workers on one stream and one Redis: every record analysed exactly once, caches stay honest.

The workers run in threads of this process (each with its own Redis connections, as separate processes
would have); clients' records are interleaved so that both workers update the same clients and their
optimistic commits conflict. Afterwards each client's state in Redis must count exactly the records
sent, both in the service's counter and inside the engine state, which the per-process state caches
would break if a stale cached state were ever used.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from services.core.alerts import AlertStore
from services.core.records import QueryRecord
from services.demo.baseline import fit_demo_engine
from services.demo.model_server.models import digits_split, holdout_halves
from services.detector.engine import DetectionEngine
from services.detector.population import PopulationConfig
from services.detector.service.consumer import GROUP, STATE_PREFIX, DetectorConfig, DetectorWorker
from services.detector.service.metrics import DetectorMetrics
from services.detector.service.runtime import EngineSet

CLIENTS = 12
PER_CLIENT = 150


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> DetectionEngine:
    return fit_demo_engine("digits-mlp", n_sim_clients=40)


def record(i: int, client: str, x: np.ndarray) -> dict[str, bytes]:
    probs = np.full(10, 0.02)
    probs[i % 10] = 0.82
    return QueryRecord(
        record_id=f"t:{i}",
        gateway="t",
        seq=i,
        ts=1.7e9 + i,
        client_id=client,
        model="digits-mlp",
        protocol="oip-v2",
        request_id=str(i),
        row=0,
        batch_size=1,
        input=x.tolist(),
        output=probs.tolist(),
        output_kind="probabilities",
        status=200,
        upstream_latency_s=0.001,
        policy="none",
    ).to_stream_fields()


def make_worker(url: str, engine: DetectionEngine, name: str, batch: int) -> DetectorWorker:
    r = redis.Redis.from_url(url)
    config = DetectorConfig(consumer=name, batch_max=batch, block_ms=20, tighten_on="", reclaim_idle_s=60)
    return DetectorWorker(
        r, EngineSet({"digits-mlp": engine}), AlertStore(r), DetectorMetrics(CollectorRegistry()), config
    )


def test_two_workers_share_clients_without_losing_or_doubling_records(
    redis_url: str, engine: DetectionEngine, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)
    _, _, x_traffic, _ = holdout_halves(digits_split(0))
    workers = [make_worker(redis_url, engine, "w1", 37), make_worker(redis_url, engine, "w2", 23)]
    workers[0].ensure_group()
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    # Interleaved round robin, in four waves so that the workers' caches are reused between waves.
    i = 0
    for wave in range(4):
        with r.pipeline(transaction=False) as pipe:
            for _ in range(PER_CLIENT // 4 + (1 if wave < PER_CLIENT % 4 else 0)):
                for c in range(CLIENTS):
                    pipe.xadd("mc:queries", record(i, f"client-{c}", x_traffic[i % len(x_traffic)]))  # type: ignore[arg-type]
                    i += 1
            pipe.execute()
        deadline = 200
        while deadline and not _drained(r, i):
            deadline -= 1
            threading.Event().wait(0.05)
    for w in workers:
        w.stop()
    for t in threads:
        t.join(10)
    assert _drained(r, i)
    assert i == CLIENTS * PER_CLIENT
    for c in range(CLIENTS):
        stored: Any = r.hgetall(STATE_PREFIX + f"client-{c}")
        assert int(stored[b"queries"]) == PER_CLIENT
        assert engine.state_from_bytes(stored[b"engine:digits-mlp"]).queries == PER_CLIENT
    analysed = sum(w.metrics.queries._value.get() for w in workers)  # type: ignore[attr-defined]
    conflicts = sum(w.metrics.commit_conflicts._value.get() for w in workers)  # type: ignore[attr-defined]
    hits = sum(w.metrics.state_cache.labels("hit")._value.get() for w in workers)  # type: ignore[attr-defined]
    # Both workers did work, each record was committed once, and cached states were reused.
    assert all(w.metrics.queries._value.get() > 0 for w in workers)  # type: ignore[attr-defined]
    assert analysed == i
    assert hits > 0
    print(f"commit conflicts: {conflicts}, cache hits: {hits}")


def _drained(r: redis.Redis, n: int) -> bool:
    groups: Any = r.xinfo_groups("mc:queries")
    group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
    if group is None or group["pending"]:
        return False
    return sum(int(r.hget(STATE_PREFIX + f"client-{c}", "queries") or 0) for c in range(CLIENTS)) == n  # type: ignore[arg-type]


def test_a_worker_survives_a_redis_outage_and_resumes(engine: DetectionEngine, tmp_path: Path) -> None:
    """Redis stops under a running worker and comes back (same data, AOF): the worker retries, then analyses
    every record exactly once; its cached states are re-validated against Redis, not trusted blindly."""
    from services.demo.processes import PrivateRedis

    store = PrivateRedis(tmp_path / "redis", appendonly=True).start()
    port = store.port
    r = redis.Redis.from_url(store.url)
    _, _, x_traffic, _ = holdout_halves(digits_split(0))
    worker = make_worker(store.url, engine, "w-outage", 50)
    worker.ensure_group()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        sent = 0

        def push(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                r.xadd("mc:queries", record(sent, f"client-{sent % 3}", x_traffic[sent % len(x_traffic)]))  # type: ignore[arg-type]
                sent += 1

        push(150)
        _wait(lambda: _analysed(r, 3) == 150, "the first records")
        store.stop()
        threading.Event().wait(1.5)  # the worker meets a dead Redis for a while
        assert thread.is_alive()
        store = PrivateRedis(tmp_path / "redis", port=port, appendonly=True).start()
        r = redis.Redis.from_url(store.url)
        push(150)
        _wait(lambda: _analysed(r, 3) == 300, "the records sent after the outage")
        for c in range(3):
            stored: Any = r.hgetall(STATE_PREFIX + f"client-{c}")
            assert int(stored[b"queries"]) == 100
            assert engine.state_from_bytes(stored[b"engine:digits-mlp"]).queries == 100
    finally:
        worker.stop()
        thread.join(10)
        store.stop()


def _analysed(r: redis.Redis, clients: int) -> int:
    return sum(int(r.hget(STATE_PREFIX + f"client-{c}", "queries") or 0) for c in range(clients))  # type: ignore[arg-type]


def _wait(predicate: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_records_without_a_baseline_or_of_the_wrong_width_are_set_aside(
    redis_client: redis.Redis, redis_url: str, engine: DetectionEngine
) -> None:
    """One client, three kinds of records: analysed (a model with a baseline), skipped (a model without one),
    malformed (wrong input width, or not a record at all). Every entry is acknowledged; none is lost."""
    _, _, x_traffic, _ = holdout_halves(digits_split(0))
    r = redis_client
    for i in range(60):
        r.xadd("mc:queries", record(i, "mixed", x_traffic[i]))  # type: ignore[arg-type]
    for i in range(60, 80):
        fields = record(i, "mixed", x_traffic[i])
        body = orjson.loads(fields["r"])
        r.xadd("mc:queries", {"v": b"1", "r": orjson.dumps({**body, "model": "another-model"})})
    r.xadd("mc:queries", {"v": b"1", "r": orjson.dumps({**body, "model": "digits-mlp", "input": [1.0, 2.0]})})
    r.xadd("mc:queries", {"garbage": b"yes"})
    worker = make_worker(redis_url, engine, "w-mixed", 500)
    worker.ensure_group()
    assert worker.step() == 82
    assert int(r.hget(STATE_PREFIX + "mixed", "queries")) == 60  # type: ignore[arg-type]
    assert worker.metrics.skipped._value.get() == 20  # type: ignore[attr-defined]
    assert worker.metrics.malformed._value.get() == 2  # type: ignore[attr-defined]
    assert r.xlen("mc:queries:malformed") == 2
    risk = orjson.loads(r.get("mc:risk:mixed"))  # type: ignore[arg-type]
    assert set(risk["models"]) == {"digits-mlp"} and risk["queries_seen"] == 60 and risk["level"] == "low"
    groups: Any = r.xinfo_groups("mc:queries")
    assert groups[0]["pending"] == 0


def _alerted_clients(
    url: str,
    engine: DetectionEngine,
    name: str,
    population: PopulationConfig | None,
    clients: range = range(30),
    *,
    flush: bool = True,
    save_s: float = 0.0,
) -> int:
    r = redis.Redis.from_url(url)
    if flush:
        r.flushdb()
    _, _, x_traffic, _ = holdout_halves(digits_split(0))
    device = 16.0 - x_traffic  # a popular scanner that delivers negatives: far from every reference row
    rng = np.random.default_rng(clients.start)
    rows = {f"neg{c}": device[rng.choice(len(device), 60, replace=False)] for c in clients}
    i = 0
    for q in range(60):  # the customers' queries interleaved, as they arrive in the log
        for client, X in rows.items():
            r.xadd("mc:queries", record(i, client, X[q]))  # type: ignore[arg-type]
            i += 1
    worker = make_worker(url, engine, name, 60)
    worker.config.population = population
    worker.config.population_save_s = save_s
    worker.ensure_group()
    while worker.step():
        pass
    worker.save_populations()  # what ``run`` does when the detector stops
    return sum(orjson.loads(r.get(f"mc:risk:{c}"))["level"] != "low" for c in rows)  # type: ignore[arg-type]


def test_a_device_many_customers_share_is_learned_from_the_population(
    redis_client: redis.Redis, redis_url: str, engine: DetectionEngine
) -> None:
    """30 customers behind one scanner that delivers negatives: the reference-only detector calls them all
    out of distribution; with the population baseline (warm after 10 clients) the others explain them."""
    alone = _alerted_clients(redis_url, engine, "w-alone", None)
    learned = _alerted_clients(redis_url, engine, "w-pop", PopulationConfig(min_clients=10, support=3))
    assert alone >= 25
    assert learned <= 3


def test_a_restarted_detector_starts_from_the_saved_population(
    redis_client: redis.Redis, redis_url: str, engine: DetectionEngine
) -> None:
    """The population is saved to Redis and read back by the next detector process: five newcomers with the
    shared device are explained at once after a restart; without the saved ring (never saved) the new process
    is reference-only until 10 clients have sent rows, and calls them out of distribution."""
    config = PopulationConfig(min_clients=10, support=3)
    assert _alerted_clients(redis_url, engine, "w-before", config, save_s=60.0) <= 3
    assert redis_client.exists("mc:det:population:digits-mlp")
    restored = _alerted_clients(redis_url, engine, "w-after", config, range(100, 105), flush=False, save_s=60.0)
    redis_client.delete("mc:det:population:digits-mlp")
    cold = _alerted_clients(redis_url, engine, "w-cold", config, range(200, 205), flush=False, save_s=60.0)
    assert restored <= 1
    assert cold >= 4
