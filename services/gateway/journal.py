"""The gateway's journal: query-log rows Redis acknowledged, kept until Redis has surely made them durable.

With ``appendfsync everysec`` Redis acknowledges a write before it is on disk: a host crash (power, kernel,
VM) loses the last second or so, two when a slow disk makes Redis postpone its writes. The gateway had
answered those rows and counted them committed. The journal keeps every committed row, its gateway sequence
number and the stream id Redis gave it, so that the writer can put back exactly what Redis lost, under the
same ids (``services/gateway/querylog.py`` says when it looks).

Two files, ``<instance>.journal`` and ``<instance>.journal.prev``: rows are appended to the first; once its
oldest row is older than ``retain_s`` *and* a later write proved that Redis still held everything, it
becomes the second and the old second is deleted. So the journal always covers at least the last
``retain_s`` seconds of committed rows, at most about twice that, and never drops a row while Redis is
unreachable (no write proves anything then).

A line is ``<seq> <stream id> <record JSON>``: the record is orjson output (no raw newline inside).
Lines are written, not fsynced: the journal must outlive a Redis crash, which the gateway process
survives; a crash of the gateway's own host loses its in-memory buffer anyway (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

JournalRow = tuple[int, str, bytes]  # (gateway sequence number, stream id, record JSON)


class Journal:
    def __init__(self, directory: Path, instance: str, retain_s: float) -> None:
        if retain_s <= 0:
            raise ValueError("retain_s must be > 0")
        self.path = directory / f"{instance}.journal"
        self.prev_path = directory / f"{instance}.journal.prev"
        self.retain_s = retain_s
        self._opened_at: float | None = None  # monotonic time of the current file's oldest row
        self._fh: BinaryIO | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail(self.path)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the gateway's life
        # A restarted gateway does not know the age of the rows it finds: count them from now.
        self._opened_at = time.monotonic() if self.path.stat().st_size else None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def append(self, rows: list[JournalRow]) -> None:
        if not rows:
            return
        assert self._fh is not None, "Journal.open() first"
        self._fh.write(b"".join(b"%d %s %s\n" % (seq, sid.encode(), payload) for seq, sid, payload in rows))
        self._fh.flush()  # into the page cache: it survives the gateway process, which is what it is for
        if self._opened_at is None:
            self._opened_at = time.monotonic()

    def confirmed(self) -> None:
        """Redis was just shown to hold every committed row: rotate if the current file is old enough."""
        if self._opened_at is None or time.monotonic() - self._opened_at < self.retain_s:
            return
        assert self._fh is not None
        self._fh.close()
        self.path.replace(self.prev_path)  # the old .prev's rows are all older than retain_s: dropped
        self._fh = open(self.path, "ab")  # noqa: SIM115
        self._opened_at = None

    def last_seq(self) -> int:
        last = 0
        for seq, _, _ in self.rows(0):
            last = max(last, seq)
        return last

    def rows(self, after: int) -> list[JournalRow]:
        """Every row with a sequence number above ``after``, oldest file first, in the order written."""
        out: list[JournalRow] = []
        for path in (self.prev_path, self.path):
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
                for line in fh:
                    parsed = _parse(line)
                    if parsed is not None and parsed[0] > after:
                        out.append(parsed)
        return out

    @staticmethod
    def _cut_torn_tail(path: Path) -> None:
        """A gateway killed mid-write leaves a torn last line: cut it so the next append starts clean."""
        if not path.exists() or not path.stat().st_size:
            return
        with open(path, "rb+") as fh:
            data = fh.read()
            if not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)


def _parse(line: bytes) -> JournalRow | None:
    parts = line.rstrip(b"\n").split(b" ", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        log.warning("skipping an unreadable journal line")
        return None
    return int(parts[0]), parts[1].decode(), parts[2]
