"""The worker's side without a broker: the runner writes a signed report; the task bodies keep the audit
record honest (attempts, duplicates, failures, give-up) against a real Redis; metrics carry the names the
dashboards use (fresh registry per test, docs/design.md, habit 3)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

import workers.tasks as tasks
from audit.protected import RegistrationConfig, RegistrationInputs, register_protected_model
from audit.provenance import sha256_of
from audit.signing import load_or_create_signing_key, public_key_pem, verify_envelope
from audit.watermark_embed import WatermarkEmbedder
from services.core.audits import AuditStore
from services.core.protected import ProtectedIndex
from services.core.settings import Settings
from services.core.storage import protected_root, uploads_dir
from workers.metrics import AuditMetrics
from workers.runner import execute_audit


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from audit.data import split_digits

    out = tmp_path_factory.mktemp("owner")
    split = split_digits(seed=0)
    result = WatermarkEmbedder(epochs=8, watermark_epochs=8, trigger_steps=5).fit(split.x_owner, split.y_owner)
    model, key = result.save(out)
    np.savez(out / "reference.npz", x=split.x_pool, y=split.y_pool)
    return {"model": model, "key": key, "reference": out / "reference.npz"}


@pytest.fixture()
def world(tmp_path: Path, redis_url: str, owner: dict[str, Path]) -> dict[str, Any]:
    settings = Settings(env="test", redis_url=redis_url, data_dir=tmp_path / "data")
    key = load_or_create_signing_key(settings.signing_key_file)
    inputs = RegistrationInputs(name="digits", model_path=owner["model"], watermark_key_path=owner["key"],
                                reference_data_path=owner["reference"])
    protected_root(settings).mkdir(parents=True)
    pm = register_protected_model(inputs, protected_root(settings), key, registration_id="pm_w",
                                  config=RegistrationConfig(n_null_models=2, reference_epochs=4))
    sha = sha256_of(owner["model"])
    uploads_dir(settings).mkdir(parents=True)
    stored = shutil.copy(owner["model"], uploads_dir(settings) / sha)
    r = redis.Redis.from_url(redis_url)
    store = AuditStore(r)
    record, _ = store.create_or_get(
        method="watermark", protected_model="pm_w", suspect={"path": str(stored)},
        identity={"kind": "file", "sha256": sha, "format": "safetensors"}, params={"alpha": 0.05},
    )
    registry = CollectorRegistry()
    runtime = tasks.Runtime(settings, r, store, ProtectedIndex(r), AuditMetrics(registry))
    return {"settings": settings, "key": key, "pm": pm, "record": record, "store": store, "runtime": runtime,
            "registry": registry}


def test_runner_writes_a_verifiable_report_and_page(world: dict[str, Any]) -> None:
    steps: list[float] = []
    outcome = execute_audit(world["record"], world["settings"], lambda f, m: steps.append(f))
    assert outcome.verdict == "claim" and steps == sorted(steps)
    statement = verify_envelope(outcome.report_path.read_bytes(), public_key_pem(world["key"]))
    assert statement["predicate"]["protected_model"]["registration_sha256"] == world["pm"].digest
    assert "Decision: claim" in outcome.html_path.read_text()
    assert outcome.html_path.with_suffix(".pdf").read_bytes().startswith(b"%PDF-")  # the PDF for filing


def test_task_counts_attempts_and_skips_duplicates(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_runtime", world["runtime"])
    audit_id = world["record"].id
    result = tasks.run_audit.run(audit_id)
    assert result["status"] == "done" and result["decision"] == "claim"
    record = world["store"].get(audit_id)
    assert record.status == "done" and record.attempts == 1 and record.progress == 1.0 and record.report_path
    again = tasks.run_audit.run(audit_id)  # a redelivered message of a finished audit only acknowledges
    assert again == {"id": audit_id, "status": "done", "duplicate_delivery": True}
    assert world["store"].get(audit_id).attempts == 1
    registry = world["registry"]
    assert registry.get_sample_value("modelcustody_audits_total", {"method": "watermark", "status": "done"}) == 1
    assert registry.get_sample_value("modelcustody_audit_duration_seconds_count", {"method": "watermark"}) == 1


def test_task_records_failures_and_gives_up_on_poison_audits(world: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_runtime", world["runtime"])
    store, audit_id = world["store"], world["record"].id
    shutil.rmtree(protected_root(world["settings"]) / "pm_w")
    with pytest.raises(tasks.AuditFailed, match="no registration"):
        tasks.run_audit.run(audit_id)
    record = store.get(audit_id)
    assert record.status == "failed" and "no registration" in record.error and record.attempts == 1
    # A worker lost during every attempt: the third redelivery is the last.
    store.update(audit_id, status="running", attempts=tasks.MAX_ATTEMPTS, error=None)
    with pytest.raises(tasks.AuditFailed, match="gave up"):
        tasks.run_audit.run(audit_id)
    assert store.get(audit_id).status == "failed"
    registry = world["registry"]
    assert registry.get_sample_value("modelcustody_audits_total", {"method": "watermark", "status": "failed"}) == 2


def test_metric_names_match_the_dashboards() -> None:
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    metrics.audits.labels("watermark", "done").inc()
    metrics.duration.labels("watermark").observe(3.0)
    dashboards = Path(__file__).resolve().parents[3] / "dashboards"
    text = "".join(p.read_text() for p in dashboards.rglob("*") if p.suffix in (".json", ".yml"))
    for name in ("modelcustody_audits_total", "modelcustody_audit_duration_seconds_bucket"):
        assert name in text
    assert registry.get_sample_value("modelcustody_audit_duration_seconds_bucket",
                                     {"method": "watermark", "le": "5.0"}) == 1


def test_cancel_requested_stops_a_running_audit_and_skips_a_cancelled_one(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "_runtime", world["runtime"])
    audit_id = world["record"].id
    # As the API leaves it when an operator cancels a running audit (a redelivery restarts it: still cancelled).
    world["store"].update(audit_id, status="running", cancel_requested_by="expert")
    assert tasks.run_audit.run(audit_id) == {"id": audit_id, "status": "cancelled"}
    record = world["store"].get(audit_id)
    assert record.status == "cancelled" and record.message == "cancelled by expert" and record.report_path is None
    labels = {"method": "watermark", "status": "cancelled"}
    assert world["registry"].get_sample_value("modelcustody_audits_total", labels) == 1
    # A queued audit the API already cancelled is acknowledged, never run.
    assert tasks.run_audit.run(audit_id) == {"id": audit_id, "status": "cancelled", "duplicate_delivery": True}
