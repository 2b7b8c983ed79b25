"""A real Prometheus (Debian's package) scrapes the running gateway, detector, admin API and audit worker,
evaluates the repository's alert rules, and fires ModelCustodyExtractionAlert after a red-team client
probes the model. Scrape and evaluation every second, so the test waits seconds, not minutes.

It also shows the availability side: every component answers its scrape (``up == 1``) and exports
``modelcustody_build_info``, and nothing fires before the attack.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from services.demo.processes import ManagedProcess, free_port, wait_for_port
from tests.utils.stack import REPO, Server, oip_body, start_server

PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed "
                                                                              "(.ci/run installs Debian's package)")]
ADMIN = "test-admin-token-0123456789"
RULES = REPO / "dashboards" / "alerts.rules.yml"


def _process(argv: list[str], env: dict[str, str], log: Path, port: int) -> ManagedProcess:
    proc = ManagedProcess(argv, env=env, log_path=log, cwd=REPO)
    wait_for_port(port, 120, proc.proc)
    return proc


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, int]], str]]:
    started: list[subprocess.Popen[bytes]] = []

    def _start(targets: dict[str, int]) -> str:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                               for job, port in targets.items()],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],  # type: ignore[list-item]
            stdout=log, stderr=subprocess.STDOUT,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _ready(url), 60, "Prometheus to be ready", lambda: (tmp_path / "prometheus.log").read_text())
        return url

    yield _start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str, state: Callable[[], object] = str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {state()}")


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    body = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=10).json()
    return body["data"]["result"]  # type: ignore[no-any-return]


def _alerts(url: str) -> dict[str, str]:
    alerts = httpx.get(url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a["state"] for a in alerts}


def test_a_real_prometheus_fires_the_extraction_rule(
    tmp_path: Path, redis_url: str, start_gateway: Callable[..., Server], add_client: Callable[[str], str],
    detector_baseline: Path, prometheus: Callable[[dict[str, int]], str],
) -> None:
    env = {"MODELCUSTODY_ENV": "test", "MODELCUSTODY_REDIS_URL": redis_url, "MODELCUSTODY_DATA_DIR": str(tmp_path),
           "MODELCUSTODY_ADMIN_TOKEN": ADMIN, "MODELCUSTODY_DETECTOR_REFERENCE_PATH": str(detector_baseline)}
    gateway = start_gateway()
    detector_port, worker_port = free_port(), free_port()
    processes = [
        _process([sys.executable, "-m", "services.cli", "serve", "detector"],
                 {**env, "MODELCUSTODY_DETECTOR_METRICS_PORT": str(detector_port)}, tmp_path / "detector.log",
                 detector_port),
        _process([sys.executable, "-m", "services.cli", "serve", "worker"],
                 {**env, "MODELCUSTODY_WORKER_METRICS_PORT": str(worker_port)}, tmp_path / "worker.log", worker_port),
    ]
    api = start_server("services.api.main:create_app", env, tmp_path / "logs", "api")
    try:
        url = prometheus({"gateway": gateway.port, "detector": detector_port, "api": api.port,
                          "worker": worker_port})
        jobs = ("gateway", "detector", "api", "worker")
        _wait(lambda: {r["metric"]["job"] for r in _query(url, "up == 1")} == set(jobs), 60,
              "every component to be scraped", lambda: _query(url, "up"))
        build = {r["metric"]["component"] for r in _query(url, "modelcustody_build_info")}
        assert build == set(jobs)
        time.sleep(3)  # a few evaluations with the alerts-opened counter at 0: the rule has a baseline to rise from
        assert _alerts(url).get("ModelCustodyExtractionAlert") is None  # nothing fires before the attack

        key = add_client("attacker")
        rng = np.random.default_rng(7)
        attack = rng.uniform(0, 16, size=(200, 64))  # equation-solving style probing: far from any digit
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            for i in range(0, len(attack), 10):
                http.post("/v2/models/digits-mlp/infer", json=oip_body(attack[i: i + 10]),
                          headers={"X-API-Key": key}).raise_for_status()

        _wait(lambda: _alerts(url).get("ModelCustodyExtractionAlert") == "firing", 90,
              "ModelCustodyExtractionAlert to fire",
              lambda: (_alerts(url), _query(url, "modelcustody_detector_alerts_opened_total")))
        firing = [a for a in httpx.get(url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
                  if a["labels"]["alertname"] == "ModelCustodyExtractionAlert"]
        assert firing[0]["labels"]["severity"] == "page"
        assert firing[0]["annotations"]["runbook_url"] == "docs/operations.md#answering-an-extraction-alert"
        assert "ModelCustodyComponentDown" not in _alerts(url)
    finally:
        api.stop()
        for proc in processes:
            proc.stop()
