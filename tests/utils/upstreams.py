"""Tiny real upstream servers for edge cases the demo model server does not produce (run by uvicorn)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def upstream_delay() -> None:
    """``UPSTREAM_DELAY_S`` delays every answer (timeouts, and audits slow enough to kill a worker mid-way)."""
    delay = float(os.environ.get("UPSTREAM_DELAY_S", "0"))
    if delay:
        await asyncio.sleep(delay)


def create_echo_app() -> Any:
    """Answers any POST with uniform probabilities and the request headers it received."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        await upstream_delay()
        req = orjson.loads(body) if body else {}
        n = req["inputs"][0]["shape"][0] if "inputs" in req else 1
        answer = {
            "outputs": [{"name": "p", "shape": [n, 2], "datatype": "FP64", "data": [0.5] * (2 * n)}],
            "received_headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        }
        payload = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"connection", b"keep-alive"),
                    (b"x-upstream", b"echo"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def create_model_app() -> Any:
    """A real OIP v2 model server for audit tests: the safetensors model at ``UPSTREAM_MODEL_PATH``."""
    import numpy as np

    from audit.architectures import load_model, predict_proba

    model, _, _ = load_model(os.environ["UPSTREAM_MODEL_PATH"])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        tensor = orjson.loads(await read_body(receive))["inputs"][0]
        await upstream_delay()
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        proba = predict_proba(model, x)
        answer = {
            "outputs": [
                {
                    "name": "probabilities",
                    "shape": list(proba.shape),
                    "datatype": "FP64",
                    "data": proba.ravel().tolist(),
                }
            ]
        }
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    return app


def create_softmax_app() -> Any:
    """A fast-starting OIP v2 classifier: softmax of a fixed seeded linear map of the input (``UPSTREAM_CLASSES``
    classes, default 10). For gateway tests that need real probabilities but not a trained model."""
    import numpy as np

    k = int(os.environ.get("UPSTREAM_CLASSES", "10"))
    weights: dict[int, np.ndarray] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        tensor = orjson.loads(await read_body(receive))["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        d = x.shape[1]
        if d not in weights:
            weights[d] = np.random.default_rng(d).normal(0.0, 1.0, (d, k))
        logits = (x / max(1.0, float(np.abs(x).max()))) @ weights[d] * 3.0
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        answer = {"outputs": [{"name": "probabilities", "shape": list(p.shape), "datatype": "FP64",
                               "data": p.ravel().tolist()}]}
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    return app
