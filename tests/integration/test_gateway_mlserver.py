"""The gateway in front of MLServer, an OIP v2 server nobody here wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from sklearn.datasets import load_digits

from services.core.records import QueryRecord
from services.demo.processes import ManagedProcess, free_port, wait_for_port
from tests.utils.mlserver import mlserver_venv, write_model_repo
from tests.utils.stack import oip_body


def test_gateway_fronts_mlserver_over_oip_v2(
    tmp_path: Path, start_gateway: Any, add_client: Any, redis_client: redis.Redis
) -> None:
    venv = mlserver_venv()
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    write_model_repo(venv, tmp_path / "models", http_port, grpc_port, metrics_port)
    mlserver = ManagedProcess(
        [str(venv / "bin" / "mlserver"), "start", str(tmp_path / "models")],
        log_path=tmp_path / "mlserver.log",
        env={"PYTHONPATH": ""},
    )
    try:
        wait_for_port(http_port, 120, mlserver.proc)
        upstream = f"http://127.0.0.1:{http_port}"
        for _ in range(100):  # the port opens before the model is loaded
            if httpx.get(upstream + "/v2/models/digits/ready").status_code == 200:
                break
            import time

            time.sleep(0.2)
        gw = start_gateway(MODELCUSTODY_GATEWAY_UPSTREAM_URL=upstream)
        key = add_client("mlclient")
        h = {"X-API-Key": key}
        x = load_digits().data[1::2][:7]
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            assert http.get("/v2/health/ready").status_code == 200
            meta = http.get("/v2/models/digits", headers=h)
            assert meta.status_code == 200 and meta.json()["name"] == "digits"
            assert http.get("/v2/models/digits").status_code == 401
            labels = http.post("/v2/models/digits/infer", json=oip_body(x[:3]), headers=h)
            assert labels.status_code == 200, labels.text
            proba_req = oip_body(x[3:])
            proba_req["outputs"] = [{"name": "predict_proba"}]
            proba = http.post("/v2/models/digits/infer", json=proba_req, headers=h)
            assert proba.status_code == 200, proba.text
            bad = http.post("/v2/models/nope/infer", json=oip_body(x[:1]), headers=h)
            assert bad.status_code == 404  # MLServer's own answer passes through
        assert gw.stop() == 0
        records = [QueryRecord.from_stream_fields(f) for _, f in redis_client.xrange("mc:queries")]
        assert len(records) == 7
        assert [r.output_kind for r in records] == ["label"] * 3 + ["probabilities"] * 4
        assert [r.output for r in records[:3]] == [[float(v)] for v in labels.json()["outputs"][0]["data"]]
        p = np.asarray(proba.json()["outputs"][0]["data"]).reshape(4, 10)
        np.testing.assert_allclose([r.output for r in records[3:]], p)
        assert [r.input for r in records] == x.tolist()
    finally:
        mlserver.stop()
