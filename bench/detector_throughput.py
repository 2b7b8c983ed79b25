"""Detector throughput: queries/s of the pure detection engine in one process, and whether it stays flat
as a client's history grows; plus what PRADA's bounded growing set costs in detection.

    python bench/detector_throughput.py [--seed 0] [--quick]

Prints one JSON object as its last line:
- ``queries_per_s``: 64-dim digits-like queries, 200 clients round-robin, batches of 50 rows per client;
  every batch reads the client's state from bytes, observes, and writes the state back to bytes (as the
  Redis consumer does). Probabilities were computed beforehand (the detector never calls the model for
  them); ``queries_per_s_label_only`` is the same with label-only answers, so the boundary signal calls
  the reference model (a scikit-learn MLP) on every batch.
- ``service_records_per_s``: the real ``DetectorWorker`` consuming 60,000 records of 200 clients from a
  private Redis stream with batches of up to 2,000 entries (the default): stream reads, JSON decoding, state loads and
  stores, and the WATCH/MULTI/EXEC commits with XACK included (one process).
- ``qps_history_1k`` / ``qps_history_1m``: the same per-batch loop on one client that already has 1,000 /
  1,000,000 prior queries (the 1M history is fast-forwarded in batches of 10,000 through the same engine);
  ``flat_ratio`` = 1m / 1k (1.0 = cost independent of history). ``state_bytes_*``: the state's size.
- ``prada_cap``: PRADA's Shapiro-Wilk W and its calibrated p-value on a Jacobian-augmentation stream and on
  a benign stream, with the default cap (32 members per class) and with an unbounded growing set.
- ``benign_fpr_fresh``: clients replaying held-out digits (not in the reference data) that were ever
  alerted, the false-positive side of the numbers above (small sample: see ``benign_clients``).

Method: seeded; BLAS is capped at one thread (a detector process is meant to use one core; the service
scales by running several). Timings are medians of ``--repeats`` rounds, and the 1k / long-history loops
alternate within each round so that load from other processes on a shared machine hits both alike.
The victim is a small MLP on sklearn's digits (raw pixels 0..16), the reference data 600 held-out digits;
timed queries are digits with Gaussian pixel noise (sigma 0.5) so no two are identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.demo.processes import exit_on_sigterm  # noqa: E402
from services.detector.engine import DetectionEngine, FitConfig  # noqa: E402
from services.detector.prada import PradaSignal  # noqa: E402

BATCH = 50  # rows per client batch: the gateway-to-detector granularity the issue names
DIM = 64


def timed_loop(
    engine: DetectionEngine,
    blobs: dict[int, bytes],
    clients: list[int],
    X: np.ndarray,
    P: np.ndarray | None,
    labels: np.ndarray,
    batches: int,
) -> float:
    """Queries/s of ``batches`` batches, round-robin over ``clients``, state through bytes every batch."""
    t0 = time.perf_counter()
    for i in range(batches):
        c = clients[i % len(clients)]
        state = engine.state_from_bytes(blobs[c]) if c in blobs else engine.new_client_state()
        s = (i * BATCH) % (len(X) - BATCH)
        engine.observe(state, X[s : s + BATCH], None if P is None else P[s : s + BATCH], labels[s : s + BATCH], now=i)
        blobs[c] = engine.state_to_bytes(state)
    return batches * BATCH / (time.perf_counter() - t0)


def jbda_stream(seeds: np.ndarray, oracle: Callable[[np.ndarray], np.ndarray], rounds: int, step: float) -> np.ndarray:
    """Papernot's augmentation with a logistic-regression substitute: x + step * sign(d p_y / d x), in the
    order an attacker sends it (seeds, then each round's new points)."""
    S = seeds.copy()
    queries = [seeds]
    for r in range(rounds):
        y = oracle(S)
        sub = LogisticRegression(max_iter=500).fit(S / 16.0, y)
        W, P = sub.coef_, sub.predict_proba(S / 16.0)
        ci = np.searchsorted(sub.classes_, y)
        grad = P[np.arange(len(S)), ci][:, None] * (W[ci] - P @ W)
        sign = -1.0 if r < 3 else 1.0  # cleverhans: -λ for the first three rounds, +λ afterwards
        new = np.clip(S + sign * step * np.sign(grad), 0.0, 16.0)
        queries.append(new)
        S = np.vstack([S, new])
    return np.vstack(queries)


def prada_w(signal: PradaSignal, X: np.ndarray, labels: np.ndarray) -> dict[str, float | int | None]:
    state = signal.new_state()
    ws: list[float] = []
    ps: list[float] = []
    first = None
    for s in range(0, len(X), BATCH):
        r = signal.observe(state, X[s : s + BATCH], None, labels[s : s + BATCH])
        if r.statistic == r.statistic:  # not NaN: enough distances to test
            ws.append(r.statistic)
            ps.append(r.p_value)
            if first is None and r.fired:
                first = s + BATCH
    return {
        "min_w": round(min(ws), 4) if ws else None,
        "final_w": round(ws[-1], 4) if ws else None,
        "min_p": float(f"{min(ps):.3g}") if ps else None,
        "first_w_below_delta_at": first,
        "state_bytes": len(signal.state_to_bytes(state)),
    }


def service_records_per_s(engine: DetectionEngine, Q: np.ndarray, PQ: np.ndarray, n: int, batch_max: int) -> float:
    """Records/s of the real DetectorWorker on a private Redis: stream read, state load/store, XACK commits."""
    import tempfile

    import redis
    from prometheus_client import CollectorRegistry

    from services.core.alerts import AlertStore
    from services.core.records import QueryRecord
    from services.demo.processes import PrivateRedis
    from services.detector.service.consumer import DetectorConfig, DetectorWorker
    from services.detector.service.metrics import DetectorMetrics
    from services.detector.service.runtime import CATCH_ALL, EngineSet

    with tempfile.TemporaryDirectory() as work:
        store = PrivateRedis(Path(work), appendonly=False).start()
        try:
            r = redis.Redis.from_url(store.url)
            with r.pipeline(transaction=False) as pipe:
                for i in range(n):
                    rec = QueryRecord(
                        record_id=f"bench:{i}",
                        gateway="bench",
                        seq=i,
                        ts=1.0e9 + i,
                        client_id=f"c{i % 200}",
                        model="m",
                        protocol="oip_v2",
                        request_id=str(i),
                        row=0,
                        batch_size=1,
                        input=Q[i].tolist(),
                        output=PQ[i].tolist(),
                        output_kind="probabilities",
                        status=200,
                        upstream_latency_s=0.001,
                        policy="none",
                    )
                    pipe.xadd("mc:queries", rec.to_stream_fields())  # type: ignore[arg-type]
                pipe.execute()
            worker = DetectorWorker(
                r,
                EngineSet({CATCH_ALL: engine}),
                AlertStore(r),
                DetectorMetrics(CollectorRegistry()),
                DetectorConfig(batch_max=batch_max, block_ms=10, tighten_on=""),
            )
            worker.ensure_group()
            t0 = time.perf_counter()
            done = 0
            while done < n:
                done += worker.step()
            return n / (time.perf_counter() - t0)
        finally:
            store.stop()


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=2000, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer batches, 100k-query 'long' history")
    args = parser.parse_args()
    batches = 400 if args.quick else args.batches
    long_history = 100_000 if args.quick else 1_000_000
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    rng = np.random.default_rng(args.seed)
    t_start = time.time()

    X, y = load_digits(return_X_y=True)
    Xv, Xh, yv, yh = train_test_split(X, y, test_size=0.5, random_state=args.seed, stratify=y)
    Xref, Xfresh = Xh[:600], Xh[600:]
    # One hidden layer of 32: ~0.95 held-out accuracy, trains in < 1 s.
    victim = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=args.seed).fit(Xv / 16.0, yv)

    def model(Z: np.ndarray) -> np.ndarray:
        return np.asarray(victim.predict_proba(np.asarray(Z) / 16.0))

    t0 = time.perf_counter()
    engine = DetectionEngine.fit(Xref, model(Xref), reference_model=model, config=FitConfig(seed=args.seed))
    fit_s = time.perf_counter() - t0

    n_q = 200_000
    Q = np.clip(X[rng.integers(len(X), size=n_q)] + rng.normal(0.0, 0.5, (n_q, DIM)), 0.0, 16.0)
    PQ = model(Q)
    LQ = PQ.argmax(axis=1)

    def median_of(fn: Callable[[], float]) -> float:
        return statistics.median(fn() for _ in range(args.repeats))

    threadpool_limits(1)
    clients = list(range(200))  # a population round-robin: every batch is a state load and store
    blobs: dict[int, bytes] = {}
    timed_loop(engine, blobs, clients, Q, PQ, LQ, len(clients) * 4)  # warm up: every client has a state
    qps = median_of(lambda: timed_loop(engine, blobs, clients, Q, PQ, LQ, batches))
    blobs_lo: dict[int, bytes] = {}
    timed_loop(engine, blobs_lo, clients, Q, None, LQ, len(clients) * 4)
    qps_lo = median_of(lambda: timed_loop(engine, blobs_lo, clients, Q, None, LQ, batches // 2))

    # One client with a short and one with a long history; then the same per-batch loop on each.
    hist: dict[int, bytes] = {}
    for cid, n_prior, chunk in ((1, 1_000, BATCH), (2, long_history, 10_000)):
        state = engine.new_client_state()
        t0 = time.perf_counter()
        for _ in range(0, n_prior, chunk):
            rows = rng.integers(0, n_q - chunk)
            engine.observe(state, Q[rows : rows + chunk], PQ[rows : rows + chunk], LQ[rows : rows + chunk])
        hist[cid] = engine.state_to_bytes(state)
        print(f"# history {n_prior}: fast-forward {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    size_1k, size_long = len(hist[1]), len(hist[2])
    rounds = [
        (timed_loop(engine, hist, [1], Q, PQ, LQ, batches), timed_loop(engine, hist, [2], Q, PQ, LQ, batches))
        for _ in range(args.repeats)
    ]
    qps_1k = statistics.median(r[0] for r in rounds)
    qps_long = statistics.median(r[1] for r in rounds)

    service_qps = service_records_per_s(engine, Q, PQ, 20_000 if args.quick else 60_000, batch_max=2000)

    # What the PRADA cap costs: a Jacobian-augmentation stream (150 seeds, 4 rounds: 2,400 queries) and a
    # benign stream (the 899 natural digits the victim was trained on: never in the reference data, no
    # duplicates), with the default cap and with a growing set that never evicts.
    def labels_of(Z: np.ndarray) -> np.ndarray:
        return np.asarray(victim.predict(Z / 16.0))

    attack = jbda_stream(Xfresh[:150], labels_of, rounds=4, step=1.6)  # 1.6 = 0.1 of the 0..16 range
    benign = Xv[rng.permutation(len(Xv))]
    prada = next(s for s in engine.signals if isinstance(s, PradaSignal))
    capped = PradaSignal(prada.baseline(), n_features=DIM, n_classes=10, **prada.params())
    unbounded = PradaSignal(
        prada.baseline(), n_features=DIM, n_classes=10, **{**prada.params(), "max_set_size": len(attack)}
    )
    prada_cap: dict[str, object] = {
        "max_set_size": prada.max_set_size,
        "delta": prada.delta,
        "jbda_capped": prada_w(capped, attack, labels_of(attack)),
        "jbda_unbounded": prada_w(unbounded, attack, labels_of(attack)),
        "benign_capped": prada_w(capped, benign, labels_of(benign)),
        "benign_unbounded": prada_w(unbounded, benign, labels_of(benign)),
    }
    for k in (8, 16):  # smaller caps, to show where the approximation starts to cost detection
        small = PradaSignal(prada.baseline(), n_features=DIM, n_classes=10, **{**prada.params(), "max_set_size": k})
        prada_cap[f"jbda_cap_{k}"] = prada_w(small, attack, labels_of(attack))

    # The false-positive side: fresh held-out digits, shuffled, one client each, 50 clients.
    alerted = 0
    n_benign = 50
    for _ in range(n_benign):
        order = rng.permutation(len(Xfresh))
        Pf = model(Xfresh[order])
        state = engine.new_client_state()
        hit = False
        for s in range(0, len(order), BATCH):
            a = engine.observe(state, Xfresh[order[s : s + BATCH]], Pf[s : s + BATCH], Pf[s : s + BATCH].argmax(1))
            hit = hit or a.alert
        alerted += hit

    th = engine.thresholds
    assert th is not None
    out = {
        "service_records_per_s": round(service_qps),
        "queries_per_s": round(qps),
        "qps_history_1k": round(qps_1k),
        "qps_history_1m": round(qps_long),
        "flat_ratio": round(qps_long / qps_1k, 3),
        "long_history_queries": long_history,
        "queries_per_s_label_only": round(qps_lo),
        "batch_size": BATCH,
        "dim": DIM,
        "clients": len(clients),
        "state_bytes_1k": size_1k,
        "state_bytes_1m": size_long,
        "prada_cap": prada_cap,
        "alert_threshold": round(th.alert, 3),
        "benign_clients": n_benign,
        "benign_queries_each": len(Xfresh),
        "benign_fpr_fresh": alerted / n_benign,
        "fit_s": round(fit_s, 2),
        "seed": args.seed,
        "wall_s": round(time.time() - t_start, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
