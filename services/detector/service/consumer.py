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

Each record is analysed by the engine of its model (``runtime.EngineSet``); a client's state holds one
engine state per model it queried, and its risk is the highest over those models. Records of a model with
no engine, or whose input width is not the engine's, are acknowledged and counted as skipped / malformed:
they can never become analysable by waiting, and leaving them pending would block nothing but the count.

Two detectors may interleave one client's records slightly out of stream order; the signals are
statistics over a window and do not depend on exact order (PRADA's distances, margins, coverage), except
the sweep signal's consecutive-pair test, which tolerates a few swapped pairs.
"""

from __future__ import annotations

import logging
import math
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
from services.detector.engine import Assessment
from services.detector.service.metrics import DetectorMetrics
from services.detector.service.runtime import EngineSet

log = logging.getLogger(__name__)

GROUP = "detectors"
STATE_PREFIX = "mc:det:state:"
RISK_PREFIX = "mc:risk:"
LEVELS_KEY = "mc:risk:levels"
MALFORMED_STREAM = "mc:queries:malformed"
LEVEL_ORDER = ("low", "medium", "high")


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
        engines: EngineSet,
        alerts: AlertStore,
        metrics: DetectorMetrics,
        config: DetectorConfig | None = None,
    ) -> None:
        self.r = r
        self.engines = engines
        self._last_gauges = 0.0
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
        resp: Any = self.r.xreadgroup(
            GROUP, self.consumer, {self.config.stream: ">"}, count=self.config.batch_max, block=self.config.block_ms
        )
        for _, entries in resp or []:
            handled += self.process(entries)
        if now - self._last_gauges >= 1.0:  # two Redis reads: once a second, not once per batch
            self._last_gauges = now
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
        skipped = 0
        for entry_id, fields in entries:
            ids.append(entry_id)
            try:
                rec = QueryRecord.from_stream_fields(fields)
            except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
                malformed.append((entry_id, fields))
                continue
            engine = self.engines.for_model(rec.model)
            if engine is None:
                skipped += 1  # a model this detector has no baseline for
            elif len(rec.input) != engine.n_features or not all(map(math.isfinite, rec.input)):
                malformed.append((entry_id, fields))
            else:
                by_client[rec.client_id].append(rec)
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
        if skipped:
            self.metrics.skipped.inc(skipped)
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
            stored: list[dict[bytes, bytes]] = [pipe.hgetall(k) for k in keys]  # type: ignore[misc]
            previous_risk: list[Any] = [pipe.get(RISK_PREFIX + c) for c in clients]
            updates: dict[str, dict[str, bytes | str | float | int]] = {}
            risks: dict[str, bytes] = {}
            levels: dict[str, str] = {}
            for client, raw, prev in zip(clients, stored, previous_risk, strict=True):
                records = by_client[client]
                queries = int(raw.get(b"queries", 0)) + len(records)
                first_ts = float(raw[b"first_ts"]) if b"first_ts" in raw else min(r.ts for r in records)
                now = max(r.ts for r in records)
                per_model: dict[str, Any] = orjson.loads(prev).get("models", {}) if prev else {}
                mapping: dict[str, bytes | str | float | int] = {"queries": queries, "first_ts": first_ts}
                by_model: dict[str, list[QueryRecord]] = defaultdict(list)
                for rec in records:
                    by_model[rec.model].append(rec)
                for model, recs in sorted(by_model.items()):
                    engine = self.engines.for_model(model)
                    assert engine is not None  # process() only passes records some engine analyses
                    field = f"engine:{model}"
                    blob = raw.get(field.encode())
                    state = engine.state_from_bytes(blob) if blob else engine.new_client_state()
                    x, outputs, labels = _arrays(recs, engine.n_classes)
                    assessment = engine.observe(state, x, outputs, labels, now=now)
                    mapping[field] = engine.state_to_bytes(state)
                    per_model[model] = assessment.to_dict()
                    if assessment.alert:
                        self._raise(client, model, assessment, first_ts, now, queries)
                worst = max(per_model.values(), key=lambda a: a["risk_score"])
                level = max((a["level"] for a in per_model.values()), key=LEVEL_ORDER.index)
                risks[client] = orjson.dumps(
                    {
                        "client_id": client,
                        "risk_score": worst["risk_score"],
                        "level": level,
                        "threshold": worst["threshold"],
                        "queries_seen": queries,
                        "first_seen": first_ts,
                        "updated_at": now,
                        "models": per_model,
                    }
                )
                levels[client] = level
                updates[client] = mapping
            pipe.multi()
            for client, mapping in updates.items():
                pipe.hset(STATE_PREFIX + client, mapping=mapping)  # type: ignore[arg-type]
                pipe.set(RISK_PREFIX + client, risks[client])
            if levels:
                pipe.hset(LEVELS_KEY, mapping=levels)  # type: ignore[arg-type]
            for entry_id, fields in malformed:
                entry: dict[Any, Any] = {**fields, b"source_id": entry_id}
                pipe.xadd(MALFORMED_STREAM, entry, maxlen=100_000, approximate=True)
            if ids:
                pipe.xack(self.config.stream, GROUP, *ids)
            pipe.execute()

    def _raise(
        self, client: str, model: str, assessment: Assessment, first_ts: float, now: float, queries: int
    ) -> None:
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
            model=model,
            risk_threshold=float(assessment.threshold),
            # The test that fired may lie inside the batch: count the client's queries up to it.
            queries_at_test=queries - assessment.queries_seen + (assessment.first_alert_at or assessment.queries_seen),
        )
        for signal in assessment.fired:
            self.metrics.alerts.labels(signal, severity).inc()
        if is_new:
            self.metrics.alerts_opened.labels(severity).inc()
            log.warning(
                "extraction alert %s on client %s, model %s (risk %.3f)", alert.id, client, model, assessment.risk_score
            )
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
            stored: Any = self.r.hvals(LEVELS_KEY)
            for raw in stored:
                counts[raw.decode()] += 1
            for level in LEVEL_ORDER:
                self.metrics.clients_at_level.labels(level).set(counts.get(level, 0))
        except redis.ResponseError:
            pass


def _arrays(records: list[QueryRecord], n_classes: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    x = np.asarray([r.input for r in records], dtype=np.float64)
    labels = np.asarray([_label(r) for r in records], dtype=np.int64)
    if all(r.output_kind == "probabilities" and r.output and len(r.output) == n_classes for r in records):
        outputs: np.ndarray | None = np.asarray([r.output for r in records], dtype=np.float64)
    else:
        outputs = None  # label-only (or mixed) answers: the engine uses its reference model's margins
    return x, outputs, labels


def _label(record: QueryRecord) -> int:
    """The class the client was told, or -1 when the answer named none (failed request, raw output)."""
    if record.output_kind not in ("probabilities", "label"):
        return -1
    label = record.predicted_label()
    return -1 if label is None else label
