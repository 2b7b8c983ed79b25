"""The detector's response, as operators steer it: the mode, client tiers, confirmed enforcement, reverts.

- ``GET  /v1/response``                                  the response ceiling, shadow mode, what enforcement needs
- ``GET  /v1/clients/{id}/tier``, ``PUT`` the same       a client's tier (standard, bulk, allowlisted) and volume
- ``POST /v1/alerts/{id}/enforce``                       an operator confirms enforcement of an alert
- ``POST /v1/alerts/{id}/policy-changes/{change}/revert`` undo a policy change (automatic or confirmed)

The rules themselves live in ``services/core/response.py`` (shared with the detector).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import OperatorDep, ReaderDep, RedisDep, SettingsDep
from services.api.schemas import Alert
from services.core.alerts import AlertStore
from services.core.clients import ClientRegistry
from services.core.response import (
    ClientTier,
    PolicyConflict,
    ResponseConfig,
    TierStore,
    apply_enforcement,
    revert_change,
)

router = APIRouter(tags=["response"])


class OperatorAction(BaseModel):
    """The actor is the calling token's name; a body ``actor`` is ignored."""

    note: str = Field(default="", max_length=2000)


class TierBody(BaseModel):
    tier: Literal["standard", "bulk", "allowlisted"] = "standard"
    # A bulk customer's declared daily volume: volume alone does not escalate a client below it.
    expected_daily_queries: int | None = Field(default=None, ge=1, le=10**12)
    note: str = Field(default="", max_length=2000)


class ResponseMode(BaseModel):
    response: str = Field(description="the ceiling: observe, notify or enforce")
    shadow_mode: bool
    enforce_on: str
    enforce_after_tests: int
    signal_families: dict[str, Any]
    tightened_policy: dict[str, Any]
    levels: dict[str, str]


class Tier(BaseModel):
    model_config = ConfigDict(extra="allow")

    client_id: str
    tier: str
    expected_daily_queries: int | None = None


class Enforcement(BaseModel):
    alert: Alert
    change: dict[str, Any] | None = Field(description="the policy change recorded on the alert (null: none)")
    applied: bool = Field(description="false in shadow mode: recorded, not applied")


@router.get("/v1/response", response_model=ResponseMode)
def read_response_mode(settings: SettingsDep, _: ReaderDep) -> dict[str, Any]:
    """How the detector responds: its ceiling, shadow mode, and what automatic enforcement needs."""
    config = ResponseConfig.from_settings(settings)
    return {
        "response": config.ceiling,
        "shadow_mode": config.shadow,
        "enforce_on": config.enforce_on,
        "enforce_after_tests": config.enforce_after_tests,
        "signal_families": dict(config.families),
        "tightened_policy": config.tightened_policy.to_dict(),
        "levels": {
            "observe": "the alert is recorded (API, event stream, metrics); no webhook, nothing changes",
            "notify": "the alert is recorded and sent to the webhook",
            "enforce": "the client's output policy is tightened; automatic only at the enforce_on level with "
            "enforce_after_tests consecutive tests over the threshold or two signal families, else "
            "on an operator's confirmation",
        },
    }


def _known_client(r: Any, client_id: str) -> None:
    if ClientRegistry(r).get(client_id) is None:
        raise HTTPException(404, f"no client '{client_id}'")


@router.get("/v1/clients/{client_id}/tier", response_model=Tier)
def read_client_tier(client_id: str, r: RedisDep, _: ReaderDep) -> dict[str, Any]:
    _known_client(r, client_id)
    return {"client_id": client_id, **TierStore(r).get(client_id).to_dict()}


@router.put("/v1/clients/{client_id}/tier", response_model=Tier)
def set_client_tier(client_id: str, body: TierBody, r: RedisDep, principal: OperatorDep) -> dict[str, Any]:
    """Set a client's tier: ``allowlisted`` clients are only observed, never notified on or enforced."""
    _known_client(r, client_id)
    tier = ClientTier(
        tier=body.tier,
        expected_daily_queries=body.expected_daily_queries,
        note=body.note,
        set_by=principal.name,
        set_at=time.time(),
    )
    return {"client_id": client_id, **TierStore(r).set(client_id, tier).to_dict()}


def _store(r: Any, settings: Any) -> AlertStore:
    return AlertStore(r, stream=settings.alerts_stream)


@router.post("/v1/alerts/{alert_id}/enforce", response_model=Enforcement)
def confirm_enforcement(
    alert_id: str, r: RedisDep, settings: SettingsDep, principal: OperatorDep, body: OperatorAction | None = None
) -> dict[str, Any]:
    """An operator confirms the alert: the client's policy is tightened now (recorded in shadow mode)."""
    body = body or OperatorAction()
    alerts = _store(r, settings)
    alert = alerts.get(alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert '{alert_id}'")
    if alert.status == "resolved":
        raise HTTPException(409, f"alert {alert_id} is resolved; enforce on an open or acknowledged alert")
    if alert.kind == "group":  # a network, not a client: tighten the member clients one by one, if at all
        raise HTTPException(409, f"alert {alert_id} is a group alert; enforce on its member clients' own alerts")
    config = ResponseConfig.from_settings(settings)
    try:
        alert, change = apply_enforcement(
            r,
            alerts,
            alert_id,
            config.tightened_policy,
            by=principal.name,
            trigger="operator",
            reason=body.note or "confirmed by an operator",
            shadow=config.shadow,
        )
    except KeyError:
        raise HTTPException(404, f"no alert '{alert_id}'") from None
    return {"alert": alert.__dict__, "change": change, "applied": bool(change and change["applied"])}


@router.post("/v1/alerts/{alert_id}/policy-changes/{change_id}/revert", response_model=Alert)
def revert_policy_change(
    alert_id: str,
    change_id: str,
    r: RedisDep,
    settings: SettingsDep,
    principal: OperatorDep,
    body: OperatorAction | None = None,
) -> dict[str, Any]:
    """Restore the policy the change replaced; 409 when the client's policy changed since."""
    body = body or OperatorAction()
    try:
        alert = revert_change(r, _store(r, settings), alert_id, change_id, by=principal.name, note=body.note)
    except KeyError as exc:
        raise HTTPException(404, f"no alert '{alert_id}' with policy change '{change_id}'") from exc
    except PolicyConflict as exc:
        raise HTTPException(409, str(exc)) from None
    return alert.__dict__
