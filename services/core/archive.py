"""The query-log archive on disk: gzip-compressed, hash-chained segments, and their verification.

The archiver (``services.archiver``) copies ``mc:queries`` into segments before the stream is trimmed, so the
evidence of what every client asked and got survives Redis's memory bound. The format is plain files any
auditor can read with ``zcat``:

    <dir>/segment-00000000.jsonl.gz   first line: {"segment": 0, "prev": "<64 hex>", "first_id": ..., "count": n}
                                       then one line per record: {"id": "<stream id>", "v": "1", "r": "<record JSON>",
                                                                  "h": "<64 hex>"}
    <dir>/head.json                    {"segments": n, "last_id", "last_hash", "records", "pruned_segments",
                                        "pruned_hash"}

``h`` chains every record to all before it: ``h_i = SHA-256(h_{i-1} || id || 0x00 || v || 0x00 || r)`` with
``h_{-1}`` = 64 zeros, across segment boundaries (a segment's ``prev`` is the last ``h`` of the one before).
Changing, removing, inserting or reordering any record breaks every later hash; a removed segment breaks the
numbering and the next segment's ``prev``. Retention deletes the oldest segments and records in the head where
the kept chain starts (``pruned_hash``), so verification still runs from there.

What the chain cannot do alone: someone who can rewrite the whole directory can recompute the whole chain.
The head hash is therefore also kept in Redis (``mc:archive:head``, another trust domain) and printed by
``modelcustody archive verify``; publish it, or compare it with ``--expect-head``, to pin the archive.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.core.storage import replace_synced

GENESIS = "0" * 64
HEAD_FILE = "head.json"
SEGMENT_NAME = re.compile(r"^segment-(\d{8})\.jsonl\.gz$")


def segment_path(directory: Path, index: int) -> Path:
    return directory / f"segment-{index:08d}.jsonl.gz"


def chain(prev: str, entry_id: str, version: str, record: str) -> str:
    h = hashlib.sha256(bytes.fromhex(prev))
    h.update(entry_id.encode() + b"\0" + version.encode() + b"\0" + record.encode())
    return h.hexdigest()


def stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Head:
    segments: int = 0  # segments ever written (the next one gets this index)
    last_id: str = "0-0"  # the newest archived stream id
    last_hash: str = GENESIS
    records: int = 0  # records ever archived
    pruned_segments: int = 0  # segments deleted by retention (indices below this)
    pruned_hash: str = GENESIS  # the chain hash where the kept segments start

    @classmethod
    def load(cls, directory: Path) -> Head:
        path = directory / HEAD_FILE
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))

    def save(self, directory: Path) -> None:
        _write_atomic(directory / HEAD_FILE, json.dumps(asdict(self), sort_keys=True).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    replace_synced(path.with_name(f".{path.name}.tmp"), path, data)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends records to the next segment; ``commit`` makes it durable and advances the head.

    Only after ``commit`` returns may the records be acknowledged and trimmed from the stream. A crash before
    that leaves a temporary file the next writer discards, and the records still pending in Redis.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".segment-*.tmp"):
            stale.unlink()
        self.head = Head.load(directory)
        self._lines: list[bytes] = []
        self._hash = self.head.last_hash
        self._first_id: str | None = None
        self._last_id = self.head.last_id

    @property
    def pending(self) -> int:
        return len(self._lines)

    def already_archived(self, entry_id: str) -> bool:
        """True for an entry at or before the head (redelivered after a crash between commit and XACK)."""
        return stream_id_key(entry_id) <= stream_id_key(self._last_id)

    def add(self, entry_id: str, version: str, record: str) -> None:
        if self.already_archived(entry_id):
            raise ValueError(f"stream id {entry_id} is not after {self._last_id}: archive order would break")
        self._hash = chain(self._hash, entry_id, version, record)
        self._lines.append(json.dumps({"id": entry_id, "v": version, "r": record, "h": self._hash}).encode())
        self._first_id = self._first_id or entry_id
        self._last_id = entry_id

    def commit(self) -> Path | None:
        if not self._lines:
            return None
        index = self.head.segments
        header = {"segment": index, "prev": self.head.last_hash, "first_id": self._first_id, "count": len(self._lines)}
        final = segment_path(self.directory, index)
        tmp = self.directory / f".{final.name}.tmp"
        with open(tmp, "wb") as raw:
            # mtime=0: the same records always compress to the same bytes.
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                gz.write(json.dumps(header).encode() + b"\n")
                gz.write(b"\n".join(self._lines) + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        self.head = Head(
            segments=index + 1, last_id=self._last_id, last_hash=self._hash,
            records=self.head.records + len(self._lines),
            pruned_segments=self.head.pruned_segments, pruned_hash=self.head.pruned_hash,
        )
        self.head.save(self.directory)
        self._lines, self._first_id = [], None
        return final

    def prune(self, keep_after_mtime: float) -> int:
        """Delete the oldest segments last written before ``keep_after_mtime`` (retention); the newest is kept."""
        removed = 0
        while self.head.pruned_segments < self.head.segments - 1:
            path = segment_path(self.directory, self.head.pruned_segments)
            if path.exists() and path.stat().st_mtime >= keep_after_mtime:
                break
            last_hash = _last_hash(path) if path.exists() else None
            if last_hash is None:
                break  # an unreadable segment is evidence: never delete it silently
            self.head.pruned_segments += 1
            self.head.pruned_hash = last_hash
            self.head.save(self.directory)  # the head moves first: a crash leaves an extra file, not a hole
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed += 1
        return removed


def _last_hash(path: Path) -> str | None:
    last = None
    try:
        with gzip.open(path, "rb") as f:
            for i, line in enumerate(f):
                if i:
                    last = json.loads(line)["h"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return last


@dataclass
class VerifyResult:
    ok: bool
    segments: int = 0
    records: int = 0
    head: str = GENESIS
    first_segment: int = 0
    problems: list[str] = field(default_factory=list)


def _read_segment(path: Path) -> Iterator[dict[str, object]]:
    with gzip.open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def verify_archive(directory: Path, expect_head: str | None = None, max_problems: int = 20) -> VerifyResult:
    """Walk every kept segment in order and recompute the chain; each break is reported with where it is."""
    result = VerifyResult(ok=False)
    if not (directory / HEAD_FILE).exists():
        result.problems.append(f"no {HEAD_FILE} in {directory}: not an archive")
        return result
    head = Head.load(directory)
    result.first_segment = head.pruned_segments
    running = head.pruned_hash
    last_key = (-1, -1)
    present = {int(m.group(1)) for p in directory.iterdir() if (m := SEGMENT_NAME.match(p.name))}
    for index in range(head.pruned_segments, head.segments):
        if len(result.problems) >= max_problems:
            break
        path = segment_path(directory, index)
        if index not in present:
            result.problems.append(f"segment {index} is missing")
            continue
        try:
            lines = list(_read_segment(path))
        except (OSError, EOFError, ValueError) as exc:
            result.problems.append(f"segment {index} is unreadable: {exc}")
            continue
        if not lines:
            result.problems.append(f"segment {index} is empty")
            continue
        header, records = lines[0], lines[1:]
        if header.get("segment") != index:
            result.problems.append(f"segment {index}: header names segment {header.get('segment')}")
        if header.get("prev") != running:
            result.problems.append(f"segment {index}: does not continue the chain (records before it changed or "
                                   "are missing)")
        if header.get("count") != len(records):
            result.problems.append(
                f"segment {index}: header counts {header.get('count')} records, holds {len(records)}"
            )
        result.segments += 1
        running = str(header.get("prev"))
        for n, rec in enumerate(records):
            entry_id, version, payload = str(rec.get("id")), str(rec.get("v")), str(rec.get("r"))
            try:
                key = stream_id_key(entry_id)
            except ValueError:
                key = (-1, -1)
            if key <= last_key:
                result.problems.append(f"segment {index} record {n} ({entry_id}): out of order")
            last_key = max(last_key, key)
            expected = chain(running, entry_id, version, payload)
            if rec.get("h") != expected:
                result.problems.append(f"segment {index} record {n} ({entry_id}): altered (hash mismatch)")
            running = str(rec.get("h"))  # continue from the stored hash: one break is reported once
            result.records += 1
    extra = sorted(i for i in present if i >= head.segments)  # below pruned_segments: retention's leftovers
    if extra:
        result.problems.append(f"segments {extra} are not in the head (written after it)")
    if head.segments > head.pruned_segments and running != head.last_hash:
        result.problems.append("the last segment does not end at the head's hash")
    if expect_head is not None and head.last_hash != expect_head:
        result.problems.append(f"the head hash {head.last_hash} is not the expected {expect_head}")
    result.head = head.last_hash
    result.ok = not result.problems
    return result
