from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException

from services.api.deps import AdminDep, RedisDep
from services.core.clients import ClientRegistry, client_snapshot_json

router = APIRouter(prefix="/v1/clients", tags=["clients"])


@router.get("")
def read_clients(r: RedisDep, _: AdminDep) -> list[dict[str, Any]]:
    reg = ClientRegistry(r)
    return [client_snapshot_json(c, reg.get_policy(c.id)) for c in reg.list()]


@router.get("/{client_id}/risk")
def read_client_risk(client_id: str, r: RedisDep, _: AdminDep) -> dict[str, Any]:
    """The detector's latest assessment of a client: risk score, level, per-signal statistics."""
    reg = ClientRegistry(r)
    info = reg.get(client_id)
    if info is None:
        raise HTTPException(404, f"no client '{client_id}'")
    raw = r.get(f"mc:risk:{client_id}")
    no_data = {"risk_score": 0.0, "level": "low", "threshold": None, "queries_seen": 0, "models": {}}
    risk = orjson.loads(raw) if raw else no_data
    return {"client_id": client_id, "revoked": info.revoked, "policy": reg.get_policy(client_id).to_dict(), **risk}
