"""The layer contracts of docs/architecture.md hold on this tree, and a wrong import breaks them.

Runs the real ``lint-imports`` on a copy of the packages, once as they are and once with a deliberately wrong
import added (an algorithm reaching up into the services), so the check is shown able to fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_tree(dest: Path) -> None:
    for package in ("services", "workers", "audit"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is part of the test extras")
@pytest.mark.parametrize(
    "module, wrong_import, broken",
    [
        ("audit/validation.py", "import services.core.settings", "Layers"),
        ("services/gateway/metrics.py", "import services.detector.stats", "Layers"),
        ("services/api/main.py", "import workers.celery_app", "Layers"),
        ("services/detector/service/runtime.py", "import services.demo.baseline", "Layers"),
        ("services/gateway/querylog.py", "import torch", "gateway stays light"),
        ("services/demo/baseline.py", "import services.demo.benign_heldout", "Held-out benign families"),
        ("services/detector/engine.py", "import services.demo.benign_heldout", "Held-out benign families"),
    ],
)
def test_a_wrong_import_breaks_the_contracts(tmp_path: Path, module: str, wrong_import: str, broken: str) -> None:
    _copy_tree(tmp_path)
    clean = _lint(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # deliberately wrong\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout
