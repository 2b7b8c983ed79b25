"""Hostile requests through the real gateway (uvicorn subprocess, real Redis, real upstream over loopback).

Each case once got a 500, forwarded what it should not, or made the gateway read a body it had no reason to.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import numpy as np
import orjson
import redis

from tests.utils.stack import oip_body

URL = "/v2/models/digits-mlp/infer"


def test_shapes_whose_product_overflows_int64_get_400(start_gateway: Any, add_client: Any) -> None:
    gw = start_gateway()
    auth = {"X-API-Key": add_client("shaper")}
    # 3 * 6148914691236517206 = 2**64 + 2: np.prod wraps it to 2, which matched the two values sent.
    hostile = [
        {"inputs": [{"name": "x", "shape": [3, 6148914691236517206], "datatype": "FP64", "data": [1.0, 2.0]}]},
        {"inputs": [{"name": "x", "shape": [2**62, 4, 4], "datatype": "FP64", "data": [1.0] * 64}]},
        {"inputs": [{"name": "x", "shape": [1] * 1000, "datatype": "FP64", "data": [1.0]}]},
        {"inputs": [{"name": "x", "shape": [1, True], "datatype": "FP64", "data": [1.0]}]},
    ]
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        for body in hostile:
            resp = http.post(URL, content=orjson.dumps(body), headers={**auth, "content-type": "application/json"})
            assert resp.status_code == 400, (body["inputs"][0]["shape"][:3], resp.status_code, resp.text)
            assert "shape" in resp.json()["error"]
        assert http.post(URL, json=oip_body(np.zeros((2, 64))), headers=auth).status_code == 200


def test_only_allow_listed_headers_reach_the_upstream(start_gateway: Any, add_client: Any, tmp_path: Any) -> None:
    from tests.utils.stack import start_server

    echo = start_server("tests.utils.upstreams:create_echo_app", {}, tmp_path, "echo")
    try:
        gw = start_gateway(
            MODELCUSTODY_GATEWAY_UPSTREAM_URL=echo.url, MODELCUSTODY_GATEWAY_FORWARD_EXTRA_HEADERS='["x-tenant"]'
        )
        key = add_client("forger")
        resp = httpx.post(
            gw.url + "/v2/models/m/infer",
            content=orjson.dumps(oip_body(np.zeros((1, 4)))),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Connection": "keep-alive, X-Secret-Hop, X-Tenant",
                "X-Secret-Hop": "hop",
                "X-Tenant": "t1",
                "Forwarded": "for=10.0.0.1;by=admin",
                "X-Forwarded-For": "10.0.0.1",
                "X-Forwarded-Host": "internal.example",
                "X-Real-IP": "10.0.0.1",
                "Cookie": "session=abc",
                "X-Custom": "dropped",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
        assert resp.status_code == 200, resp.text
        seen = resp.json()["received_headers"]
        for name in ("x-secret-hop", "x-tenant", "forwarded", "x-forwarded-host", "x-real-ip", "cookie", "x-custom",
                     "authorization"):
            assert name not in seen, (name, seen)
        assert seen["x-forwarded-for"] == "127.0.0.1"  # the peer the gateway saw, never the client's claim
        assert seen["content-type"] == "application/json"
        assert seen["traceparent"].startswith("00-0af7")
        # Allow-listed and not named by Connection: forwarded.
        plain = httpx.post(gw.url + "/v2/models/m/infer", json=oip_body(np.zeros((1, 4))),
                           headers={"X-API-Key": key, "X-Tenant": "t2"})
        assert plain.json()["received_headers"]["x-tenant"] == "t2"
    finally:
        echo.stop()


def _raw_request(port: int, head: bytes, timeout_s: float) -> bytes:
    """Send only the request head (the promised body never comes) and return what the gateway answers."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head)
        try:
            while b"}" not in answer:  # the JSON error body; head and body may come in separate segments
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
    return answer


def test_the_api_key_is_checked_before_the_body_is_read(
    start_gateway: Any, add_client: Any, redis_client: redis.Redis
) -> None:
    gw = start_gateway()
    key = add_client("reader")
    base = (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
    )
    for auth, reason in (("", b"missing API key"), ("X-API-Key: not-a-key\r\n", b"unknown or revoked")):
        answer = _raw_request(gw.port, (base + auth + "\r\n").encode(), timeout_s=3.0)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert reason in answer
    # With a valid key the gateway does wait for the body (nothing answered within the timeout).
    assert _raw_request(gw.port, (base + f"X-API-Key: {key}\r\n\r\n").encode(), timeout_s=1.0) == b""
