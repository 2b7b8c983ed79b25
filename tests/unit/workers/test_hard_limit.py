"""The solo pool's hard time limit: a stuck task ends its worker process after recording the failure."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from workers.runner import EXIT_HARD_LIMIT

REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys, time
from pathlib import Path
from workers.runner import HardLimit

marker = Path(sys.argv[1])
with HardLimit(float(sys.argv[2]), lambda: marker.write_text("failed: hard limit"), "audit au_test"):
    time.sleep(float(sys.argv[3]))  # the task's work: stuck for longer than the limit, or not
print("finished")
"""


def run(tmp_path: Path, limit: float, work: float) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    marker = tmp_path / "record"
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marker), str(limit), str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, marker, time.monotonic() - t0


def test_a_stuck_task_is_recorded_failed_and_its_worker_ends(tmp_path: Path) -> None:
    done, marker, elapsed = run(tmp_path, limit=0.5, work=30)
    assert done.returncode == EXIT_HARD_LIMIT
    assert marker.read_text() == "failed: hard limit"
    assert "finished" not in done.stdout and "hard time limit" in done.stderr
    assert elapsed < 25  # ended by the limit, not by the end of the 30 s of work


def test_a_task_within_the_limit_is_untouched(tmp_path: Path) -> None:
    done, marker, _ = run(tmp_path, limit=10, work=0.1)
    assert done.returncode == 0 and done.stdout.strip() == "finished"
    assert not marker.exists()
