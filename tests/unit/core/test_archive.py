"""The archive's hash chain: every altered, missing or reordered record is found, and where."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from services.core.archive import Head, SegmentWriter, segment_path, verify_archive
from tests.utils.stack import REPO


def build(directory: Path, segments: int = 3, per_segment: int = 5) -> list[tuple[str, str]]:
    writer = SegmentWriter(directory)
    written = []
    for s in range(segments):
        for i in range(per_segment):
            entry_id, record = f"{1000 + s}-{i}", json.dumps({"client_id": f"c{i}", "input": [s, i]})
            writer.add(entry_id, "1", record)
            written.append((entry_id, record))
        writer.commit()
    return written


def rewrite(path: Path, edit: object) -> None:
    with gzip.open(path, "rb") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    lines = edit(lines)  # type: ignore[operator]
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(json.dumps(x).encode() for x in lines) + b"\n")


def test_an_intact_archive_verifies_and_resumes_after_a_restart(tmp_path: Path) -> None:
    written = build(tmp_path)
    result = verify_archive(tmp_path)
    assert result.ok and result.segments == 3 and result.records == 15, result.problems
    writer = SegmentWriter(tmp_path)  # a restarted archiver continues the chain
    assert writer.already_archived("1002-4") and not writer.already_archived("1003-0")
    writer.add("1003-0", "1", "{}")
    writer.commit()
    assert verify_archive(tmp_path).ok and Head.load(tmp_path).records == len(written) + 1


def test_altered_missing_and_reordered_records_are_found(tmp_path: Path) -> None:
    cases = {
        "altered": (lambda ls: [ls[0], {**ls[1], "r": ls[1]["r"].replace("c0", "c9")}, *ls[2:]], "altered"),
        "removed": (lambda ls: [{**ls[0], "count": 4}, *ls[1:3], *ls[4:]], "altered"),
        "reordered": (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "out of order"),
        "rehashed": (lambda ls: [ls[0], {**ls[1], "r": "{}", "h": "0" * 64}, *ls[2:]], "altered"),
    }
    for name, (edit, reason) in cases.items():
        directory = tmp_path / name
        build(directory)
        rewrite(segment_path(directory, 1), edit)
        result = verify_archive(directory)
        assert not result.ok, name
        assert any(reason in p and p.startswith("segment 1") for p in result.problems), (name, result.problems)
    directory = tmp_path / "segment-gone"
    build(directory)
    segment_path(directory, 1).unlink()
    assert "segment 1 is missing" in verify_archive(directory).problems
    directory = tmp_path / "whole-rewrite"
    build(directory)
    head = Head.load(directory).last_hash
    assert verify_archive(directory, expect_head=head).ok
    assert not verify_archive(directory, expect_head="f" * 64).ok


def test_retention_keeps_the_chain_verifiable(tmp_path: Path) -> None:
    build(tmp_path, segments=4)
    for index in range(4):
        os.utime(segment_path(tmp_path, index), (1000.0 * (index + 1), 1000.0 * (index + 1)))
    writer = SegmentWriter(tmp_path)
    assert writer.prune(keep_after_mtime=2500.0) == 2  # segments 0 and 1 are older
    result = verify_archive(tmp_path)
    assert result.ok and result.first_segment == 2 and result.records == 10, result.problems


def test_the_cli_exits_1_on_a_broken_archive(tmp_path: Path) -> None:
    build(tmp_path)
    cmd = [sys.executable, "-m", "services.cli", "archive", "verify", str(tmp_path)]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["records"] == 15, ok.stderr
    rewrite(segment_path(tmp_path, 2), lambda ls: ls[:-1])
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and json.loads(bad.stdout)["problems"], bad.stdout
