"""Alerts: list (filters, cursor pagination, newest first), get, acknowledge, resolve.

The cursor is opaque to clients: base64url of ``[opened_at, id]`` of the last alert returned. A page
continues strictly after it in the index's order (opened_at, then id, descending), so alerts opened
while an operator pages through do not shift or repeat the pages they already saw.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query

from services.api.deps import OperatorDep, ReaderDep, RedisDep, SettingsDep
from services.api.problems import Problem, errors, found
from services.api.schemas import Alert, AlertAction, AlertPage
from services.core import keys
from services.core.alerts import Alert as AlertRecord
from services.core.alerts import AlertStore

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])
INDEX = keys.ALERTS_INDEX
SCAN_CHUNK = 200  # index entries read per round trip while filtering: one MGET of a few hundred kB at most


def _store(r: Any, settings: Any) -> AlertStore:
    return AlertStore(r, stream=settings.alerts_stream)


def encode_cursor(opened_at: float, alert_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([opened_at, alert_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        score, alert_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(score), str(alert_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise Problem(422, "invalid-cursor", "cursor is not one this API returned") from None


def _page(r: Any, *, after: tuple[float, str] | None, limit: int,
          status: str | None, client_id: str | None, severity: str | None,
          kind: str | None = None) -> tuple[list[AlertRecord], bool]:
    out: list[AlertRecord] = []
    offset = 0
    top: Any = "+inf" if after is None else after[0]
    while True:
        entries: Any = r.zrevrangebyscore(INDEX, top, "-inf", start=offset, num=SCAN_CHUNK, withscores=True)
        if not entries:
            return out, False
        offset += len(entries)
        ids = [(score, raw_id.decode()) for raw_id, score in entries]
        if after is not None:
            ids = [(s, i) for s, i in ids if (s, i) < after]
        raws: Any = r.mget([keys.alert(i) for _, i in ids]) if ids else []
        for raw in raws:
            if raw is None:
                continue
            alert = AlertRecord.from_json(raw)
            if status and alert.status != status or client_id and alert.client_id != client_id:
                continue
            if severity and alert.severity != severity or kind and alert.kind != kind:
                continue
            if len(out) == limit:
                return out, True
            out.append(alert)


@router.get("", response_model=AlertPage, responses=errors(422))
def list_alerts(
    r: RedisDep,
    _: ReaderDep,
    status: Literal["open", "acknowledged", "resolved"] | None = None,
    client_id: str | None = None,
    severity: Literal["medium", "high"] | None = None,
    kind: Literal["client", "group"] | None = Query(None, description="group: colluding-keys alerts"),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> AlertPage:
    """Alerts, newest first, one page at a time."""
    after = decode_cursor(cursor) if cursor else None
    items, more = _page(
        r, after=after, limit=limit, status=status, client_id=client_id, severity=severity, kind=kind
    )
    next_cursor = encode_cursor(items[-1].opened_at, items[-1].id) if more and items else None
    return AlertPage(items=[Alert(**a.__dict__) for a in items], next_cursor=next_cursor)


@router.get("/{alert_id}", response_model=Alert, responses=errors(404))
def read_alert(alert_id: str, r: RedisDep, settings: SettingsDep, _: ReaderDep) -> Alert:
    return Alert(**found(_store(r, settings).get(alert_id), "alert", alert_id).__dict__)


def _transition(alert_id: str, to: Any, actor: str, body: AlertAction | None, r: Any, settings: Any) -> Alert:
    note = body.note if body else ""
    try:
        return Alert(**_store(r, settings).transition(alert_id, to, actor=actor, note=note).__dict__)
    except KeyError:
        raise Problem(404, "alert-not-found", f"no alert '{alert_id}'") from None
    except ValueError as exc:
        raise Problem(409, "alert-transition-refused", str(exc)) from None


@router.post("/{alert_id}/ack", response_model=Alert, responses=errors(404, 409))
def acknowledge_alert(
    alert_id: str, r: RedisDep, settings: SettingsDep, who: OperatorDep, body: AlertAction | None = None
) -> Alert:
    """Acknowledge: a person is looking at it (recorded as the calling token's name)."""
    return _transition(alert_id, "acknowledged", who.name, body, r, settings)


@router.post("/{alert_id}/resolve", response_model=Alert, responses=errors(404, 409))
def resolve_alert(
    alert_id: str, r: RedisDep, settings: SettingsDep, who: OperatorDep, body: AlertAction | None = None
) -> Alert:
    """Resolve: the client's next detection opens a new alert."""
    return _transition(alert_id, "resolved", who.name, body, r, settings)
