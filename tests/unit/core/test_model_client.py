"""HTTP suspects against a real server over loopback: a tiny FastAPI model server run by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from audit.suspects.base import SuspectError
from services.core.egress import EgressPolicy
from services.core.model_client import HttpSuspect
from services.core.protocols import get_path, set_path

TOKEN = "test-token-not-a-secret"
W = np.random.default_rng(3).normal(size=(4, 3))
X = np.random.default_rng(4).normal(size=(25, 4)).astype(np.float32)


def _proba(x: np.ndarray) -> np.ndarray:
    z = x @ W
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


EXPECTED_PROBA = _proba(X.astype(np.float64))
EXPECTED_LABELS = EXPECTED_PROBA.argmax(axis=1)


class _State:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.flaky_calls = 0


def _app(state: _State) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": "unauthorised"}, 401)
        return await call_next(request)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> JSONResponse:
        body = await request.json()
        tensor = body["inputs"][0]
        assert tensor["datatype"] == "FP32"
        x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        state.batch_sizes.append(len(x))
        if name == "flaky":
            state.flaky_calls += 1
            if state.flaky_calls <= 2:
                return JSONResponse({"error": "warming up"}, 503)
        if name == "slow":
            await asyncio.sleep(2)
        if name == "broken":
            return JSONResponse({"error": "boom: internal detail"}, 500)
        if name == "huge":
            return JSONResponse({"outputs": [{"name": "p", "data": [0.5] * 100_000}]})
        if name == "trickle":
            async def drip() -> Any:
                for _ in range(20):
                    yield b" "
                    await asyncio.sleep(0.05)
                yield b"{}"

            return StreamingResponse(drip(), media_type="application/json")  # type: ignore[return-value]
        p = _proba(x)
        label = {"name": "label", "datatype": "INT64", "shape": [len(x)], "data": p.argmax(axis=1).tolist()}
        proba = {"name": "probabilities", "datatype": "FP32", "shape": list(p.shape), "data": p.reshape(-1).tolist()}
        text = {"name": "label_names", "datatype": "BYTES", "shape": [len(x)], "data": ["a"] * len(x)}
        outputs = {"labels": [label], "both": [text, label, proba]}.get(name, [proba])
        return JSONResponse({"model_name": name, "outputs": outputs})

    @app.post("/v1/models/{name}:predict")
    async def predict_v1(name: str, request: Request) -> JSONResponse:
        x = np.asarray((await request.json())["instances"], dtype=np.float64)
        p = _proba(x)
        return JSONResponse({"predictions": p.argmax(axis=1).tolist() if name == "labels" else p.tolist()})

    @app.post("/custom/score")
    async def generic(request: Request) -> JSONResponse:
        x = np.asarray((await request.json())["request"]["rows"], dtype=np.float64)
        return JSONResponse({"result": [{"scores": np.log(_proba(x)).tolist()}]})  # logits-like

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, _State]]:
    state = _State()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_app(state), log_level="warning", loop="asyncio", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", state
    srv.should_exit = True
    thread.join(10)
    sock.close()


def test_oip_v2_probabilities_batched(server: tuple[str, _State]) -> None:
    url, state = server
    state.batch_sizes.clear()
    with HttpSuspect(url, model="proba", token=TOKEN, batch_size=10, budget=100) as suspect:
        assert suspect.identity == {"kind": "endpoint", "url": url, "protocol": "oip-v2", "model": "proba"}
        assert TOKEN not in repr(suspect)
        np.testing.assert_array_equal(suspect.labels(X), EXPECTED_LABELS)
        assert suspect.has_probabilities  # learnt from the first answer (output="auto")
        proba = suspect.probabilities(X)
        assert proba is not None
        np.testing.assert_allclose(proba, EXPECTED_PROBA, rtol=1e-5, atol=1e-6)
        assert suspect.queries_used == 50
    assert state.batch_sizes == [10, 10, 5, 10, 10, 5]


def test_oip_v2_label_only_and_mixed_outputs(server: tuple[str, _State]) -> None:
    url, _ = server
    with HttpSuspect(url, model="labels", token=TOKEN) as suspect:
        np.testing.assert_array_equal(suspect.labels(X), EXPECTED_LABELS)
        assert not suspect.has_probabilities
        assert suspect.probabilities(X) is None
    with HttpSuspect(url, model="both", token=TOKEN, output="probabilities") as suspect:
        proba = suspect.probabilities(X)
        assert proba is not None
        np.testing.assert_allclose(proba, EXPECTED_PROBA, rtol=1e-5, atol=1e-6)
    with HttpSuspect(url, model="both", token=TOKEN, output_name="label", output="labels") as suspect:
        np.testing.assert_array_equal(suspect.labels(X), EXPECTED_LABELS)
        assert suspect.probabilities(X) is None


def test_kserve_v1_and_generic_json(server: tuple[str, _State]) -> None:
    url, _ = server
    with HttpSuspect(url, protocol="kserve-v1", model="m", token=TOKEN, output="probabilities") as suspect:
        proba = suspect.probabilities(X)
        assert proba is not None
        np.testing.assert_allclose(proba, EXPECTED_PROBA, rtol=1e-5, atol=1e-6)
    with HttpSuspect(url, protocol="kserve-v1", model="labels", token=TOKEN) as suspect:
        np.testing.assert_array_equal(suspect.labels(X), EXPECTED_LABELS)
    generic = HttpSuspect(
        f"{url}/custom/score",
        protocol="generic",
        token=TOKEN,
        input_path="request.rows",
        output_path="result.0.scores",
        output="probabilities",
    )
    with generic:
        proba = generic.probabilities(X)
        assert proba is not None  # log-probabilities read as logits: softmax gives the probabilities back
        np.testing.assert_allclose(proba, EXPECTED_PROBA, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(generic.labels(X), EXPECTED_LABELS)


def test_failures_are_suspect_errors(server: tuple[str, _State]) -> None:
    url, state = server
    with HttpSuspect(url, model="proba", token="wrong") as suspect, pytest.raises(SuspectError, match="401"):
        suspect.labels(X)
    with HttpSuspect(url, model="broken", token=TOKEN) as suspect, pytest.raises(SuspectError, match="500") as err:
        suspect.labels(X)
    assert "boom" not in str(err.value)  # an error body is never echoed into the audit's error
    slow = HttpSuspect(url, model="slow", token=TOKEN, read_timeout_s=0.3)
    with slow, pytest.raises(SuspectError, match="ReadTimeout"):
        slow.labels(X)
    state.flaky_calls = 0
    with HttpSuspect(url, model="flaky", token=TOKEN, retries=3, backoff_s=0.01) as suspect:
        np.testing.assert_array_equal(suspect.labels(X), EXPECTED_LABELS)  # two 503s, then an answer
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refuses connections
        with HttpSuspect(dead, model="m", retries=2, backoff_s=0.01) as suspect:
            with pytest.raises(SuspectError, match="unreachable after 3 attempts"):
                suspect.labels(X)


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError):
        HttpSuspect("ftp://x", model="m")
    with pytest.raises(ValueError):
        HttpSuspect("http://x", protocol="oip-v2")  # no model name
    with pytest.raises(ValueError):
        HttpSuspect("http://x", model="m", batch_size=0)
    assert set_path({}, "a.b", 1) == {"a": {"b": 1}}
    assert get_path({"a": [{"b": 2}]}, "a.0.b") == 2
    assert set_path({"a": [0, 1]}, "a.1", 5) == {"a": [0, 5]}
    with pytest.raises(KeyError):
        get_path({"a": []}, "a.0")
    with pytest.raises(ValueError, match="malformed"):
        get_path({"a": 1}, "a..b")


def test_egress_policy_caps_and_deadline(server: tuple[str, _State]) -> None:
    url, state = server
    state.batch_sizes.clear()
    # Loopback is internal: refused as in env=prod, before any request is sent.
    strict = HttpSuspect(url, model="proba", token=TOKEN, egress=EgressPolicy(()))
    with strict, pytest.raises(SuspectError, match="loopback"):
        strict.labels(X)
    with pytest.raises(ValueError, match="loopback"):
        strict.check_destination()
    assert state.batch_sizes == []
    capped = HttpSuspect(url, model="huge", token=TOKEN, max_response_bytes=10_000)
    with capped, pytest.raises(SuspectError, match="10000-byte cap|more than 10000 bytes"):
        capped.labels(X)
    # Each chunk arrives well within the read timeout; the total deadline still ends the request.
    slow = HttpSuspect(url, model="trickle", token=TOKEN, read_timeout_s=5, total_timeout_s=0.3)
    with slow, pytest.raises(SuspectError, match="longer than 0.3 s"):
        slow.labels(X)
