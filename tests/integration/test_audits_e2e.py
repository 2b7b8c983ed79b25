"""Ownership audits end to end: the real admin API (uvicorn), a real Celery worker (``modelcustody serve worker``
subprocess, killed with SIGKILL and restarted), a real signer service holding the only copy of the signing key
(the worker, the API and the CLI sign through it), a private real Redis, a real HTTP suspect, and the CLI.

The owner's watermarked digits model is trained by the CLI (``watermark embed``) on a short schedule (a few
seconds); the protected model is registered through the API with four small null models, so the whole
module runs in well under a minute on two cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from audit.signing import (
    OWNERSHIP_AUDIT_PREDICATE,
    VerificationError,
    load_signing_key,
    public_key_pem,
    verify_envelope,
)
from services.demo.processes import ManagedProcess, PrivateRedis, free_port, wait_for_port
from tests.utils.stack import REPO, Server, start_server

pytestmark = pytest.mark.slow

# Redelivery of a dead worker's audit waits for the visibility timeout: 5 s keeps the kill test short while
# every audit here (at most ~3 s) still finishes well inside it, so nothing is redelivered while running.
VISIBILITY_TIMEOUT_S = 5
UPSTREAM_DELAY_S = 0.15  # per query of the slow suspect: 20 queries ≈ 3 s, long enough to kill mid-audit


@dataclass
class Stack:
    env: dict[str, str]
    api: Server
    data_dir: Path
    log_dir: Path
    metrics_port: int
    token: str
    signer: Server
    signing_key: Path
    workers: list[ManagedProcess] = field(default_factory=list)

    @property
    def worker(self) -> ManagedProcess:
        return self.workers[-1]

    def start_worker(self) -> ManagedProcess:
        proc = ManagedProcess([sys.executable, "-m", "services.cli", "serve", "worker"], env=self.env,
                              log_path=self.log_dir / f"worker-{len(self.workers)}.log", cwd=REPO)
        self.workers.append(proc)
        wait_for_port(self.metrics_port, 60, proc.proc)  # the metrics server starts at worker init
        return proc

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers={"authorization": f"Bearer {self.token}"}, timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, "MODELCUSTODY_API_URL": self.api.url}
        return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not within {timeout_s} s")


@pytest.fixture(scope="module")
def owner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``modelcustody watermark embed`` on a short schedule, plus an independent model (not watermarked)."""
    out = tmp_path_factory.mktemp("owner")
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "watermark", "embed", "--out", str(out), "--epochs", "8",
         "--watermark-epochs", "8", "--trigger-steps", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    from audit.architectures import save_model
    from audit.data import split_digits
    from audit.watermark_embed import WatermarkEmbedder

    split = split_digits(seed=0)
    # An independent party: other data (the held-out quarter), other seed, no watermark.
    clean = WatermarkEmbedder(epochs=8, watermark_epochs=8).fit_clean(split.x_test, split.y_test, seed=77)
    save_model(out / "independent.safetensors", clean, "mlp", {"input_dim": 64, "hidden": [128, 64], "num_classes": 10})
    return out


