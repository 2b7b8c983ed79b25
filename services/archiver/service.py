"""The archiver: a consumer group on ``mc:queries`` that writes segments, then trims what everyone has read.

Order of every step, so that no record is ever only in memory:

1. ``XREADGROUP`` (group ``archiver``) and append to the open segment (``services.core.archive``);
2. when the segment holds ``archive_segment_records`` records or has been open ``archive_segment_interval_s``,
   write it (fsync, rename, fsync the directory), advance ``head.json`` and the head hash in Redis;
3. only then ``XACK`` its entries;
4. ``XTRIM MINID`` to the oldest entry some consumer group still needs: for each group, its oldest pending
   entry, or the entry after its last delivered one. Nothing is trimmed while a required group
   (``archive_required_groups``, the detectors by default) does not exist yet, since it would start at 0.

A crash between 2 and 3 redelivers entries the segment already holds: they are recognised by their ids
(not after the head's ``last_id``) and only acknowledged. The gateway's ``XADD MAXLEN ~`` bound stays the
last line of defence: if the archiver or the detectors stop, the stream is cut at the bound rather than
Redis running out of memory (``ModelCustodyQueryLogNearBound`` fires first).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from services.core import keys
from services.core.archive import SegmentWriter
from services.core.metrics import counter, gauge
from services.core.settings import Settings
from services.core.streams import ensure_group, run_steps

log = logging.getLogger(__name__)

GROUP = "archiver"
HEAD_KEY = keys.ARCHIVE_HEAD


class ArchiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.stream_entries = gauge(
            r, "modelcustody_querylog_stream_entries", "Entries in the query-log stream (XLEN)."
        )
        self.stream_bound = gauge(
            r,
            "modelcustody_querylog_stream_bound_entries",
            "The gateways' approximate MAXLEN bound of the stream: entries beyond it are cut, archived or not.",
        )
        self.archived = counter(
            r, "modelcustody_archive_records_total", "Query-log records written to archive segments."
        )
        self.segments = counter(r, "modelcustody_archive_segments_total", "Archive segments written.")
        self.trimmed = counter(
            r,
            "modelcustody_archive_trimmed_records_total",
            "Stream entries trimmed after every consumer group had read them and the archive held them.",
        )
        self.last_segment = gauge(
            r, "modelcustody_archive_last_segment_timestamp_seconds", "When the last segment was written."
        )


def _id(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class Archiver:
    def __init__(self, r: redis.Redis, settings: Settings, metrics: ArchiverMetrics, consumer: str = "archiver-1"):
        self.r = r
        self.settings = settings
        self.stream = settings.queries_stream
        self.metrics = metrics
        self.consumer = consumer
        self.writer = SegmentWriter(settings.archive_path)
        self._unacked: list[str] = []
        self._opened_at: float | None = None
        self._stop = threading.Event()
        metrics.stream_bound.set(settings.queries_stream_maxlen)

    def ensure_group(self) -> None:
        ensure_group(self.r, self.stream, GROUP)

    def stop(self) -> None:
        self._stop.set()

    def recover(self) -> None:
        """Take over every pending entry of the group (a crash before XACK, maybe under another consumer name:
        a new container has a new hostname), archive what the head does not hold yet, acknowledge the rest."""
        start_id = "-"
        while True:
            pending: Any = self.r.xpending_range(self.stream, GROUP, min=start_id, max="+", count=1000)
            if not pending:
                break
            others: list[Any] = [_id(p["message_id"]) for p in pending if _id(p["consumer"]) != self.consumer]
            if others:
                self.r.xclaim(self.stream, GROUP, self.consumer, 0, others, justid=True)
            start_id = "(" + _id(pending[-1]["message_id"])
        start = "0"
        while True:
            seen, last = self._read(start)
            if not seen:
                break
            start = last
        self.flush()

    def run(self) -> None:
        self.ensure_group()
        self.recover()
        run_steps(self.step, self._stop, log)
        self.flush()

    def step(self, block_ms: int = 1000) -> int:
        n, _ = self._read(">", block_ms)  # archived
        interval = self.settings.archive_segment_interval_s
        due = self._opened_at is not None and time.monotonic() - self._opened_at >= interval
        if self.writer.pending >= self.settings.archive_segment_records or due:
            self.flush()
        self.metrics.stream_entries.set(self.r.xlen(self.stream))
        return n

    def _read(self, start: str, block_ms: int | None = None) -> tuple[int, str]:
        """Read after ``start`` (``>``: new entries; an id: this consumer's pending ones after it). Returns the
        entries seen (``>``: archived) and the last id seen (``""`` when none came)."""
        count = max(1, min(self.settings.archive_segment_records - self.writer.pending, 10_000))
        reply: Any = self.r.xreadgroup(GROUP, self.consumer, {self.stream: start}, count=count, block=block_ms)
        n, seen, last = 0, 0, ""
        for _, entries in reply or []:
            for raw_id, fields in entries:
                entry_id = last = _id(raw_id)
                seen += 1
                self._unacked.append(entry_id)
                if not fields or self.writer.already_archived(entry_id):
                    continue  # trimmed while pending, or already in a committed segment (crash before XACK)
                self.writer.add(entry_id, _id(fields.get(b"v", b"")), _id(fields.get(b"r", b"")))
                self._opened_at = self._opened_at or time.monotonic()
                n += 1
        if start != ">" and last and self.writer.pending >= self.settings.archive_segment_records:
            self.flush()
        return (n if start == ">" else seen), last

    def flush(self) -> None:
        """Commit the open segment, then acknowledge its entries, then trim the stream."""
        written = self.writer.pending
        path = self.writer.commit()
        if path is not None:
            self.r.set(HEAD_KEY, self.writer.head.last_hash)
            self.metrics.archived.inc(written)
            self.metrics.segments.inc()
            self.metrics.last_segment.set(time.time())
            log.info("archived %d records to %s (head %s)", written, path.name, self.writer.head.last_hash[:16])
        self._opened_at = None
        self._ack()
        self.trim()
        if self.settings.archive_retention_days > 0:
            self.writer.prune(time.time() - self.settings.archive_retention_days * 86_400)

    def _ack(self) -> None:
        for i in range(0, len(self._unacked), 10_000):
            self.r.xack(self.stream, GROUP, *self._unacked[i : i + 10_000])
        self._unacked.clear()

    def safe_trim_id(self) -> str | None:
        """The oldest id some group still needs (entries before it may go), or None when nothing may go."""
        groups: Any = self.r.xinfo_groups(self.stream)
        names = {_id(g["name"]) for g in groups}
        if GROUP not in names or not set(self.settings.archive_required_groups) <= names:
            return None
        bounds = []
        for g in groups:
            pending: Any = self.r.xpending(self.stream, _id(g["name"]))
            if pending["pending"]:
                bounds.append(_id(pending["min"]))
            else:
                bounds.append(_after(_id(g["last-delivered-id"])))
        return min(bounds, key=lambda i: tuple(int(x) for x in i.split("-")))

    def trim(self) -> int:
        minid = self.safe_trim_id()
        if minid is None or minid == "0-1":
            return 0
        # Exact, not "~": the metric then counts precisely what left Redis (the archive already holds it).
        removed = int(self.r.xtrim(self.stream, minid=minid, approximate=False))
        self.metrics.trimmed.inc(removed)
        return removed


def run_archiver(settings: Settings) -> None:
    """The archiver process: metrics on ``archiver_metrics_port``, stops on SIGTERM after committing."""
    import signal
    import socket

    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    metrics = ArchiverMetrics(registry)
    r = redis.Redis.from_url(settings.redis_url)
    archiver = Archiver(r, settings, metrics, consumer=f"{socket.gethostname()}")
    if settings.archiver_metrics_port:
        start_http_server(settings.archiver_metrics_port, registry=registry)
    signal.signal(signal.SIGTERM, lambda *_: archiver.stop())
    signal.signal(signal.SIGINT, lambda *_: archiver.stop())
    log.info("archiver writing %s to %s", settings.queries_stream, settings.archive_path)
    archiver.run()
