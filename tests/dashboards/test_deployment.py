"""docker-compose.yml and the Prometheus scrape config agree with the code (no Docker engine needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


OURS = sorted(name for name, svc in COMPOSE["services"].items() if (svc.get("command") or [""])[0] == "modelcustody")


def test_the_stack_runs_our_components() -> None:
    assert {"model-server", "gateway", "detector", "api", "worker"} <= set(OURS)


@pytest.mark.parametrize("service", OURS)
def test_compose_commands_exist(service: str) -> None:
    """Every `modelcustody …` command in the compose file is a real command with real options."""
    command = COMPOSE["services"][service]["command"]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *command[1:], "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_scrape_targets_match_the_metrics_ports() -> None:
    config = yaml.safe_load((REPO / "dashboards/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    defaults = Settings(env="test")
    assert targets["detector"] == f"detector:{defaults.detector_metrics_port}"
    assert targets["worker"] == f"worker:{defaults.worker_metrics_port}"
    assert targets["archiver"] == f"archiver:{defaults.archiver_metrics_port}"
    assert targets["gateway"] == "gateway:8080" and "8080" in COMPOSE["services"]["gateway"]["command"]
    assert targets["api"] == "api:8000" and "8000" in COMPOSE["services"]["api"]["command"]
    assert set(targets) <= set(COMPOSE["services"])
