"""Hostile model uploads through a real admin API (uvicorn over loopback, real Redis, Celery client only).

Every crafted file gets 422 with a reason, the API's own memory stays flat (the loader runs in a limited
child), refused files are removed, and a refused re-upload of bytes an earlier audit uses keeps that file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.core.protected import ProtectedIndex, ProtectedRecord
from tests.utils import hostile_models
from tests.utils.stack import Server, start_server

TOKEN = "upload-test-token-0123456789"


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


@pytest.fixture()
def api(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[tuple[Server, Path]]:
    ProtectedIndex(redis_client).create(
        ProtectedRecord(id="pm_test", name="owner", spec={"files": {}}, status="ready", methods=["watermark"])
    )
    data = tmp_path / "data"
    env = {
        "MODELCUSTODY_ENV": "test",
        "MODELCUSTODY_REDIS_URL": redis_url,
        "MODELCUSTODY_DATA_DIR": str(data),
        "MODELCUSTODY_ADMIN_TOKEN": TOKEN,
    }
    server = start_server("services.api.main:create_app", env, tmp_path / "logs", "api")
    yield server, data / "uploads"
    server.stop()


def submit(http: httpx.Client, content: bytes, fmt: str, **fields: str) -> httpx.Response:
    return http.post(
        "/v1/audits",
        data={"method": "watermark", "protected_model": "pm_test", "format": fmt, **fields},
        files={"file": ("model", content, "application/octet-stream")},
    )


CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("safetensors", hostile_models.safetensors_asking_for_a_huge_architecture, "parameters"),
    ("safetensors", hostile_models.safetensors_with_a_nested_header, "nested too deeply"),
    ("onnx", hostile_models.onnx_constant_of_shape, "elements"),
]  # the skops zip bomb takes the same path (tests/unit/audit/test_suspects_hostile.py); its imports are slow


def test_hostile_uploads_get_422_and_leave_the_api_flat(api: tuple[Server, Path]) -> None:
    server, uploads = api
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        # Warm-up: the API imports its audit modules (parameter checks, format names) on first use.
        assert submit(http, b"not a model", "onnx").status_code == 422
        before = peak_rss_mib(server.process.pid)
        for fmt, make, reason in CASES:
            resp = submit(http, make(), fmt)
            assert resp.status_code == 422, (make.__name__, resp.status_code, resp.text)
            assert reason in resp.json()["detail"], resp.text
        grown = peak_rss_mib(server.process.pid) - before
    # The files asked for 256-600 MiB each; the API only received and hashed a few hundred KiB.
    assert grown < 64, f"the API's peak RSS grew by {grown:.0f} MiB"
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []  # refused files are not kept


def test_a_refused_reupload_keeps_the_file_an_audit_uses(api: tuple[Server, Path], tmp_path: Path) -> None:
    import torch

    from audit.architectures import build_model, save_model

    server, uploads = api
    config = {"input_dim": 4, "hidden": [3], "num_classes": 2}
    torch.manual_seed(0)
    path = save_model(tmp_path / "suspect.safetensors", build_model("mlp", config), "mlp", config)
    content = path.read_bytes()
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        first = submit(http, content, "safetensors")
        assert first.status_code == 202, first.text
        stored = [p for p in uploads.iterdir() if not p.name.startswith(".")]
        assert len(stored) == 1
        # The same bytes declared as another format: refused, and the shared file stays for the first audit.
        wrong = submit(http, content, "onnx")
        assert wrong.status_code == 422, wrong.text
        assert stored[0].exists() and stored[0].read_bytes() == content
