"""MLServer (+ mlserver-sklearn) in a virtualenv of its own: it pins an older FastAPI than ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MLSERVER_VERSION = "1.7.1"


def mlserver_venv() -> Path:
    cache = Path(os.environ.get("MODELCUSTODY_TEST_CACHE", Path.home() / ".cache" / "modelcustody"))
    venv = cache / f"mlserver-{MLSERVER_VERSION}"
    python = venv / "bin" / "python"
    if not (venv / "bin" / "mlserver").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"mlserver=={MLSERVER_VERSION}",
                f"mlserver-sklearn=={MLSERVER_VERSION}",
            ],
            check=True,
        )
    return venv


TRAIN_SCRIPT = """
import joblib, sys
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
x, y = load_digits(return_X_y=True)
model = LogisticRegression(max_iter=3000).fit(x[::2], y[::2])
joblib.dump(model, sys.argv[1])
"""


def write_model_repo(venv: Path, repo: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    """A model repository: a digits classifier trained by MLServer's own scikit-learn, plus settings."""
    import orjson

    model_dir = repo / "digits"
    model_dir.mkdir(parents=True, exist_ok=True)
    # Trained inside MLServer's venv so the joblib file matches the scikit-learn that loads it.
    subprocess.run([str(venv / "bin" / "python"), "-c", TRAIN_SCRIPT, str(model_dir / "model.joblib")], check=True)
    (model_dir / "model-settings.json").write_bytes(
        orjson.dumps(
            {
                "name": "digits",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "v1"},
            }
        )
    )
    (repo / "settings.json").write_bytes(
        orjson.dumps(
            {
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 0,
                "debug": False,
            }
        )
    )
