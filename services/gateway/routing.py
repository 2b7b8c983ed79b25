"""Which route a request takes, and the upstream path it is forwarded to: built from the parsed route.

The model the gateway logs must be the model the upstream serves. Forwarding the client's raw path let the
two differ: ``/v2/models/unwatched/../digits-mlp/infer`` was logged as model ``unwatched`` (no detector
baseline, so never analysed) while the HTTP client resolved the dot segment and the upstream answered
``digits-mlp``; ``GET /v2/health/live/../../models/x`` reached an authenticated route without a key. So:

- a path under ``/v1/`` or ``/v2/`` with a dot segment (``.``, ``..``), an empty segment (``//``), a
  backslash, or a percent-encoded slash, backslash or dot is refused (400) before routing;
- model names and versions must be plain names (letters, digits, ``_``, ``.``, ``-``, not starting with a
  dot), and the upstream path is written from them, never copied from the request.

Pure functions, no I/O: the gateway's ASGI entry calls ``route`` once per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

RouteKind = Literal["oip-v2", "kserve-v1", "generic", "metrics", "healthz", "passthrough", "passthrough-public"]

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"  # 128 characters: longer than any serving runtime allows
_NAME_RE = re.compile(_NAME)
_OIP_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_KSERVE_PREDICT = re.compile(r"/v1/models/([^/]+):predict")
_OIP_META = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready)?")
_HEALTH = frozenset({"/v2", "/v2/health/live", "/v2/health/ready"})
# Percent-encodings that would turn into path structure once the upstream decodes them.
_ENCODED = re.compile(rb"%(2f|5c|2e)", re.IGNORECASE)


class BadPath(ValueError):
    """The request path can never be routed safely; the message is returned with a 400."""


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    model: str = ""
    upstream_path: str = ""  # what is appended to the upstream URL


def unsafe_path_reason(raw_path: bytes) -> str | None:
    """Why a raw (still percent-encoded) path is refused, or None."""
    if b"\\" in raw_path:
        return "a backslash"
    if _ENCODED.search(raw_path):
        return "a percent-encoded slash, backslash or dot"
    if b"//" in raw_path:
        return "an empty segment ('//')"
    if any(seg in (b".", b"..") for seg in raw_path.split(b"/")):
        return "a dot segment ('.' or '..')"
    return None


def _name(value: str, what: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise BadPath(f"{what} must be 1-128 letters, digits, '_', '.', '-', not starting with '.'; got {value!r}")
    return value


def _oip_path(model: str, version: str | None, tail: str) -> str:
    base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    return base + tail


def route(method: str, path: str, raw_path: bytes | None, generic_route: str) -> Route | None:
    """The route of a request (None: no route, 404); ``BadPath`` for a path that is refused (400).

    ``path`` is the decoded path, ``raw_path`` the bytes as sent (ASGI's ``raw_path``).
    """
    if path.startswith(("/v1/", "/v2/")) or path == "/v2":
        reason = unsafe_path_reason(raw_path if raw_path is not None else path.encode("utf-8"))
        if reason is not None:
            raise BadPath(f"path refused: it contains {reason}")
    if method == "POST":
        if m := _OIP_INFER.fullmatch(path):
            model = _name(m.group(1), "model name")
            version = _name(m.group(2), "model version") if m.group(2) else None
            return Route("oip-v2", model, _oip_path(model, version, "/infer"))
        if m := _KSERVE_PREDICT.fullmatch(path):
            model = _name(m.group(1), "model name")
            return Route("kserve-v1", model, f"/v1/models/{model}:predict")
        if path == generic_route:
            return Route("generic", "default", generic_route)
        if path.startswith(("/v2/models/", "/v1/models/")):
            raise BadPath(f"no inference route {path!r}: use /v2/models/<name>/infer or /v1/models/<name>:predict")
        return None
    if method == "GET":
        if path == "/metrics":
            return Route("metrics")
        if path == "/healthz":
            return Route("healthz")
        if path in _HEALTH:
            return Route("passthrough-public", "", path)
        if m := _OIP_META.fullmatch(path):
            model = _name(m.group(1), "model name")
            version = _name(m.group(2), "model version") if m.group(2) else None
            return Route("passthrough", model, _oip_path(model, version, m.group(3) or ""))
    return None
