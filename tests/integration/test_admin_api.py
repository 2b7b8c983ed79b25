"""The admin API as an operator uses it: a real API process (uvicorn over loopback) on a real Redis.

One API process serves the module (its Redis database is flushed before each test by ``redis_url``), so
each operator action costs an HTTP round trip, not a process start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from services.core.alerts import AlertStore
from services.core.audits import AuditStore
from services.core.protected import ProtectedIndex, ProtectedRecord
from services.core.tokens import TokenStore
from services.core.webhooks import DEAD_LETTERS
from services.demo.processes import PrivateRedis, free_port
from tests.utils.stack import Server, oip_body, start_server

ADMIN = "test-admin-token-0123456789"
PROBLEM = "urn:modelcustody:problem:"


@pytest.fixture(scope="module")
def api(redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("api")
    env = {"MODELCUSTODY_ENV": "test", "MODELCUSTODY_REDIS_URL": redis_server.url,
           "MODELCUSTODY_ADMIN_TOKEN": ADMIN, "MODELCUSTODY_DATA_DIR": str(data)}
    server = start_server("services.api.main:create_app", env, data / "logs", "api")
    yield server
    server.stop()


@pytest.fixture()
def admin(api: Server, redis_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10) as client:
        yield client


@pytest.fixture()
def token_for(api: Server, redis_client: redis.Redis) -> Iterator[Callable[[str, str], httpx.Client]]:
    clients: list[httpx.Client] = []

    def _make(name: str, scope: str) -> httpx.Client:
        _, token = TokenStore(redis_client).create(name, scope)
        client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.close()


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == PROBLEM + slug and body["status"] == status and body["detail"], body
    return body


def test_clients_create_rotate_revoke_through_the_gateway(admin: httpx.Client, start_gateway: Any) -> None:
    created = admin.post("/v1/clients", json={"name": "acme", "policy": {"daily_quota": 5}})
    assert created.status_code == 201 and created.headers["location"] == "/v1/clients/acme"
    key = created.json()["api_key"]
    assert key.startswith("mck_") and created.json()["client"]["key_hint"] == key[:8]
    assert created.json()["client"]["policy"]["daily_quota"] == 5
    assert "api_key" not in admin.get("/v1/clients/acme").json()  # the key is shown once
    assert [c["id"] for c in admin.get("/v1/clients").json()] == ["acme"]
    assert_problem(admin.post("/v1/clients", json={"name": "acme"}), 409, "client-exists")
    assert_problem(admin.post("/v1/clients", json={"name": "no spaces"}), 422, "invalid-client-name")
    assert_problem(admin.get("/v1/clients/nobody"), 404, "client-not-found")

    gateway = start_gateway()
    x = np.zeros((1, 64))
    with httpx.Client(base_url=gateway.url, timeout=10) as gw:
        def infer(api_key: str) -> int:
            return gw.post("/v2/models/digits-mlp/infer", json=oip_body(x),
                           headers={"Authorization": f"Bearer {api_key}"}).status_code

        assert infer(key) == 200
        rotated = admin.post("/v1/clients/acme/rotate-key")
        assert rotated.status_code == 200
        new_key = rotated.json()["api_key"]
        assert new_key != key
        deadline = time.monotonic() + 10
        while infer(key) != 401 and time.monotonic() < deadline:  # the gateways refresh every 0.2 s here
            time.sleep(0.1)
        assert infer(key) == 401 and infer(new_key) == 200

        # Usage against the quota: 3 rows admitted so far (1 + 2), as the gateway pushed them to Redis.
        deadline = time.monotonic() + 10
        usage = admin.get("/v1/clients/acme/usage").json()
        while usage["used"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            usage = admin.get("/v1/clients/acme/usage").json()
        assert usage == {"client_id": "acme", "day": time.strftime("%Y%m%d", time.gmtime()), "used": 3,
                         "daily_quota": 5, "remaining": 2}

        revoked = admin.post("/v1/clients/acme/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        deadline = time.monotonic() + 10
        while infer(new_key) != 401 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert infer(new_key) == 401
    assert_problem(admin.post("/v1/clients/acme/rotate-key"), 409, "client-revoked")


def test_policy_set_validation_and_history(admin: httpx.Client, token_for: Any) -> None:
    assert admin.post("/v1/clients", json={"name": "beta"}).status_code == 201
    assert admin.get("/v1/clients/beta/policy").json()["label_only"] is False
    oncall = token_for("alice@oncall", "operator")
    set_ = oncall.put("/v1/clients/beta/policy", json={"label_only": True, "rate_per_s": 5, "reason": "ticket 12"})
    assert set_.status_code == 200 and set_.json()["label_only"] is True and set_.json()["rate_per_s"] == 5
    assert admin.get("/v1/clients/beta/policy").json()["reason"] == "ticket 12"
    assert admin.put("/v1/clients/beta/policy", json={"round_decimals": 2}).status_code == 200

    bad = assert_problem(admin.put("/v1/clients/beta/policy", json={"round_decimals": 9}), 422, "validation-error")
    assert bad["errors"][0]["loc"] == ["body", "round_decimals"]
    assert_problem(admin.put("/v1/clients/beta/policy", json={"lable_only": True}), 422, "validation-error")
    assert_problem(admin.put("/v1/clients/nobody/policy", json={}), 404, "client-not-found")

    history = admin.get("/v1/clients/beta/policy/history").json()
    assert [(h["by"], h["policy"]["round_decimals"]) for h in history] == [("admin", 2), ("alice@oncall", None)]
    assert history[1]["policy"]["label_only"] is True


def test_scopes_and_actor_from_token(
    admin: httpx.Client, token_for: Any, redis_client: redis.Redis, api: Server
) -> None:
    assert_problem(httpx.get(api.url + "/v1/clients"), 401, "unauthenticated")
    assert_problem(httpx.get(api.url + "/v1/clients", headers={"Authorization": "Bearer mca_nope"}), 401,
                   "unauthenticated")
    reader = token_for("grafana", "read")
    auditor = token_for("expert", "auditor")
    operator = token_for("bob", "operator")
    assert reader.get("/v1/whoami").json() == {"name": "grafana", "scope": "read"}
    assert admin.get("/v1/whoami").json() == {"name": "admin", "scope": "operator"}  # the legacy token
    assert reader.get("/v1/clients").status_code == 200
    assert_problem(reader.post("/v1/clients", json={"name": "x"}), 403, "insufficient-scope")
    assert_problem(auditor.post("/v1/clients", json={"name": "x"}), 403, "insufficient-scope")

    store = AlertStore(redis_client)
    alert, _ = store.raise_or_update(client_id="mallory", severity="high", risk_score=9.0, signals=[], fired=["ood"],
                                     window_start=0.0, window_end=1.0, queries_seen=50)
    assert_problem(reader.post(f"/v1/alerts/{alert.id}/ack"), 403, "insufficient-scope")
    assert_problem(auditor.post(f"/v1/alerts/{alert.id}/ack"), 403, "insufficient-scope")
    # The body cannot choose the actor: the token's name is recorded.
    acked = operator.post(f"/v1/alerts/{alert.id}/ack", json={"note": "on it", "actor": "someone-else"})
    assert acked.status_code == 200
    assert acked.json()["history"][-1]["by"] == "bob" and acked.json()["history"][-1]["note"] == "on it"
    TokenStore(redis_client).revoke("bob")
    assert_problem(operator.get("/v1/clients"), 401, "unauthenticated")


def _alerts(redis_client: redis.Redis, n: int) -> list[str]:
    store = AlertStore(redis_client)
    ids = []
    for i in range(n):
        alert, _ = store.raise_or_update(client_id=f"c{i}", severity="high" if i % 2 else "medium",
                                         risk_score=5.0 + i, signals=[], fired=["boundary"],
                                         window_start=0.0, window_end=1.0, queries_seen=100)
        ids.append(alert.id)
    return ids


def test_alerts_filters_cursor_pagination_and_lifecycle(admin: httpx.Client, redis_client: redis.Redis) -> None:
    ids = _alerts(redis_client, 7)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = admin.get("/v1/alerts", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [a["id"] for a in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if pages == 1:  # an alert opened while paging appears on no later page (it is newer than the cursor)
            AlertStore(redis_client).raise_or_update(
                client_id="late", severity="high", risk_score=9.0, signals=[], fired=["ood"],
                window_start=0.0, window_end=1.0, queries_seen=10)
    assert pages == 3 and sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert seen == sorted(ids, key=lambda i: redis_client.zscore("mc:alerts:index", i), reverse=True)  # type: ignore

    high = admin.get("/v1/alerts", params={"severity": "high"}).json()["items"]
    assert {a["client_id"] for a in high} == {"c1", "c3", "c5", "late"}
    assert [a["client_id"] for a in admin.get("/v1/alerts", params={"client_id": "c4"}).json()["items"]] == ["c4"]
    AlertStore(redis_client).raise_or_update(
        client_id="group:10.0.0.0/24", severity="medium", risk_score=6.0, signals=[], fired=["ood"],
        window_start=0.0, window_end=1.0, queries_seen=200, kind="group", members=["c1", "c2", "c3"])
    groups = admin.get("/v1/alerts", params={"kind": "group"}).json()["items"]
    assert [(a["client_id"], a["members"]) for a in groups] == [("group:10.0.0.0/24", ["c1", "c2", "c3"])]
    clients = admin.get("/v1/alerts", params={"kind": "client"}).json()["items"]
    assert clients and "group:10.0.0.0/24" not in {a["client_id"] for a in clients}
    assert_problem(admin.get("/v1/alerts", params={"cursor": "garbage!"}), 422, "invalid-cursor")
    assert_problem(admin.get("/v1/alerts", params={"status": "nope"}), 422, "validation-error")

    one = ids[0]
    assert admin.get(f"/v1/alerts/{one}").json()["client_id"] == "c0"
    assert admin.post(f"/v1/alerts/{one}/ack").json()["status"] == "acknowledged"
    assert_problem(admin.post(f"/v1/alerts/{one}/ack"), 409, "alert-transition-refused")
    assert admin.post(f"/v1/alerts/{one}/resolve", json={"note": "false positive"}).json()["status"] == "resolved"
    resolved = admin.get("/v1/alerts", params={"status": "resolved"}).json()["items"]
    assert [a["id"] for a in resolved] == [one] and resolved[0]["history"][-1]["by"] == "admin"
    assert_problem(admin.get("/v1/alerts/al_nope"), 404, "alert-not-found")


def test_audits_submit_location_list_and_cancel(admin: httpx.Client, redis_client: redis.Redis,
                                                token_for: Any) -> None:
    ProtectedIndex(redis_client).create(ProtectedRecord(id="pm_test", name="digits", spec={}, status="ready",
                                                        methods=["watermark"]))
    body = {"method": "watermark", "protected_model": "pm_test",
            "suspect": {"url": "http://127.0.0.1:9/v2/models/x/infer", "protocol": "oip-v2", "model": "x"}}
    submitted = admin.post("/v1/audits", json=body)
    assert submitted.status_code == 202, submitted.text
    audit_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/v1/audits/{audit_id}"
    assert_problem(admin.post("/v1/audits", json={**body, "protected_model": "pm_nope"}), 404,
                   "protected-model-not-found")

    store = AuditStore(redis_client)
    running, _ = store.create_or_get(method="watermark", protected_model="pm_test", suspect={},
                                     identity={"kind": "endpoint", "url": "http://other"}, params={})
    store.update(running.id, status="running")
    listed = admin.get("/v1/audits").json()
    assert {a["id"] for a in listed} == {audit_id, running.id}
    assert [a["id"] for a in admin.get("/v1/audits", params={"status": "running"}).json()] == [running.id]

    expert = token_for("expert", "auditor")
    cancelled = expert.post(f"/v1/audits/{audit_id}/cancel")  # queued: cancelled at once
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["cancel_requested_by"] == "expert"
    asked = expert.post(f"/v1/audits/{running.id}/cancel")  # running: the worker stops at its next update
    assert asked.json()["status"] == "running" and asked.json()["cancel_requested_by"] == "expert"
    assert_problem(expert.post(f"/v1/audits/{audit_id}/cancel"), 409, "audit-finished")
    assert_problem(admin.get("/v1/audits/au_nope"), 404, "audit-not-found")
    # A cancelled audit does not block a new one for the same request.
    assert admin.post("/v1/audits", json=body).json()["id"] != audit_id


def test_webhook_dead_letters_list_and_requeue(admin: httpx.Client, redis_client: redis.Redis) -> None:
    import orjson

    for i in range(5):  # the sender pushes dead letters on the left: alert 0 is the oldest
        redis_client.lpush(DEAD_LETTERS, orjson.dumps({"event": "alert.opened", "attempts": 8, "not_before": 1.0,
                                                       "payload": {"id": f"al_{i}"}}))
    page = admin.get("/v1/webhooks/dead-letters", params={"offset": 1, "limit": 2}).json()
    assert page["total"] == 5 and [i["payload"]["id"] for i in page["items"]] == ["al_1", "al_2"]
    moved = admin.post("/v1/webhooks/dead-letters/requeue", params={"limit": 3}).json()
    assert moved == {"requeued": 3, "remaining": 2}
    outbox = [orjson.loads(raw) for raw in redis_client.lrange("mc:webhook:outbox", 0, -1)]  # type: ignore
    assert sorted(i["payload"]["id"] for i in outbox) == ["al_0", "al_1", "al_2"]
    assert all(i["attempts"] == 0 and i["not_before"] == 0 for i in outbox)


def test_readiness_and_errors_while_redis_is_down(tmp_path: Path) -> None:
    env = {"MODELCUSTODY_ENV": "test", "MODELCUSTODY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "MODELCUSTODY_ADMIN_TOKEN": ADMIN, "MODELCUSTODY_DATA_DIR": str(tmp_path)}
    server = start_server("services.api.main:create_app", env, tmp_path / "logs", "api-no-redis")
    try:
        assert httpx.get(server.url + "/livez").status_code == 200
        ready = httpx.get(server.url + "/healthz", timeout=10)
        assert ready.status_code == 503 and ready.json()["redis"] is False
        headers = {"Authorization": f"Bearer {ADMIN}"}
        assert_problem(httpx.get(server.url + "/v1/clients", headers=headers, timeout=10), 503,
                       "dependency-unavailable")
        assert_problem(httpx.get(server.url + "/v1/clients", headers={"Authorization": "Bearer mca_x"}, timeout=10),
                       503, "dependency-unavailable")
    finally:
        server.stop()


def test_openapi_names_every_response_model_and_the_security_scheme(api: Server) -> None:
    from openapi_spec_validator import validate

    spec = httpx.get(api.url + "/openapi.json").json()
    validate(spec)  # raises on an invalid document
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "MODELCUSTODY_ADMIN_TOKEN, or a token from `modelcustody tokens create`"}
    schemas = spec["components"]["schemas"]
    assert {"ProblemDetail", "Client", "ClientWithKey", "Policy", "Alert", "AlertPage", "Audit", "Usage",
            "DeadLetterPage", "Health"} <= set(schemas)
    # Files served as stored bytes (signed envelopes, HTML, the metrics exposition) have no model.
    untyped_ok = {("get", "/metrics"), ("get", "/v1/audits/{audit_id}/report"),
                  ("get", "/v1/protected-models/{protected_id}/registration"),
                  ("get", "/v1/reports/compliance/{name}")}
    missing = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = next((r for code, r in op["responses"].items() if code.startswith("2")), None)
            schema = ((ok or {}).get("content", {}).get("application/json", {}).get("schema", {}))
            named = "$ref" in schema or "$ref" in schema.get("items", {}) or schema.get("items") == {"type": "string"}
            if not named and (method, path) not in untyped_ok:
                missing.append(f"{method.upper()} {path}")
            if path.startswith("/v1/") and path not in ("/v1/keys/public", "/v1/reports/verify"):
                assert op.get("security") == [{"HTTPBearer": []}], f"{method} {path} declares no security"
                assert "401" in op["responses"], f"{method} {path} documents no 401"
    assert not missing, f"operations without a named response model: {missing}"
    assert "multipart/form-data" in spec["paths"]["/v1/audits"]["post"]["requestBody"]["content"]


# --- the CLI as a client of this API ---------------------------------------------------------------------


@pytest.fixture()
def cli(api: Server, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    from typer.testing import CliRunner

    from services.cli import app
    from services.core.settings import get_settings

    monkeypatch.setenv("MODELCUSTODY_REDIS_URL", redis_url)  # `tokens` bootstraps through Redis
    get_settings.cache_clear()
    runner = CliRunner()

    def _run(*args: str, token: str = ADMIN, api_url: str = api.url) -> Any:
        env = {"MODELCUSTODY_API_URL": api_url, "MODELCUSTODY_ADMIN_TOKEN": token}
        return runner.invoke(app, list(args), env=env)

    yield _run
    get_settings.cache_clear()


def test_cli_operates_through_the_api_with_documented_exit_codes(cli: Any, redis_client: redis.Redis) -> None:
    import json

    from services.core.version import __version__

    assert cli("--version").stdout.strip() == f"modelcustody {__version__}"
    down = cli("alerts", "list", api_url=f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == 3 and down.stderr.count("\n") == 1 and "cannot reach the admin API" in down.stderr

    made = cli("tokens", "create", "carol", "--scope", "operator", "-o", "json")
    assert made.exit_code == 0, made.output
    carol = json.loads(made.stdout)["token"]
    viewer = json.loads(cli("tokens", "create", "viewer", "--scope", "read", "-o", "json").stdout)["token"]
    assert cli("tokens", "create", "x", "--scope", "root").exit_code == 2

    added = cli("clients", "add", "delta", "-o", "json", token=carol)
    assert added.exit_code == 0 and json.loads(added.stdout)["api_key"].startswith("mck_")
    assert "api key (shown once" in cli("clients", "add", "echo", token=carol).stdout
    refused = cli("clients", "add", "foxtrot", token=viewer)
    assert refused.exit_code == 4 and "insufficient-scope" in refused.stderr
    assert cli("clients", "show", "nobody").exit_code == 1

    set_ = cli("clients", "policy", "set", "delta", "--daily-quota", "10", "--label-only", "-o", "json", token=carol)
    assert set_.exit_code == 0 and json.loads(set_.stdout)["daily_quota"] == 10
    shown = json.loads(cli("clients", "show", "delta", "-o", "json").stdout)
    assert shown["policy"]["label_only"] is True and shown["usage"]["remaining"] == 10
    history = json.loads(cli("clients", "policy", "history", "delta", "-o", "json").stdout)
    assert history[0]["by"] == "carol"
    assert "delta" in cli("clients", "list").stdout  # the table

    alert, _ = AlertStore(redis_client).raise_or_update(
        client_id="delta", severity="high", risk_score=9.0, signals=[], fired=["ood"],
        window_start=0.0, window_end=1.0, queries_seen=10)
    listed = json.loads(cli("alerts", "list", "--status", "open", "-o", "json").stdout)
    assert [a["id"] for a in listed] == [alert.id]
    acked = cli("alerts", "ack", alert.id, "--note", "checking", "-o", "json", token=carol)
    assert json.loads(acked.stdout)["history"][-1]["by"] == "carol"
    assert cli("alerts", "ack", alert.id, token=carol).exit_code == 1  # already acknowledged: 409
    assert json.loads(cli("audit", "list", "-o", "json").stdout) == []
    assert json.loads(cli("webhooks", "dead-letters", "-o", "json").stdout)["total"] == 0
