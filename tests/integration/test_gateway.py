"""The gateway against a real Redis and a real upstream, over real HTTP on loopback."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from services.core.clients import ClientRegistry
from services.core.policy import OutputPolicy
from services.core.records import QueryRecord
from services.demo.model_server.models import digits_split
from tests.utils.stack import oip_body

STREAM = "mc:queries"


def read_records(r: redis.Redis) -> list[QueryRecord]:
    return [QueryRecord.from_stream_fields(fields) for _, fields in r.xrange(STREAM)]


def test_every_row_is_logged_with_its_content_in_order(
    start_gateway: Any, add_client: Any, redis_client: redis.Redis
) -> None:
    gw = start_gateway()
    keys = {name: add_client(name) for name in ("alice", "bob", "carol")}
    x = digits_split().x_holdout
    rng = np.random.default_rng(1)
    sent: dict[str, list[tuple[list[float], list[float]]]] = defaultdict(list)
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        for i in range(60):
            name = ("alice", "bob", "carol")[i % 3]
            rows = x[rng.integers(0, len(x), int(rng.integers(1, 6)))]
            h = {"Authorization": f"Bearer {keys[name]}"} if name != "carol" else {"X-API-Key": keys[name]}
            if name == "bob":
                resp = http.post("/v1/models/digits-mlp:predict", json={"instances": rows.tolist()}, headers=h)
                outs = resp.json()["predictions"]
            elif name == "carol":
                resp = http.post("/predict", json={"inputs": rows.tolist()}, headers=h)
                outs = resp.json()["outputs"]
            else:
                resp = http.post("/v2/models/digits-mlp/infer", json=oip_body(rows), headers=h)
                tensor = resp.json()["outputs"][0]
                outs = np.asarray(tensor["data"]).reshape(tensor["shape"]).tolist()
            assert resp.status_code == 200, resp.text
            sent[name].extend(zip(rows.tolist(), outs, strict=True))
    assert gw.stop() == 0  # graceful shutdown flushes the buffer
    records = read_records(redis_client)
    assert len(records) == sum(len(v) for v in sent.values())
    by_client: dict[str, list[QueryRecord]] = defaultdict(list)
    for rec in records:
        by_client[rec.client_id].append(rec)
    protocols = {"alice": "oip-v2", "bob": "kserve-v1", "carol": "generic"}
    for name, pairs in sent.items():
        got = by_client[name]
        assert [r.input for r in got] == [p[0] for p in pairs]
        np.testing.assert_allclose([r.output for r in got], [p[1] for p in pairs])
        assert {r.protocol for r in got} == {protocols[name]}
        assert all(r.output_kind == "probabilities" and r.status == 200 for r in got)
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_bad_input_gets_a_reason_and_never_loses_answered_rows(
    start_gateway: Any, add_client: Any, redis_client: redis.Redis
) -> None:
    gw = start_gateway(MODELCUSTODY_GATEWAY_INPUT_DIM="64", MODELCUSTODY_GATEWAY_MAX_BODY_BYTES="20000")
    key = add_client("dave")
    revoked_key = add_client("eve")
    ClientRegistry(redis_client).revoke("eve")
    time.sleep(0.5)  # one client refresh
    good = oip_body(digits_split().x_holdout[:2])
    auth = {"Authorization": f"Bearer {key}"}
    url = "/v2/models/digits-mlp/infer"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": good}, 401, "missing API key"),
        ({"json": good, "headers": {"Authorization": "Bearer nope"}}, 401, "unknown or revoked"),
        ({"json": good, "headers": {"X-API-Key": revoked_key}}, 401, "unknown or revoked"),
        ({"content": b'{"inputs": [', "headers": {**auth, "Content-Type": "application/json"}}, 400, "malformed JSON"),
        (
            {
                "content": b'{"inputs":[{"shape":[1,2],"data":[NaN,1]}]}',
                "headers": {**auth, "Content-Type": "application/json"},
            },
            400,
            "NaN",
        ),
        (
            {"content": b"x=1", "headers": {**auth, "Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "Content-Type",
        ),
        ({"json": {"inputs": [{"shape": [2, 64], "data": [1.0] * 64}]}, "headers": auth}, 400, "shape"),
        ({"json": {"inputs": [{"shape": [1, 3], "data": [1, 2, 3]}]}, "headers": auth}, 400, "64 features"),
        ({"json": {"inputs": [{"shape": [1, 2], "data": [1, "a"]}]}, "headers": auth}, 400, "numbers"),
        (
            {"json": {"instances": [[1, 2], [3]]}, "headers": auth, "url": "/v1/models/digits-mlp:predict"},
            400,
            "equal length",
        ),
        ({"json": {"nothing": 1}, "headers": auth}, 400, "inputs"),
        (
            {"content": b"[" + b"1," * 20000 + b"1]", "headers": {**auth, "Content-Type": "application/json"}},
            413,
            "limit",
        ),
        ({"json": good, "headers": auth, "url": "/v2/models/no-such-model/infer"}, 404, "not found"),
    ]
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        assert http.post(url, json=good, headers=auth).status_code == 200
        for kwargs, status, reason in cases:
            target = kwargs.pop("url", url)
            resp = http.post(target, **kwargs)
            assert resp.status_code == status, (kwargs, resp.text)
            assert reason in resp.json()["error"], resp.text
        assert http.post(url, json=good, headers=auth).status_code == 200
        assert http.get("/healthz").status_code == 200
    assert gw.stop() == 0
    records = read_records(redis_client)
    # The two answered requests of two rows each, nothing from the refused ones.
    assert [r.client_id for r in records] == ["dave"] * 4


def test_upstream_failures_map_to_502_and_504(start_gateway: Any, add_client: Any, tmp_path: Any) -> None:
    from services.demo.processes import free_port
    from tests.utils.stack import start_server

    key = add_client("frank")
    body = oip_body(np.zeros((1, 64)))
    dead = start_gateway(MODELCUSTODY_GATEWAY_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}")
    resp = httpx.post(dead.url + "/v2/models/m/infer", json=body, headers={"X-API-Key": key}, timeout=30)
    assert resp.status_code == 502 and "unreachable" in resp.json()["error"]

    slow = start_server("tests.utils.upstreams:create_echo_app", {"UPSTREAM_DELAY_S": "3"}, tmp_path, "slow")
    try:
        gw = start_gateway(MODELCUSTODY_GATEWAY_UPSTREAM_URL=slow.url, MODELCUSTODY_GATEWAY_READ_TIMEOUT_S="0.5")
        resp = httpx.post(gw.url + "/v2/models/m/infer", json=body, headers={"X-API-Key": key}, timeout=30)
        assert resp.status_code == 504 and "timed out" in resp.json()["error"]
        assert httpx.get(gw.url + "/healthz").status_code == 200  # still serving
    finally:
        slow.stop()


def test_hop_by_hop_and_credentials_are_not_forwarded(start_gateway: Any, add_client: Any, tmp_path: Any) -> None:
    from tests.utils.stack import start_server

    echo = start_server("tests.utils.upstreams:create_echo_app", {}, tmp_path, "echo")
    try:
        gw = start_gateway(MODELCUSTODY_GATEWAY_UPSTREAM_URL=echo.url)
        key = add_client("grace")
        resp = httpx.post(
            gw.url + "/v2/models/m/infer",
            json=oip_body(np.zeros((1, 4))),
            headers={
                "Authorization": f"Bearer {key}",
                "X-Request-ID": "req-42",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "X-Custom": "not allow-listed",
            },
        )
        assert resp.status_code == 200
        seen = resp.json()["received_headers"]
        assert "authorization" not in seen and "x-api-key" not in seen
        assert "keep-alive" not in seen and "te" not in seen
        assert seen["x-request-id"] == "req-42" and "x-custom" not in seen
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert resp.headers["x-upstream"] == "echo"
    finally:
        echo.stop()


def test_output_policies_quota_and_block(start_gateway: Any, add_client: Any, redis_client: redis.Redis) -> None:
    gw = start_gateway()
    reg = ClientRegistry(redis_client)
    keys = {n: add_client(n) for n in ("lab", "rnd", "quota", "blocked")}
    reg.set_policy("lab", OutputPolicy(label_only=True))
    reg.set_policy("rnd", OutputPolicy(round_decimals=1, top_k=2))
    reg.set_policy("quota", OutputPolicy(daily_quota=5))
    reg.set_policy("blocked", OutputPolicy(blocked=True, reason="extraction alert"))
    time.sleep(0.6)  # > one client refresh (0.2 s)
    x = digits_split().x_holdout[:3]
    with httpx.Client(base_url=gw.url, timeout=30) as http:

        def post(name: str, rows: np.ndarray) -> httpx.Response:
            return http.post("/v2/models/digits-mlp/infer", json=oip_body(rows), headers={"X-API-Key": keys[name]})

        lab = post("lab", x).json()["outputs"][0]
        assert lab["shape"] == [3, 1] and lab["datatype"] == "INT64"
        rnd = np.asarray(post("rnd", x).json()["outputs"][0]["data"]).reshape(3, 10)
        assert ((rnd > 0).sum(axis=1) <= 2).all() and np.allclose(rnd, np.round(rnd, 1))
        assert post("quota", x).status_code == 200
        refused = post("quota", x)
        assert refused.status_code == 429 and "quota" in refused.json()["error"]
        blocked = post("blocked", x)
        assert blocked.status_code == 403 and "extraction alert" in blocked.json()["error"]
    gw.stop()
    records = read_records(redis_client)
    assert {r.client_id: r.policy for r in records} == {"lab": "label_only", "rnd": "top2+round1", "quota": "none"}
    assert [r.output for r in records if r.client_id == "lab"] == [[float(v)] for v in lab["data"]]


@pytest.mark.parametrize("path", ["/metrics"])
def test_metrics_count_requests_and_records(start_gateway: Any, add_client: Any, path: str) -> None:
    gw = start_gateway()
    key = add_client("henry")
    for _ in range(3):
        httpx.post(gw.url + "/v2/models/digits-mlp/infer", json=oip_body(np.zeros((2, 64))), headers={"X-API-Key": key})
    httpx.post(gw.url + "/v2/models/digits-mlp/infer", json=oip_body(np.zeros((2, 64))))
    time.sleep(0.2)
    assert gw.metric("modelcustody_gateway_requests_total", {"protocol": "oip-v2", "code": "2xx"}) == 3
    assert gw.metric("modelcustody_gateway_requests_total", {"protocol": "oip-v2", "code": "4xx"}) == 1
    assert gw.metric("modelcustody_querylog_records_total", {"outcome": "written"}) == 6
    assert gw.metric("modelcustody_querylog_records_total", {"outcome": "dropped"}) == 0
    text = httpx.get(gw.url + path).text
    assert "henry" not in text  # never a label per client
