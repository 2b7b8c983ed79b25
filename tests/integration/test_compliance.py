"""Signed compliance reports built from a real Redis: counts, the covered-ids digest, verification, tampering."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from audit.signing import COMPLIANCE_PREDICATE, VerificationError, public_key_path, verify_envelope
from services.core.alerts import AlertStore
from services.core.audits import AuditStore
from services.core.settings import Settings
from tests.utils.stack import REPO
from workers.compliance import compliance_report
from workers.compliance_report import build_compliance_report, covered_digest


@pytest.fixture()
def settings(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELCUSTODY_REDIS_URL", redis_url)
    monkeypatch.setenv("MODELCUSTODY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MODELCUSTODY_ENV", "test")
    from services.core.settings import get_settings

    get_settings.cache_clear()
    yield get_settings()  # type: ignore[misc]
    get_settings.cache_clear()


def seed(r: redis.Redis) -> None:
    alerts = AlertStore(r)
    for client, severity in (("mallory", "high"), ("eve", "medium")):
        alerts.raise_or_update(
            client_id=client,
            severity=severity,
            risk_score=20.0,
            signals=[],
            fired=["ood", "boundary"],
            window_start=0.0,
            window_end=1.0,
            queries_seen=80,
            queries_at_test=40,
        )
    audits = AuditStore(r)
    audits.create_or_get(method="watermark", protected_model="pm_1", suspect={}, identity={"sha256": "a"}, params={})
    for _ in range(25):
        r.xadd("mc:queries", {"v": b"1", "r": b"{}"})
    r.hset("mc:risk:levels", mapping={"mallory": "high", "eve": "medium", "alice": "low"})


def test_report_counts_what_happened_in_the_period(redis_client: redis.Redis, settings: Settings) -> None:
    seed(redis_client)
    now = time.time()
    report = build_compliance_report(redis_client, settings, since=now - 3600, until=now + 1)
    assert report["query_log"]["records_logged"] == 25
    det = report["detector"]
    assert det["alerts_opened"] == 2 and det["alerts_by_severity"] == {"high": 1, "medium": 1}
    assert det["signals_fired"] == {"ood": 2, "boundary": 2} and det["median_queries_at_alert"] == 40
    assert det["clients_by_risk_level"] == {"high": 1, "medium": 1, "low": 1}
    assert report["audits"]["submitted"] == 1 and report["audits"]["by_method"] == {"watermark": 1}
    # A period before any of it covers nothing.
    empty = build_compliance_report(redis_client, settings, since=now - 7200, until=now - 3600)
    assert empty["query_log"]["records_logged"] == 0 and empty["detector"]["alerts_opened"] == 0
    with pytest.raises(ValueError):
        build_compliance_report(redis_client, settings, since=now, until=now)


def test_task_signs_a_report_that_verifies_and_any_change_breaks(redis_client: redis.Redis, settings: Settings) -> None:
    seed(redis_client)
    path = Path(compliance_report(3600.0))  # the Celery task's function, called in-process
    envelope = path.read_bytes()
    pem = public_key_path(settings.signing_key_file).read_bytes()
    statement = verify_envelope(envelope, pem, predicate_type=COMPLIANCE_PREDICATE)
    assert statement["subject"][0]["digest"]["sha256"] == covered_digest(statement["predicate"])
    body: Any = orjson.loads(envelope)
    for i in (10, len(body["payload"]) // 2):
        tampered = dict(body)
        payload = body["payload"]
        tampered["payload"] = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
        with pytest.raises(VerificationError):
            verify_envelope(orjson.dumps(tampered), pem)
    cli = [sys.executable, "-m", "services.cli", "report", "verify", str(path), "--public-key"]
    ok = subprocess.run(
        [*cli, str(public_key_path(settings.signing_key_file))], cwd=REPO, capture_output=True, text=True
    )
    assert ok.returncode == 0 and "compliance report" in ok.stdout and "2 alerts opened" in ok.stdout
    path.write_bytes(envelope.replace(b'"sig":"', b'"sig":"A', 1))
    bad = subprocess.run(
        [*cli, str(public_key_path(settings.signing_key_file))], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 1


def test_the_api_lists_and_serves_compliance_reports(
    redis_client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    from tests.utils.stack import start_server

    seed(redis_client)
    path = Path(compliance_report(3600.0))
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": settings.redis_url,
        "MODELCUSTODY_DATA_DIR": str(settings.data_dir),
        "MODELCUSTODY_ADMIN_TOKEN": "compliance-test-token-0123456789",
    }
    api = start_server("services.api.main:create_app", env, tmp_path / "logs", "api")
    try:
        auth = {"Authorization": f"Bearer {env['MODELCUSTODY_ADMIN_TOKEN']}"}
        with httpx.Client(base_url=api.url, timeout=10) as http:
            assert http.get("/v1/reports/compliance").status_code == 401
            assert http.get("/v1/reports/compliance", headers=auth).json() == [path.name]
            served = http.get(f"/v1/reports/compliance/{path.name}", headers=auth)
            assert served.status_code == 200 and served.content == path.read_bytes()
            verified = http.post("/v1/reports/verify", params={"kind": "compliance"}, content=served.content).json()
            assert verified["valid"] is True
            # The default route verifies ownership audit reports only: a compliance report is not one.
            assert http.post("/v1/reports/verify", content=served.content).json()["valid"] is False
            assert http.get("/v1/reports/compliance/..%2Fkeys", headers=auth).status_code in (404, 422)
            assert http.get("/v1/reports/compliance/passwd", headers=auth).status_code == 422
            missing = "compliance-20000101T000000Z.dsse.json"
            assert http.get(f"/v1/reports/compliance/{missing}", headers=auth).status_code == 404
    finally:
        api.stop()
