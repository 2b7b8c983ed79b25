"""The detector service: a Redis Streams consumer group over the query log, per-client state in Redis.

Several detector processes join one consumer group on ``mc:queries``; Redis hands each entry to one of
them. A client's state lives in Redis (``mc:det:state:<client>``), so any process can analyse any
client, and a killed process loses nothing:

- a batch's state updates and its XACKs commit in ONE MULTI/EXEC, guarded by WATCH on the clients'
  state keys: either the batch is fully accounted for or not at all (then it stays pending);
- a concurrent update of the same client by another process aborts the EXEC and the batch is
  recomputed from the fresh state (optimistic concurrency, counted as a commit conflict);
- entries pending longer than ``reclaim_idle_s`` on a dead consumer are taken over with XAUTOCLAIM.

Alerts are recorded before the commit. Re-processing after a crash folds the repeated detection into
the client's open alert (de-duplicated per client and window), so it cannot open a second alert or send
a second webhook.

Two detectors may interleave one client's records slightly out of stream order; the signals are
statistics over a window and do not depend on exact order (PRADA's distances, margins, coverage), except
the sweep signal's consecutive-pair test, which tolerates a few swapped pairs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis

from services.core.alerts import AlertStore
from services.core.clients import ClientRegistry
from services.core.policy import OutputPolicy
from services.core.records import QueryRecord
from services.detector.engine import DetectionEngine
from services.detector.service.metrics import DetectorMetrics

log = logging.getLogger(__name__)

GROUP = "detectors"
STATE_PREFIX = "mc:det:state:"
RISK_PREFIX = "mc:risk:"
LEVELS_KEY = "mc:risk:levels"
MALFORMED_STREAM = "mc:queries:malformed"


@dataclass
class DetectorConfig:
    stream: str = "mc:queries"
    consumer: str = ""
    batch_max: int = 1000
    block_ms: int = 500
    # An entry unacknowledged this long belongs to a detector that died or hangs: take it over.
    reclaim_idle_s: float = 10.0
    # Tighten a client's policy when an alert reaches this severity ("high", "medium" or "" for never).
    tighten_on: str = "high"
    tightened_policy: OutputPolicy = OutputPolicy(label_only=True, daily_quota=1000, reason="extraction alert")


class DetectorWorker:
    def __init__(
        self,
        r: redis.Redis,
        engine: DetectionEngine,
        alerts: AlertStore,
        metrics: DetectorMetrics,
        config: DetectorConfig | None = None,
    ) -> None:
        self.r = r
        self.engine = engine
        self.alerts = alerts
        self.metrics = metrics
        self.config = config or DetectorConfig()
        self.consumer = self.config.consumer or f"{socket.gethostname()}-{id(self):x}"
        self._stop = threading.Event()
        self._last_reclaim = 0.0

    # ------------------------------------------------------------------ lifecycle
    def ensure_group(self) -> None:
        try:
            # From the start of the stream: a detector deployed later still analyses earlier queries.
            self.r.xgroup_create(self.config.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.ensure_group()
        log.info("detector %s consuming %s", self.consumer, self.config.stream)
        while not self._stop.is_set():
            try:
                self.step()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("Redis unavailable (%s); retrying", type(exc).__name__)
                self._stop.wait(1.0)

    def step(self) -> int:
        """Reclaim stale entries if due, read one batch, analyse and commit it. Returns entries handled."""
        handled = 0
        now = time.monotonic()
        if now - self._last_reclaim >= self.config.reclaim_idle_s / 2:
            self._last_reclaim = now
            handled += self._reclaim()
        resp = self.r.xreadgroup(
            GROUP, self.consumer, {self.config.stream: ">"}, count=self.config.batch_max, block=self.config.block_ms
        )
        for _, entries in resp or []:  # type: ignore[union-attr]
            handled += self.process(entries)
        self._update_gauges()
        return handled

    def _reclaim(self) -> int:
        handled = 0
        start = "0-0"
        while True:
            result = self.r.xautoclaim(
                self.config.stream,
                GROUP,
                self.consumer,
                min_idle_time=int(self.config.reclaim_idle_s * 1000),
                start_id=start,
                count=self.config.batch_max,
            )
            start_next, entries = result[0], result[1]  # type: ignore[index]
            entries = [e for e in entries if e[1] is not None]  # trimmed entries come back as None
            if entries:
                self.metrics.reclaimed.inc(len(entries))
                handled += self.process(entries)
            if start_next in (b"0-0", "0-0") or not entries:
                return handled
            start = start_next

    # ------------------------------------------------------------------ analysis
    def process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        t0 = time.perf_counter()
        by_client: dict[str, list[QueryRecord]] = defaultdict(list)
        ids: list[bytes] = []
        malformed: list[tuple[bytes, dict[bytes, bytes]]] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            try:
                rec = QueryRecord.from_stream_fields(fields)
                by_client[rec.client_id].append(rec)
            except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
                malformed.append((entry_id, fields))
        for attempt in range(20):
            try:
                self._analyse_and_commit(by_client, ids, malformed)
                break
            except redis.WatchError:
                self.metrics.commit_conflicts.inc()
                time.sleep(0.001 * (attempt + 1))
        else:
            raise RuntimeError("could not commit a batch after 20 attempts (heavy contention on one client)")
        n_records = sum(len(v) for v in by_client.values())
        self.metrics.queries.inc(n_records)
        if malformed:
            self.metrics.malformed.inc(len(malformed))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        return len(ids)

    def _analyse_and_commit(
        self,
        by_client: dict[str, list[QueryRecord]],
        ids: list[bytes],
        malformed: list[tuple[bytes, dict[bytes, bytes]]],
    ) -> None:
        clients = sorted(by_client)
        keys = [STATE_PREFIX + c for c in clients]
        with self.r.pipeline() as pipe:
            if keys:
                pipe.watch(*keys)
            stored = [pipe.hgetall(k) for k in keys]
            updates: dict[str, dict[str, bytes | str | float | int]] = {}
            risks: dict[str, bytes] = {}
            levels: dict[str, str] = {}
            for client, raw in zip(clients, stored, strict=True):
                records = by_client[client]
                state = self.engine.state_from_bytes(raw[b"engine"]) if raw else self.engine.new_client_state()
                queries_before = int(raw.get(b"queries", 0)) if raw else 0
                first_ts = float(raw[b"first_ts"]) if raw else records[0].ts
                x, outputs, labels = _arrays(records)
                now = max(r.ts for r in records)
                assessment = self.engine.observe(state, x, outputs, labels, now=now)
                queries = queries_before + len(records)
                summary = assessment.to_dict()
                summary.update({"queries_seen": queries, "updated_at": now, "first_seen": first_ts})
                risks[client] = orjson.dumps(summary)
                levels[client] = assessment.level
                if assessment.alert:
                    self._raise(client, assessment, first_ts, now, queries)
                updates[client] = {
                    "engine": self.engine.state_to_bytes(state),
                    "queries": queries,
                    "first_ts": first_ts,
                }
            pipe.multi()
            for client, mapping in updates.items():
                pipe.hset(STATE_PREFIX + client, mapping=mapping)  # type: ignore[arg-type]
                pipe.set(RISK_PREFIX + client, risks[client])
            if levels:
                pipe.hset(LEVELS_KEY, mapping=levels)  # type: ignore[arg-type]
            for entry_id, fields in malformed:
                pipe.xadd(MALFORMED_STREAM, {**fields, b"source_id": entry_id}, maxlen=100_000, approximate=True)
            if ids:
                pipe.xack(self.config.stream, GROUP, *ids)
            pipe.execute()

    def _raise(self, client: str, assessment: Any, first_ts: float, now: float, queries: int) -> None:
        severity = assessment.level if assessment.level in ("medium", "high") else "medium"
        alert, is_new = self.alerts.raise_or_update(
            client_id=client,
            severity=severity,
            risk_score=float(assessment.risk_score),
            signals=[s.to_dict() for s in assessment.signals],
            fired=list(assessment.fired),
            window_start=first_ts,
            window_end=now,
            queries_seen=queries,
        )
        for signal in assessment.fired:
            self.metrics.alerts.labels(signal, severity).inc()
        if is_new:
            self.metrics.alerts_opened.labels(severity).inc()
            log.warning("extraction alert %s on client %s (risk %.3f)", alert.id, client, assessment.risk_score)
        tighten = self.config.tighten_on
        if tighten and (severity == "high" or tighten == "medium"):
            reg = ClientRegistry(self.r)
            current = reg.get_policy(client)
            target = self.config.tightened_policy
            new = current.tightened(OutputPolicy(**{**target.to_dict(), "reason": f"alert {alert.id}"}))
            if new != current:
                reg.set_policy(client, new)

    def _update_gauges(self) -> None:
        try:
            info = self.r.xinfo_groups(self.config.stream)
            for g in info:  # type: ignore[union-attr]
                name = g.get("name")
                if name in (GROUP, GROUP.encode()):
                    self.metrics.lag.set(float(g.get("lag") or 0))
                    self.metrics.pending.set(float(g.get("pending") or 0))
            counts: dict[str, int] = defaultdict(int)
            for level in self.r.hvals(LEVELS_KEY):  # type: ignore[union-attr]
                counts[level.decode()] += 1
            for level in ("low", "medium", "high"):
                self.metrics.clients_at_level.labels(level).set(counts.get(level, 0))
        except redis.ResponseError:
            pass


def _arrays(records: list[QueryRecord]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    x = np.asarray([r.input for r in records], dtype=np.float64)
    labels = np.asarray([r.predicted_label() if r.output else -1 for r in records], dtype=np.int64)
    if all(r.output_kind == "probabilities" for r in records):
        outputs: np.ndarray | None = np.asarray([r.output for r in records], dtype=np.float64)
    else:
        outputs = None  # label-only answers: the engine uses its reference model's margins
    return x, outputs, labels
