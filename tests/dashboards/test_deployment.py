"""docker-compose.yml and the Prometheus and Alertmanager configs agree with the code and validate (no Docker
engine needed; promtool and amtool come from Debian's prometheus packages, which .ci/run installs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.core.settings import FILE_FIELDS, Settings

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


def _target(job: dict[str, object]) -> str:
    """host:port of a job, from static_configs or dns_sd_configs (one name per job here)."""
    if "static_configs" in job:
        return job["static_configs"][0]["targets"][0]  # type: ignore[index, no-any-return]
    sd = job["dns_sd_configs"][0]  # type: ignore[index]
    return f"{sd['names'][0]}:{sd['port']}"


def test_scrape_targets_match_the_metrics_ports() -> None:
    config = yaml.safe_load((REPO / "dashboards/prometheus.yml").read_text())
    targets = {job["job_name"]: _target(job) for job in config["scrape_configs"]}
    defaults = Settings(env="test")
    assert targets["detector"] == f"detector:{defaults.detector_metrics_port}"
    assert targets["worker"] == f"worker:{defaults.worker_metrics_port}"
    assert targets["archiver"] == f"archiver:{defaults.archiver_metrics_port}"
    assert targets["gateway"] == "gateway:8080" and "8080" in COMPOSE["services"]["gateway"]["command"]
    assert targets["api"] == "api:8000" and "8000" in COMPOSE["services"]["api"]["command"]
    assert {t.split(":")[0] for t in targets.values()} <= set(COMPOSE["services"])
    # Prometheus sends its alerts to the Alertmanager of the stack.
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "alertmanager" in COMPOSE["services"]


@pytest.mark.parametrize("service", sorted(COMPOSE["services"]))
def test_every_service_checks_itself_and_restarts(service: str) -> None:
    svc = COMPOSE["services"][service]
    assert svc.get("restart") == "unless-stopped", f"{service}: no restart policy"
    test = svc.get("healthcheck", {}).get("test")
    assert test and test[0] in ("CMD", "CMD-SHELL"), f"{service}: no healthcheck"
    for volume in svc.get("volumes", []):
        name = volume.split(":")[0]
        assert name.startswith("./") or name in COMPOSE["volumes"], f"{service}: undeclared volume {name}"


def test_secrets_come_from_files_the_settings_read() -> None:
    env = COMPOSE["x-common-env"]
    files = {k.removeprefix("MODELCUSTODY_").removesuffix("_FILE").lower(): v for k, v in env.items()
             if k.endswith("_FILE")}
    assert {"admin_token", "webhook_secret"} <= set(files) <= set(FILE_FIELDS)
    assert not any(k in env for k in ("MODELCUSTODY_ADMIN_TOKEN", "MODELCUSTODY_WEBHOOK_SECRET"))
    for path in files.values():
        assert Path(path).name in COMPOSE["secrets"], f"{path} is not a compose secret"
    # A stable gateway id (the spill file's name), not the container's hostname.
    assert COMPOSE["services"]["gateway"]["environment"]["MODELCUSTODY_GATEWAY_INSTANCE_ID"]


def test_only_the_signer_mounts_the_signing_key() -> None:
    """The key is a read-only secret of the signer alone; workers hold the signer's token, nobody else does."""
    services = COMPOSE["services"]

    def secrets_of(name: str) -> set[str]:
        return set(services[name].get("secrets") or services[name].get("<<", {}).get("secrets") or [])

    with_key = {name for name in services if "signing_key" in secrets_of(name)}
    assert with_key == {"signer"}
    signer_env = services["signer"]["environment"]
    assert signer_env["MODELCUSTODY_SIGNING_KEY_PATH"] == "/run/secrets/signing_key"
    assert not services["signer"].get("volumes") and not services["signer"].get("ports")
    with_token = {name for name in services if "signer_token" in secrets_of(name)}
    assert with_token == {"signer", "worker"}
    assert COMPOSE["x-common-env"]["MODELCUSTODY_SIGNER_URL"] == "http://signer:8090"
    for name in set(services) - {"signer"}:
        env = services[name].get("environment") or {}
        assert "MODELCUSTODY_SIGNING_KEY_PATH" not in env, name


def test_settings_read_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("from-a-file-0123456789\n")
    (tmp_path / "mark").write_text("a-watermark-secret-from-a-file-0123\n")
    monkeypatch.setenv("MODELCUSTODY_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("MODELCUSTODY_ANSWER_WATERMARK_SECRET_FILE", str(tmp_path / "mark"))
    monkeypatch.delenv("MODELCUSTODY_ADMIN_TOKEN", raising=False)
    assert Settings(env="prod").admin_token == "from-a-file-0123456789"  # without the trailing newline
    assert Settings(env="prod").answer_watermark_secret == "a-watermark-secret-from-a-file-0123"
    monkeypatch.setenv("MODELCUSTODY_ADMIN_TOKEN", "from-the-variable-0123")
    assert Settings(env="prod").admin_token == "from-the-variable-0123"  # the variable wins
    monkeypatch.setenv("MODELCUSTODY_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="MODELCUSTODY_ADMIN_TOKEN_FILE: cannot read"):
        Settings(env="prod")


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    install_deps = next(i for i, line in enumerate(lines) if "requirements.lock" in line and "-c" in line)
    copy_code = lines.index("COPY services services")
    assert install_deps < copy_code
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "secrets"} <= set(ignored)


PROMTOOL, AMTOOL = shutil.which("promtool"), shutil.which("amtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (.ci/run installs it)")
def test_prometheus_config_validates(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "dashboards/prometheus.yml").read_text())
    # The rule file is mounted at /etc/prometheus in the container; point at the repository's copy.
    config["rule_files"] = [str(REPO / "dashboards/alerts.rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],  # type: ignore[list-item]
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (.ci/run installs prometheus-alertmanager)")
def test_alertmanager_config_validates() -> None:
    done = subprocess.run([AMTOOL, "check-config", str(REPO / "dashboards/alertmanager.yml")],  # type: ignore[list-item]
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
