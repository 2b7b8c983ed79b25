"""A small model server of our own: scikit-learn digits classifiers over OIP v2 and KServe v1.

It answers with class probabilities (``predict_proba``), which is what makes extraction cheap and
what the gateway's output policies act on. It is the demo's and the benchmark's upstream; the
integration tests also run MLServer, a server nobody here wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sklearn.pipeline import Pipeline

from services.demo.model_server.models import MODEL_KINDS, digits_split, train_model


class _Refused(Exception):
    """A request answered with an error (404 unknown model, 400 unreadable body) as ``{"error": ...}``."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def create_app(model_names: tuple[str, ...] = tuple(MODEL_KINDS), seed: int = 0) -> FastAPI:
    models: dict[str, Pipeline] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        split = digits_split(seed)
        for name in model_names:
            models[name] = train_model(MODEL_KINDS[name], split, seed)
        yield

    app = FastAPI(title="Model Custody demo model server", lifespan=lifespan)

    def _model(name: str) -> Pipeline:
        model = models.get(name)
        if model is None:
            raise _Refused(404, f"model '{name}' not found")
        return model

    def _rows(data: Any, shape: list[int] | None = None) -> np.ndarray:
        x = np.asarray(data, dtype=np.float64)
        if shape is not None:
            x = x.reshape(shape)
        return x.reshape(x.shape[0], -1) if x.ndim > 1 else x[None, :]

    async def _read(request: Request, rows_of: Callable[[Any], np.ndarray]) -> tuple[Any, np.ndarray]:
        """The JSON body and its rows, or a 400 naming what was wrong with them."""
        try:
            body = orjson.loads(await request.body())
            return body, rows_of(body)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise _Refused(400, f"bad request: {exc}") from exc

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def health() -> Response:
        return _json({"live": True, "ready": bool(models)})

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> Response:
        _model(name)  # 404 for a model this server does not hold
        return _json(
            {
                "name": name,
                "platform": "sklearn",
                "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 64]}],
                "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]}],
            }
        )

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        model = _model(name)
        body, x = await _read(request, lambda b: _rows(b["inputs"][0]["data"], b["inputs"][0].get("shape")))
        proba = model.predict_proba(x)
        return _json(
            {
                "model_name": name,
                "id": body.get("id", ""),
                "outputs": [
                    {"name": "predict_proba", "shape": list(proba.shape), "datatype": "FP64", "data": proba.reshape(-1)}
                ],
            }
        )

    @app.post("/v1/models/{name}:predict")
    async def predict_v1(name: str, request: Request) -> Response:
        model = _model(name)
        _, x = await _read(request, lambda b: _rows(b["instances"]))
        return _json({"predictions": model.predict_proba(x)})

    @app.post("/predict")
    async def predict_generic(request: Request) -> Response:
        """Generic JSON: {"inputs": rows} → {"outputs": probabilities} with the first model."""
        model = next(iter(models.values()))
        _, x = await _read(request, lambda b: _rows(b["inputs"]))
        return _json({"outputs": model.predict_proba(x)})

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Response:
        return _json({"error": exc.error}, exc.status)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 400)

    return app
