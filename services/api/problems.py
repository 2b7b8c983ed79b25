"""RFC 9457 problem details: every error of the admin API is ``application/problem+json`` with a stable ``type``.

``type`` is a URN per kind of error (``urn:modelcustody:problem:<slug>``): stable, and resolvable to its
meaning in docs/operations.md ("Admin API errors") without pretending to be a web page we host. A client
branches on ``type``, shows ``detail`` to a person, and may read the extra members (``errors`` for a
validation failure). A route raises ``Problem(status, slug, detail)``; a plain ``HTTPException`` (raised by
shared helpers) gets the generic type of its status, and FastAPI's request validation gets
``validation-error`` with the field errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:modelcustody:problem:"

# The generic type of each status a route may raise without naming a more specific one.
GENERIC = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "too-many-requests",
    503: "unavailable",
}


T = TypeVar("T")


class ProblemDetail(BaseModel):
    """An RFC 9457 problem: what the admin API answers on every error."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None  # request validation: one entry per offending field


class Problem(HTTPException):
    """An error with its own problem type (a slug, documented in docs/operations.md)."""

    def __init__(self, status: int, slug: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers=headers)
        self.slug = slug


def found(value: T | None, what: str, ident: str) -> T:
    """``value``, or a 404 ``{what}-not-found`` problem ("no {what} '{ident}'") when it is None."""
    if value is None:
        raise Problem(404, f"{what.replace(' ', '-')}-not-found", f"no {what} '{ident}'")
    return value


def problem_response(
    request: Request, status: int, slug: str, detail: str, *,
    errors: list[dict[str, Any]] | None = None, headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ProblemDetail(type=TYPE_PREFIX + slug, title=HTTPStatus(status).phrase, status=status, detail=detail,
                         instance=request.url.path, errors=errors)
    return JSONResponse(jsonable_encoder(body.model_dump(exclude_none=True)), status_code=status,
                        media_type=MEDIA_TYPE, headers=dict(headers) if headers else None)


def _detail_text(detail: Any) -> tuple[str, list[dict[str, Any]] | None]:
    if isinstance(detail, str):
        return detail, None
    if isinstance(detail, list):  # a pydantic error list raised by a route that validates a body itself
        return "the request is invalid", [dict(e) for e in detail]
    return str(detail), None


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = getattr(exc, "slug", None) or GENERIC.get(exc.status_code, "error")
    detail, errors = _detail_text(exc.detail)
    return problem_response(request, exc.status_code, slug, detail, errors=errors, headers=exc.headers)


async def _validation_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    first = errors[0] if errors else {"loc": (), "msg": "invalid"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return problem_response(request, 422, "validation-error", f"{where}: {first.get('msg')}", errors=errors)


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_exception)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with what the handlers above really answer: problem+json on 422 (not FastAPI's
    ``HTTPValidationError``), and 401/403 on every operation that declares the bearer scheme."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                       license_info=app.license_info)
    spec.setdefault("components", {}).setdefault("schemas", {})["ProblemDetail"] = ProblemDetail.model_json_schema()
    ref = {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "invalid request", "content": {MEDIA_TYPE: ref}}
            if op.get("security"):
                responses.setdefault("401", {"description": "missing or unknown token", "content": {MEDIA_TYPE: ref}})
                responses.setdefault("403", {"description": "the token's scope does not allow this",
                                             "content": {MEDIA_TYPE: ref}})
    for name in ("HTTPValidationError", "ValidationError"):
        spec["components"]["schemas"].pop(name, None)
    app.openapi_schema = spec
    return spec


# The error responses every authenticated route documents in the OpenAPI description.
PROBLEM_CONTENT = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ProblemDetail, "description": "missing or unknown token", "content": PROBLEM_CONTENT},
    403: {"model": ProblemDetail, "description": "the token's scope does not allow this", "content": PROBLEM_CONTENT},
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route: the auth errors plus ``statuses``, all problem+json."""
    out = dict(AUTH_ERRORS)
    for status in statuses:
        out[status] = {"model": ProblemDetail, "description": HTTPStatus(status).phrase, "content": PROBLEM_CONTENT}
    return out
