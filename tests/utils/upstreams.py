"""Tiny real upstream servers for edge cases the demo model server does not produce (run by uvicorn)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson


def create_echo_app() -> Any:
    """Answers any POST with uniform probabilities and the request headers it received."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        delay = float(os.environ.get("UPSTREAM_DELAY_S", "0"))
        if delay:
            await asyncio.sleep(delay)
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
