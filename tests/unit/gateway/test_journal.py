"""The gateway's journal of committed rows: what it keeps, what it drops, and when."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.gateway.journal import Journal


def test_rows_after_a_sequence_number_span_both_files(tmp_path: Path) -> None:
    j = Journal(tmp_path, "gw", retain_s=0.05)
    j.open()
    j.append([(1, "1-0", b'{"a": 1}'), (2, "1-1", b'{"a": 2}')])
    j.confirmed()  # too young: no rotation
    assert not j.prev_path.exists()
    time.sleep(0.06)
    j.confirmed()
    assert j.prev_path.exists() and j.path.read_bytes() == b""
    j.append([(3, "2-0", b'{"a": "x y"}')])
    assert j.rows(1) == [(2, "1-1", b'{"a": 2}'), (3, "2-0", b'{"a": "x y"}')]
    assert j.last_seq() == 3
    time.sleep(0.06)
    j.confirmed()  # rows 1 and 2 are older than retain_s and Redis was shown to hold them: dropped
    assert [seq for seq, _, _ in j.rows(0)] == [3]
    j.close()


def test_a_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    j = Journal(tmp_path, "gw", retain_s=10)
    j.open()
    j.append([(1, "1-0", b"{}")])
    j.close()
    with open(j.path, "ab") as fh:
        fh.write(b"2 1-1 {\"tor")
    j2 = Journal(tmp_path, "gw", retain_s=10)
    j2.open()
    j2.append([(2, "1-2", b"{}")])
    assert j2.rows(0) == [(1, "1-0", b"{}"), (2, "1-2", b"{}")]
    j2.close()


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Journal(tmp_path, "gw", retain_s=0)