@pytest.fixture(scope="module")
def stack(redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_server.url).flushall()
    base = tmp_path_factory.mktemp("audits")
    token = secrets.token_urlsafe(24)
    metrics_port = free_port()
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": redis_server.url,
        "MODELCUSTODY_DATA_DIR": str(base / "data"),
        "MODELCUSTODY_ADMIN_TOKEN": token,
        "MODELCUSTODY_AUDIT_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "MODELCUSTODY_AUDIT_SOFT_TIME_LIMIT_S": "60",
        "MODELCUSTODY_AUDIT_HARD_TIME_LIMIT_S": "90",
        "MODELCUSTODY_WORKER_METRICS_PORT": str(metrics_port),
        "MODELCUSTODY_AUDIT_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
        "OMP_NUM_THREADS": "1",  # two cores shared by the API, the worker, the upstream and the test
        # One answer-watermark key and share for the gateway and the worker (a deployment shares them): a fixed
        # key keeps the api_watermark test's marked rows the same from run to run. 5 %, not the default 1 %:
        # the thief's pool there is only ~450 digits.
        "MODELCUSTODY_ANSWER_WATERMARK_SECRET": "e2e-answer-watermark-key-0123456789abcdef",
        "MODELCUSTODY_ANSWER_WATERMARK_LABEL_SHARE": "0.05",
    }
    # The key lives outside the data directory the API and the worker see, and only the signer is told where.
    signer_token, signing_key = secrets.token_urlsafe(24), base / "signer-keys" / "signing_ed25519.pem"
    signer = start_server("services.signer.app:create_app",
                          {**env, "MODELCUSTODY_SIGNER_TOKEN": signer_token,
                           "MODELCUSTODY_SIGNING_KEY_PATH": str(signing_key)}, base / "logs", "signer")
    env.update({"MODELCUSTODY_SIGNER_URL": signer.url, "MODELCUSTODY_SIGNER_TOKEN": signer_token})
    api = start_server("services.api.main:create_app", env, base / "logs", "api")
    s = Stack(env, api, base / "data", base / "logs", metrics_port, token, signer, signing_key)
    s.start_worker()
    yield s
    for proc in s.workers:
        proc.stop()
    api.stop()
    signer.stop()


@pytest.fixture(scope="module")
def protected_id(stack: Stack, owner_dir: Path) -> str:
    """Registered through ``POST /v1/protected-models`` and run by the worker."""
    with stack.client() as client, open(owner_dir / "model.safetensors", "rb") as model, \
            open(owner_dir / "model.key.json", "rb") as key, open(owner_dir / "reference.npz", "rb") as ref:
        response = client.post(
            "/v1/protected-models",
            data={"name": "digits-victim", "params": json.dumps({"n_null_models": 4, "reference_epochs": 8})},
            files={"model": ("model.safetensors", model), "watermark_key": ("key.json", key),
                   "reference_data": ("reference.npz", ref)},
        )
        assert response.status_code == 202, response.text
        pm_id = response.json()["id"]
        record = wait_until(lambda: (r := client.get(f"/v1/protected-models/{pm_id}").json())["status"]
                            in ("ready", "failed") and r, 90, "registration")
    assert record["status"] == "ready", record
    assert record["methods"] == ["watermark"] and len(record["registration_sha256"]) == 64
    return str(pm_id)


def submit_file(client: httpx.Client, path: Path, protected: str, params: dict[str, Any] | None = None,
                fmt: str = "safetensors") -> httpx.Response:
    with open(path, "rb") as f:
        return client.post("/v1/audits", data={"method": "watermark", "protected_model": protected, "format": fmt,
                                               "params": json.dumps(params or {})},
                           files={"file": (path.name, f)})


def follow(client: httpx.Client, audit_id: str, timeout_s: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def finished() -> dict[str, Any] | None:
        record = client.get(f"/v1/audits/{audit_id}").json()
        seen.append(record)
        return record if record["status"] in ("done", "failed") else None

    return wait_until(finished, timeout_s, f"audit {audit_id}", 0.05), seen


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01 if chr(changed[index]).isalnum() else 0x02
    return bytes(changed)


def test_audit_signed_report_verifies_and_any_altered_byte_fails(
    stack: Stack, protected_id: str, owner_dir: Path, tmp_path: Path
) -> None:
    with stack.client() as client:
        response = submit_file(client, owner_dir / "model.safetensors", protected_id)
        assert response.status_code == 202, response.text
        submitted = response.json()
        assert submitted["status"] in ("queued", "running", "done") and "path" not in submitted["suspect"]
        record, seen = follow(client, submitted["id"])
        assert record["status"] == "done", record
        assert record["decision"] == "claim" and record["progress"] == 1.0 and record["attempts"] == 1
        progress = [r["progress"] for r in seen]
        assert progress == sorted(progress)  # progress only moves forward
        envelope = client.get(f"/v1/audits/{record['id']}/report").content
        page = client.get(f"/v1/audits/{record['id']}/report", params={"format": "html"})
        assert page.status_code == 200 and "Decision: claim" in page.text
        pem = httpx.get(f"{stack.api.url}/v1/keys/public", params={"format": "pem"}).content  # no token needed
        assert client.post("/v1/reports/verify", content=envelope).json()["valid"] is True
        assert client.post("/v1/reports/verify", content=flip(envelope, 100)).json()["valid"] is False

    statement = verify_envelope(envelope, pem, predicate_type=OWNERSHIP_AUDIT_PREDICATE)
    report = statement["predicate"]
    assert report["decision"] == "claim" and report["p_value"] < 0.05 and report["queries"]["used"] <= 10
    # Signed by the signer's key, which never was in the worker's or the API's view: no key file appeared there.
    assert pem == public_key_pem(load_signing_key(stack.signing_key))
    assert not (stack.data_dir / "keys").exists() and not list(stack.data_dir.rglob("*.pem"))
    assert report["suspect"]["sha256"] == submitted["suspect"]["sha256"]
    registration = report["protected_model"]
    assert registration["id"] == protected_id and registration["registered_before_audit"] is True
    assert registration["registered_at"] < report["started_at"]
    assert {s["name"] for s in statement["subject"]} == {"suspect:safetensors", "protected-model"}

    # Any single altered byte fails: the payload, the signature, the key id, the JSON framing.
    positions = sorted({0, 5, 12, len(envelope) // 3, len(envelope) // 2, len(envelope) - 30, len(envelope) - 2,
                        envelope.index(b'"sig"') + 10, envelope.index(b'"keyid"') + 12})
    for i in positions:
        with pytest.raises(VerificationError):
            verify_envelope(flip(envelope, i), pem)

    # The CLI: download through the API, verify; exit 0 valid, 1 for one altered byte, 2 unreadable.
    key_file, report_file, tampered = tmp_path / "key.pem", tmp_path / "report.dsse.json", tmp_path / "bad.json"
    key_file.write_bytes(pem)
    got = stack.cli("audit", "report", record["id"], "--out", str(report_file))
    assert got.returncode == 0, got.stderr
    assert report_file.read_bytes() == envelope
    tampered.write_bytes(flip(envelope, len(envelope) // 2))
    ok = stack.cli("report", "verify", str(report_file), "--public-key", str(key_file))
    assert ok.returncode == 0, ok.stderr
    assert "decision: claim" in ok.stdout
    bad = stack.cli("report", "verify", str(tampered), "--public-key", str(key_file))
    assert bad.returncode == 1 and "INVALID" in bad.stderr
    missing = stack.cli("report", "verify", str(tmp_path / "nope.json"), "--public-key", str(key_file))
    assert missing.returncode == 2

    # The worker's metrics, under the names the dashboards use.
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    assert 'modelcustody_audits_total{method="watermark",status="done"}' in text
    assert 'modelcustody_audit_duration_seconds_count{method="watermark"}' in text


def test_resubmitting_the_same_request_returns_the_same_audit(stack: Stack, protected_id: str, owner_dir: Path) -> None:
    params = {"max_queries": 50, "seed": 3}
    with stack.client() as client:
        first = submit_file(client, owner_dir / "independent.safetensors", protected_id, params)
        assert first.status_code == 202, first.text
        again = submit_file(client, owner_dir / "independent.safetensors", protected_id, params)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        # Defaults written out are the same request; another parameter is another audit.
        explicit = submit_file(client, owner_dir / "independent.safetensors", protected_id, {**params, "alpha": 0.05})
        assert explicit.status_code == 200 and explicit.json()["id"] == first.json()["id"]
        other = submit_file(client, owner_dir / "independent.safetensors", protected_id, {**params, "seed": 4})
        assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
        record, _ = follow(client, first.json()["id"])
        assert record["status"] == "done" and record["decision"] in ("no-claim", "inconclusive")
        follow(client, other.json()["id"])
        ids = [a["id"] for a in client.get("/v1/audits").json()]
        assert ids.count(first.json()["id"]) == 1
    # The CLI resubmits the finished audit and gets it back without a new run.
    suspect = str(owner_dir / "independent.safetensors")
    got = stack.cli("audit", "submit", "--protected", protected_id, "--file", suspect,
                    "--param", "max_queries=50", "--param", "seed=3", "--no-wait")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["id"] == first.json()["id"] and "existing audit" in got.stderr
    # A new request through the CLI waits (progress bar on stderr) and ends with the finished record.
    got = stack.cli("audit", "submit", "--protected", protected_id, "--file", suspect, "--param", "seed=5")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["status"] == "done" and json.loads(got.stdout)["id"] != first.json()["id"]


def test_malicious_pickle_upload_is_refused_without_being_executed(
    stack: Stack, protected_id: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = tmp_path / "model.pkl"
    payload.write_bytes(exploit(marker))
    # Positive control, in a throwaway process: unpickling such a file really does create its marker.
    control = tmp_path / "control"
    (tmp_path / "control.pkl").write_bytes(exploit(control))
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())",
                    str(tmp_path / "control.pkl")], check=True, timeout=30)
    assert control.exists()

    with stack.client() as client:
        before = client.get("/v1/audits").json()
        for declared in ("pickle", "safetensors", "onnx", "skops", "torch"):
            response = submit_file(client, payload, protected_id, fmt=declared)
            assert response.status_code == 422, (declared, response.text)
            assert "pickle" in response.json()["detail"] or "refused" in response.json()["detail"]
        assert client.get("/v1/audits").json() == before  # nothing was queued
        big = client.post("/v1/audits", data={"method": "watermark", "protected_model": protected_id,
                                              "format": "onnx"}, files={"file": ("big.onnx", b"\0" * (5 << 20))})
        assert big.status_code == 413
    time.sleep(0.5)  # had anything been handed to the worker, it would have had time to run
    assert not marker.exists()
    assert not any(p.name.startswith(".upload") for p in (stack.data_dir / "uploads").iterdir())
    assert not (stack.data_dir / "uploads" / hashlib.sha256(payload.read_bytes()).hexdigest()).exists()


def exploit(marker: Path) -> bytes:
    """A pickle whose loading runs ``touch marker``."""

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Exploit())


@pytest.fixture()
def slow_suspect(stack: Stack, owner_dir: Path) -> Iterator[Server]:
    env = {"UPSTREAM_MODEL_PATH": str(owner_dir / "independent.safetensors"),
           "UPSTREAM_DELAY_S": str(UPSTREAM_DELAY_S), "OMP_NUM_THREADS": "1"}
    server = start_server("tests.utils.upstreams:create_model_app", env, stack.log_dir, "suspect")
    yield server
    server.stop()


def test_audit_survives_a_killed_worker(stack: Stack, protected_id: str, slow_suspect: Server) -> None:
    body = {"method": "watermark", "protected_model": protected_id, "params": {"max_queries": 20},
            "suspect": {"url": slow_suspect.url, "protocol": "oip-v2", "model": "digits"}}
    with stack.client() as client:
        response = client.post("/v1/audits", json=body)
        assert response.status_code == 202, response.text
        audit_id = response.json()["id"]
        assert client.post("/v1/audits", json=body).json()["id"] == audit_id  # endpoint audits de-duplicate too

        def get() -> dict[str, Any]:
            return dict(client.get(f"/v1/audits/{audit_id}").json())

        running = wait_until(lambda: (r := get())["status"] == "running" and r["progress"] >= 0.2 and r, 30,
                             "progress of the first attempt")
        assert running["attempts"] == 1
        stack.worker.proc.send_signal(signal.SIGKILL)
        stack.worker.proc.wait(10)
        killed = get()
        assert killed["status"] == "running" and killed["progress"] < 1.0  # the record is stale, not lost

        stack.start_worker()
        # The second attempt takes ≥ 3 s of the suspect's delays: polling every 0.1 s sees it running.
        restarted = wait_until(lambda: (r := get())["attempts"] == 2 and r["status"] == "running" and r, 30,
                               "the audit running again after the restart")
        assert restarted["started_at"] > running["started_at"] and restarted["progress"] < 1.0
        record = wait_until(lambda: (r := get())["status"] in ("done", "failed") and r, 30, "the second attempt")
    assert record["status"] == "done" and record["attempts"] == 2, record
    assert record["decision"] in ("no-claim", "inconclusive")
    with stack.client() as client:
        envelope = client.get(f"/v1/audits/{audit_id}/report").content
        pem = client.get("/v1/keys/public").json()["public_key_pem"]
    report = verify_envelope(envelope, pem)["predicate"]
    assert report["queries"]["used"] == 20 and report["extra"]["attempts"] == 2
    assert report["suspect"] == {"kind": "endpoint", "url": slow_suspect.url, "protocol": "oip-v2", "model": "digits"}


def test_protect_register_cli_runs_synchronously(stack: Stack, owner_dir: Path) -> None:
    got = stack.cli("protect", "register", "--name", "cli-registered", "--model", str(owner_dir / "model.safetensors"),
                    "--watermark-key", str(owner_dir / "model.key.json"),
                    "--reference-data", str(owner_dir / "reference.npz"),
                    "--param", "n_null_models=2", "--param", "reference_epochs=4")
    assert got.returncode == 0, got.stderr
    pm_id = next(line.split()[-1] for line in got.stdout.splitlines() if line.startswith("protected model:"))
    with stack.client() as client:
        record = client.get(f"/v1/protected-models/{pm_id}").json()
        assert record["status"] == "ready" and record["methods"] == ["watermark"]
        signed = client.get(f"/v1/protected-models/{pm_id}/registration").content
        pem = client.get("/v1/keys/public").json()["public_key_pem"]
    statement = verify_envelope(signed, pem, predicate_type="https://modelcustody.dev/protected-model-registration/v1")
    assert statement["predicate"]["id"] == pm_id
    assert hashlib.sha256(signed).hexdigest() == record["registration_sha256"]
    assert all(len(s["digest"]["sha256"]) == 64 for s in statement["subject"])
    assert np.isclose(statement["predicate"]["watermark"]["owner_success_rate"], 1.0, atol=0.1)


def test_dataset_inference_audits_run_on_the_worker_and_end_in_signed_reports(
    stack: Stack, owner_dir: Path
) -> None:
    """Blind Walk (black-box) and MinGD (white-box) through the API and the worker, with a registration that
    has dataset-inference data. Five null models cannot support a claim at α = 0.05 (too few to fit and check a
    calibrated null; their rank alone could not go below 1/6), so the honest answer for the owner's own model is
    "inconclusive", said in the report."""
    with stack.client() as client, open(owner_dir / "model.safetensors", "rb") as model, \
            open(owner_dir / "model.key.json", "rb") as key, open(owner_dir / "reference.npz", "rb") as ref, \
            open(owner_dir / "di_data.npz", "rb") as di:
        response = client.post(
            "/v1/protected-models",
            data={"name": "digits-di", "params": json.dumps({"n_null_models": 5, "reference_epochs": 6})},
            files={"model": ("model.safetensors", model), "watermark_key": ("key.json", key),
                   "reference_data": ("reference.npz", ref), "di_data": ("di_data.npz", di)},
        )
        assert response.status_code == 202, response.text
        pm_id = response.json()["id"]
        record = wait_until(lambda: (r := client.get(f"/v1/protected-models/{pm_id}").json())["status"]
                            in ("ready", "failed") and r, 240, "registration with dataset inference")
        assert record["status"] == "ready", record
        assert {"watermark", "dataset_inference", "dataset_inference_mingd"} <= set(record["methods"])
        pem = client.get("/v1/keys/public", params={"format": "pem"}).content
        for method, queries in (("dataset_inference", True), ("dataset_inference_mingd", False)):
            with open(owner_dir / "model.safetensors", "rb") as f:
                response = client.post(
                    "/v1/audits",
                    data={"method": method, "protected_model": pm_id, "format": "safetensors",
                          "params": json.dumps({"m": 40})},
                    files={"file": ("model.safetensors", f)},
                )
            assert response.status_code == 202, response.text
            done, _ = follow(client, response.json()["id"], timeout_s=240)
            assert done["status"] == "done", done
            envelope = client.get(f"/v1/audits/{done['id']}/report").content
            report = verify_envelope(envelope, pem, predicate_type=OWNERSHIP_AUDIT_PREDICATE)["predicate"]
            assert report["decision"] == "inconclusive", report["decision_text"]
            stats = report["statistics"]
            assert stats["m"] == 40 and stats["n_null_models"] == 5 and len(stats["null_t_statistics"]) == 5
            assert (report["queries"]["used"] > 0) is queries  # MinGD reads gradients, it sends no queries
            page = client.get(f"/v1/audits/{done['id']}/report", params={"format": "html"}).text
            assert page.count("<svg") >= 2  # the two score distributions and the t among the nulls


