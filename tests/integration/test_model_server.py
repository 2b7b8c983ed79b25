"""The demo model server over real HTTP: answers on each protocol, 404 for an unknown model, 400 for a body
it cannot read (``{"error": ...}`` in every case)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.utils.stack import Server, oip_body

ROW = np.full((1, 64), 4.0)


def test_each_protocol_answers_probabilities(model_server: Server) -> None:
    oip = httpx.post(model_server.url + "/v2/models/digits-mlp/infer", json={**oip_body(ROW), "id": "r1"}, timeout=10)
    assert oip.status_code == 200 and oip.json()["id"] == "r1"
    (output,) = oip.json()["outputs"]
    assert output["shape"] == [1, 10] and abs(sum(output["data"]) - 1.0) < 1e-9
    v1 = httpx.post(model_server.url + "/v1/models/digits-mlp:predict", json={"instances": ROW.tolist()}, timeout=10)
    generic = httpx.post(model_server.url + "/predict", json={"inputs": ROW.tolist()}, timeout=10)
    assert v1.status_code == 200 and generic.status_code == 200
    assert np.allclose(v1.json()["predictions"], generic.json()["outputs"])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v2/models/no-such-model", None),
        ("POST", "/v2/models/no-such-model/infer", oip_body(ROW)),
        ("POST", "/v1/models/no-such-model:predict", {"instances": ROW.tolist()}),
    ],
)
def test_an_unknown_model_is_404(model_server: Server, method: str, path: str, body: object) -> None:
    answer = httpx.request(method, model_server.url + path, json=body, timeout=10)
    assert answer.status_code == 404 and answer.json() == {"error": "model 'no-such-model' not found"}


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v2/models/digits-mlp/infer", b"{not json"),
        ("/v2/models/digits-mlp/infer", b'{"inputs": []}'),
        ("/v2/models/digits-mlp/infer", b'{"inputs": [{"data": [1, 2, 3], "shape": [2, 2]}]}'),
        ("/v1/models/digits-mlp:predict", b'{"rows": [[1.0]]}'),
        ("/predict", b'{"inputs": [["a"]]}'),
    ],
)
def test_an_unreadable_body_is_400(model_server: Server, path: str, content: bytes) -> None:
    answer = httpx.post(model_server.url + path, content=content, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"].startswith("bad request: ")
