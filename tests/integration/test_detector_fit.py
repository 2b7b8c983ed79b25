"""`modelcustody detector fit` on an owner's reference set, asking the real model server for probabilities."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.demo.model_server.models import digits_split, holdout_halves
from services.detector.service.runtime import load_engines
from services.detector.sweep import SweepSignal
from tests.utils.stack import REPO, Server


def fit(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "services.cli", "detector", "fit", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_fit_from_reference_inputs_and_the_upstream(model_server: Server, tmp_path: Path) -> None:
    x_ref, _, x_traffic, _ = holdout_halves(digits_split(0))
    np.savez(tmp_path / "ref.npz", x=x_ref)
    done = fit(
        str(tmp_path / "base"),
        "--model",
        "digits-logreg",
        "--reference",
        str(tmp_path / "ref.npz"),
        "--upstream",
        model_server.url,
    )
    assert done.returncode == 0, done.stderr
    assert "boundary" in done.stdout  # probabilities came back from the model API
    engines = load_engines(tmp_path / "base")
    engine = engines.for_model("digits-logreg")
    assert engine is not None and engines.for_model("digits-mlp") is None
    # Labels stand in for the answers here: the engine's boundary signal needs the reference model then,
    # which a fitted-from-data baseline does not have, so only the other signals speak.
    benign = engine.new_client_state()
    for i in range(0, 400, 50):
        rows = x_traffic[i : i + 50]
        assert not engine.observe(benign, rows, None, np.zeros(len(rows), dtype=np.int64)).alert
    probe = engine.new_client_state()
    uniform = np.random.default_rng(0).uniform(0, 16, size=(100, 64))
    assert engine.observe(probe, uniform, None, np.zeros(100, dtype=np.int64)).alert


def test_bad_reference_sets_are_refused_with_a_reason(tmp_path: Path) -> None:
    np.savez(tmp_path / "no_x.npz", inputs=np.zeros((50, 4)))
    done = fit(str(tmp_path / "b"), "--model", "m", "--reference", str(tmp_path / "no_x.npz"))
    assert done.returncode == 2 and "no array 'x'" in done.stderr
    np.savez(tmp_path / "no_answers.npz", x=np.zeros((50, 4)))
    done = fit(str(tmp_path / "b"), "--model", "m", "--reference", str(tmp_path / "no_answers.npz"))
    assert done.returncode == 2 and "probabilities or labels" in done.stderr
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    done = fit(str(tmp_path / "b"), "--model", "m", "--reference", str(tmp_path / "junk.npz"))
    assert done.returncode == 2 and "cannot read" in done.stderr
    # Labels only: a baseline without the boundary signal.
    x_ref, y_ref, _, _ = holdout_halves(digits_split(0))
    volumes = np.random.default_rng(0).lognormal(np.log(150), 0.8, size=200)  # benign queries per client-day
    np.savez(tmp_path / "labels.npz", x=x_ref, labels=y_ref, daily_volumes=volumes)
    done = fit(str(tmp_path / "b"), "--model", "m", "--reference", str(tmp_path / "labels.npz"))
    assert done.returncode == 0, done.stderr
    assert "boundary" not in done.stdout and "prada" in done.stdout
    sweep = next(s for s in load_engines(tmp_path / "b")["m"].signals if isinstance(s, SweepSignal))
    assert sweep.volume_enabled  # the daily volumes switched the volume test on


def test_the_service_fits_its_baseline_from_a_configured_reference_set(model_server: Server, tmp_path: Path) -> None:
    """MODELCUSTODY_DETECTOR_REFERENCE_PATH may name the reference .npz itself: fitted at start-up."""
    from services.core.model_client import HttpSuspect
    from services.detector.service.runtime import load_or_fit_engines

    x_ref, _, _, _ = holdout_halves(digits_split(0))
    with HttpSuspect(model_server.url, model="digits-mlp", output="probabilities") as upstream:
        probabilities = upstream.probabilities(x_ref)
    np.savez(tmp_path / "ref.npz", x=x_ref, probabilities=probabilities)
    engines = load_or_fit_engines(tmp_path / "ref.npz", reference_model="digits-mlp")
    assert list(engines) == ["digits-mlp"] and "boundary" in engines["digits-mlp"].signal_names
    for bad in (tmp_path / "missing", tmp_path / "ref.txt"):
        with pytest.raises(ValueError, match="neither a directory nor a reference .npz"):
            load_or_fit_engines(bad)