def test_api_watermark_claims_a_copy_trained_on_gateway_answers_and_not_an_independent_model(
    stack: Stack, protected_id: str, owner_dir: Path
) -> None:
    """The owner's model behind a real gateway; a thief on a label-only policy copies it from the answers;
    ``api_watermark`` (the worker reads the thief's rows from the query log) claims the copy in a signed
    report and does not claim the independent model. The gateway and the worker share the stack's watermark
    key and label share (5 %, see the stack's environment)."""
    from audit.architectures import save_model
    from audit.data import split_digits
    from audit.watermark_embed import WatermarkEmbedder
    from services.core.clients import ClientRegistry
    from services.core.policy import OutputPolicy
    from services.core.protocols import oip_request

    upstream = start_server("tests.utils.upstreams:create_model_app",
                            {"UPSTREAM_MODEL_PATH": str(owner_dir / "model.safetensors"), "OMP_NUM_THREADS": "1"},
                            stack.log_dir, "owner-upstream")
    gateway = start_server("services.gateway.app:create_app",
                           {**stack.env, "MODELCUSTODY_GATEWAY_UPSTREAM_URL": upstream.url,
                            "MODELCUSTODY_GATEWAY_INSTANCE_ID": "gw-audit"},
                           stack.log_dir, "gateway")
    try:
        registry = ClientRegistry(redis.Redis.from_url(stack.env["MODELCUSTODY_REDIS_URL"]))
        _, key = registry.add("thief")
        registry.set_policy("thief", OutputPolicy(label_only=True))
        time.sleep(2.5)  # the gateway's client refresh (2 s by default)
        split = split_digits(seed=0)
        served: list[np.ndarray] = []
        with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            for start in range(0, len(split.x_pool), 100):
                r = http.post("/v2/models/owner/infer", json=oip_request(split.x_pool[start : start + 100]))
                assert r.status_code == 200, r.text
                served.append(np.asarray(r.json()["outputs"][0]["data"], dtype=np.int64))
    finally:
        assert gateway.stop() == 0  # flushes the query log
        upstream.stop()
    labels = np.concatenate(served)
    # Trained to fit its answers (400 epochs on 449 rows): a thief that stops early fits fewer replaced labels.
    copy = WatermarkEmbedder(epochs=200, watermark_epochs=200).fit_clean(split.x_pool, labels, seed=5)
    copy_path = owner_dir / "thief-copy.safetensors"
    save_model(copy_path, copy, "mlp", {"input_dim": 64, "hidden": [128, 64], "num_classes": 10})

    params = json.dumps({"clients": ["thief"], "batch_size": 5})
    with stack.client() as client:
        pem = client.get("/v1/keys/public", params={"format": "pem"}).content
        reports = {}
        for name in ("thief-copy", "independent"):
            with open(owner_dir / f"{name}.safetensors", "rb") as f:
                response = client.post("/v1/audits", data={"method": "api_watermark", "protected_model": protected_id,
                                                           "format": "safetensors", "params": params},
                                       files={"file": (f"{name}.safetensors", f)})
            assert response.status_code == 202, response.text
            done, _ = follow(client, response.json()["id"], timeout_s=120)
            assert done["status"] == "done", done
            envelope = client.get(f"/v1/audits/{done['id']}/report").content
            reports[name] = verify_envelope(envelope, pem, predicate_type=OWNERSHIP_AUDIT_PREDICATE)["predicate"]
    claimed, independent = reports["thief-copy"], reports["independent"]
    assert claimed["decision"] == "claim" and claimed["p_value"] <= 1e-3, claimed["statistics"]
    assert claimed["queries"]["used"] <= 50
    assert claimed["statistics"]["suspected_clients"] == ["thief"]
    assert claimed["statistics"]["false_claim_bound"] == 1e-3
    assert independent["decision"] != "claim" and independent["p_value"] > 1e-3
