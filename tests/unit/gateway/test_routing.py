"""Routing: the upstream path is written from the parsed route; paths that could route elsewhere are refused."""

from __future__ import annotations

import numpy as np
import pytest

from services.core import protocols
from services.gateway.routing import BadPath, Route, route


@pytest.mark.parametrize(
    "method, path, expected",
    [
        ("POST", "/v2/models/digits-mlp/infer", Route("oip-v2", "digits-mlp", "/v2/models/digits-mlp/infer")),
        ("POST", "/v2/models/m/versions/2/infer", Route("oip-v2", "m", "/v2/models/m/versions/2/infer")),
        ("POST", "/v1/models/m.v1:predict", Route("kserve-v1", "m.v1", "/v1/models/m.v1:predict")),
        ("POST", "/predict", Route("generic", "default", "/predict")),
        ("GET", "/v2/models/m", Route("passthrough", "m", "/v2/models/m")),
        ("GET", "/v2/models/m/ready", Route("passthrough", "m", "/v2/models/m/ready")),
        ("GET", "/v2/health/ready", Route("passthrough-public", "", "/v2/health/ready")),
        ("GET", "/metrics", Route("metrics")),
        ("GET", "/v2/models/m/infer", None),
        ("PUT", "/v2/models/m/infer", None),
    ],
)
def test_routes(method: str, path: str, expected: Route | None) -> None:
    assert route(method, path, path.encode(), "/predict") == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"/v2/models/a/../b/infer", "dot segment"),
        (b"/v2/models/./b/infer", "dot segment"),
        (b"/v2/models/a%2F..%2Fb/infer", "percent-encoded"),
        (b"/v2/models/a%2e%2e/infer", "percent-encoded"),
        (b"/v2/models/a%5Cb/infer", "percent-encoded"),
        (b"/v2/models/a\\b/infer", "backslash"),
        (b"/v2//models/b/infer", "empty segment"),
        (b"/v2/health/live/../../models/b", "dot segment"),
    ],
)
def test_unsafe_paths_are_refused(raw: bytes, reason: str) -> None:
    method = "GET" if b"health" in raw else "POST"
    with pytest.raises(BadPath, match=reason):
        route(method, raw.decode("latin-1"), raw, "/predict")


@pytest.mark.parametrize("name", [".hidden", "a b", "x" * 129, "é"])
def test_model_names_must_be_plain(name: str) -> None:
    with pytest.raises(BadPath, match="model name"):
        route("POST", f"/v2/models/{name}/infer", f"/v2/models/{name}/infer".encode(), "/predict")


def test_float32_range_and_declared_ranges() -> None:
    with pytest.raises(protocols.BadRequest, match="float32"):
        protocols.kserve_rows({"instances": [[1.0, 3.5e38]]}, None)
    assert protocols.kserve_rows({"instances": [[1.0, 3.4e38]]}, None).shape == (1, 2)
    rows = np.array([[0.0, 16.0], [3.0, 4.0]])
    protocols.check_range(rows, 0.0, 16.0, "m")
    with pytest.raises(protocols.BadRequest, match=r"\[0, 16\]; got -1"):
        protocols.check_range(rows - 1.0, 0.0, 16.0, "m")
