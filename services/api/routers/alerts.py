from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from services.api.deps import AdminDep, RedisDep, SettingsDep
from services.core.alerts import AlertStore

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


class AlertAction(BaseModel):
    note: str = Field(default="", max_length=2000)
    actor: str = Field(default="admin", max_length=100)


def _store(r: Any, settings: Any) -> AlertStore:
    return AlertStore(r, stream=settings.alerts_stream)


@router.get("")
def read_alerts(
    r: RedisDep,
    settings: SettingsDep,
    _: AdminDep,
    status: Literal["open", "acknowledged", "resolved"] | None = None,
    client_id: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Alerts, newest first."""
    return [a.__dict__ for a in _store(r, settings).list(status=status, client_id=client_id, limit=limit)]


@router.get("/{alert_id}")
def read_alert(alert_id: str, r: RedisDep, settings: SettingsDep, _: AdminDep) -> dict[str, Any]:
    alert = _store(r, settings).get(alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert '{alert_id}'")
    return alert.__dict__


def _transition(alert_id: str, to: Any, body: AlertAction | None, r: Any, settings: Any) -> dict[str, Any]:
    body = body or AlertAction()
    try:
        return _store(r, settings).transition(alert_id, to, actor=body.actor, note=body.note).__dict__
    except KeyError:
        raise HTTPException(404, f"no alert '{alert_id}'") from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/{alert_id}/ack")
def acknowledge_alert(
    alert_id: str, r: RedisDep, settings: SettingsDep, _: AdminDep, body: AlertAction | None = None
) -> dict[str, Any]:
    """Acknowledge: a person is looking at it."""
    return _transition(alert_id, "acknowledged", body, r, settings)


@router.post("/{alert_id}/resolve")
def resolve_alert(
    alert_id: str, r: RedisDep, settings: SettingsDep, _: AdminDep, body: AlertAction | None = None
) -> dict[str, Any]:
    """Resolve: the client's next detection opens a new alert."""
    return _transition(alert_id, "resolved", body, r, settings)
