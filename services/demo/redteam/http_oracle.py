"""An oracle that really queries the model through the gateway over HTTP (OIP v2 or KServe v1).

The red-team clients hold no HTTP code; the benchmark and the demo wrap the gateway in this callable.
A refusal (401/403/429: the detector tightened or blocked the client) raises ``OracleRefused`` so the
attack stops the way a real attacker's script would.
"""

from __future__ import annotations

from typing import Literal

import httpx
import numpy as np
import orjson

from services.core.protocols import encode_request, request_path


class OracleRefused(RuntimeError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"gateway refused the query ({status}): {reason}")
        self.status = status
        self.reason = reason


class GatewayOracle:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        model: str = "digits-mlp",
        protocol: Literal["oip-v2", "kserve-v1"] = "oip-v2",
        max_batch: int = 256,
        timeout_s: float = 30.0,
        outputs: tuple[str, ...] = (),  # OIP v2 outputs to ask for, e.g. MLServer's ("predict_proba",)
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.protocol = protocol
        self.outputs = outputs
        self.max_batch = max_batch
        self.http = httpx.Client(
            base_url=base_url,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        self.rows_sent = 0

    def close(self) -> None:
        self.http.close()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        parts = [self._one(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(parts, axis=0)

    def _one(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        body = encode_request(self.protocol, x)
        if self.outputs:
            body["outputs"] = [{"name": name} for name in self.outputs]
        resp = self.http.post(request_path(self.protocol, self.model), content=orjson.dumps(body))
        if resp.status_code != 200:
            try:
                reason = str(resp.json().get("error", resp.text))
            except ValueError:
                reason = resp.text
            raise OracleRefused(resp.status_code, reason)
        self.rows_sent += n
        answer = resp.json()
        if self.protocol == "oip-v2":
            tensor = answer["outputs"][0]
            out = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        else:
            out = np.asarray(answer["predictions"], dtype=np.float64)
        if out.ndim == 2 and out.shape[1] == 1:  # a label-only policy answers one class index per row
            return out[:, 0].astype(np.int64)
        return out
