"""`modelcustody demo`, the README's first command, runs to the end on embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.utils.stack import REPO


def test_demo_logs_every_row_alerts_on_the_attacker_only_and_proves_the_quiet_thiefs_copy() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELCUSTODY_")}  # embedded defaults
    env["COLUMNS"] = "200"  # rich wraps at the terminal width; a wide one keeps each message on one line
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every answered row is in the query log and was analysed" in done.stdout
    assert "extraction alert on mallory (AML.T0024), none on the benign clients" in done.stdout
    # The quiet thief's copy is claimed by the answer watermark, the independent model is not.
    assert "logged rows: claim" in done.stdout and "independent model: no-claim" in done.stdout
    assert "signed reports verified: yes" in done.stdout
