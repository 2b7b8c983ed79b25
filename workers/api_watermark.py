"""What an ``api_watermark`` audit needs from the deployment, gathered on the worker.

- the deployment's answer-watermark key (``Settings.answer_watermark_key``: the same secret as the gateways),
  with the gateways' amplitude, frequency and label share, for the input width and number of classes;
- the suspected clients' rows from the query log (Redis stream ``mc:queries``), read in pages and filtered by
  client, bounded by ``MAX_LOG_ROWS`` per audit;
- the registration's reference inputs and the protected model itself (the baseline of the probability test).

The stream is trimmed by its operator's retention; rows older than what it holds are not read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import redis

from audit.api_watermark import LoggedAnswers
from audit.protected import ProtectedModel, load_reference_data, open_model
from audit.suspects.base import Suspect
from services.core.model_client import HttpSuspect
from services.core.records import QueryRecord
from services.core.settings import Settings

# 200,000 rows of one audit's suspected clients: a month of a busy thief at the detector's tightened quota
# (1,000/day) many times over, and ~200 MB of 64-feature rows at most.
MAX_LOG_ROWS = 200_000
PAGE = 5_000  # stream entries per XRANGE call


def read_logged_answers(r: redis.Redis, stream: str, clients: list[str], max_rows: int = MAX_LOG_ROWS) -> LoggedAnswers:
    wanted = set(clients)
    inputs: list[list[float]] = []
    outputs: list[Any] = []
    tags: list[str] = []
    start = "-"
    while len(tags) < max_rows:
        page = r.xrange(stream, min=start, max="+", count=PAGE)
        if not page:
            break
        for _, fields in page:
            try:
                rec = QueryRecord.from_stream_fields(fields)  # type: ignore[arg-type]
            except (ValueError, TypeError):
                continue  # a record this version cannot read is not evidence
            if rec.client_id in wanted and rec.status == 200 and rec.output is not None:
                inputs.append(rec.input)
                outputs.append(rec.output)
                tags.append(rec.watermark)
        last = page[-1][0]
        last_s = last.decode() if isinstance(last, bytes) else str(last)
        start = "(" + last_s
        if len(page) < PAGE:
            break
    widths = {len(row) for row in inputs}
    if len(widths) > 1:  # several models behind one gateway: keep the most common width
        common = max(widths, key=[len(row) for row in inputs].count)
        keep = [i for i, row in enumerate(inputs) if len(row) == common]
        inputs, outputs, tags = [inputs[i] for i in keep], [outputs[i] for i in keep], [tags[i] for i in keep]
    x = np.asarray(inputs, dtype=np.float64) if inputs else np.zeros((0, 0))
    return LoggedAnswers(inputs=x, outputs=outputs, tags=tags, clients=sorted(wanted))


def _owner(protected: ProtectedModel) -> Suspect | None:
    model = protected.record.get("model") or {}
    try:
        if model.get("kind") == "file":
            fmt = model["format"]
            return open_model(
                model_path=protected.directory / "inputs" / f"model.{fmt}",
                model_format=fmt,
                architecture=model.get("architecture"),
                config=model.get("config"),
                endpoint=None,
            )
        if model.get("kind") == "endpoint":
            options = {k: v for k, v in model.items() if k in ("url", "protocol", "model", "output", "batch_size")}
            return HttpSuspect(**options)
    except (ValueError, OSError, KeyError):
        return None
    return None


def api_watermark_context(settings: Settings, protected: ProtectedModel, params: Mapping[str, Any]) -> dict[str, Any]:
    from audit.api_watermark import validate_params

    params = validate_params(params)
    logged = None
    if params["clients"] and params["probes"] == "auto":
        r = redis.Redis.from_url(settings.redis_url)
        try:
            logged = read_logged_answers(r, settings.queries_stream, params["clients"])
        finally:
            r.close()
    reference = None
    ref_path = protected.directory / "inputs" / "reference.npz"
    y_ref = None
    if ref_path.exists():
        reference, y_ref = load_reference_data(ref_path)
    dim = logged.inputs.shape[1] if logged is not None and len(logged.tags) else None
    if dim is None and reference is not None:
        dim = reference.shape[1]
    if dim is None:
        raise ValueError(
            "api_watermark needs logged answers of the suspected clients or the registration's reference data"
        )
    n_classes = settings.answer_watermark_n_classes
    if logged is not None:
        widths = {len(o) for o, t in zip(logged.outputs, logged.tags, strict=True) if t == "probabilities" and o}
        if widths:
            n_classes = max(widths)
    if n_classes is None and y_ref is not None:
        n_classes = int(y_ref.max()) + 1
    if n_classes is None:
        raise ValueError("the number of classes is unknown: set MODELCUSTODY_ANSWER_WATERMARK_N_CLASSES")
    mark = settings.answer_watermark(n_classes, dim)
    if logged is not None and len(logged.tags) and logged.inputs.shape[1] != dim:
        logged = None
    return {"mark": mark, "logged": logged, "reference": reference, "owner": _owner(protected)}
