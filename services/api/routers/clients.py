"""Clients of the gateway: create (the key is in this one answer only), list, get, revoke, rotate the key;
their output policy (get, replace, history), today's usage against the quota, and the detector's risk view.

Changes need an ``operator`` token and record its name as the actor; reads need any token.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Response

from services.api.deps import OperatorDep, ReaderDep, RedisDep
from services.api.problems import Problem, errors, found
from services.api.schemas import Client, ClientCreate, ClientWithKey, Policy, PolicyChange, Risk, Usage
from services.core import keys
from services.core.clients import POLICY_HISTORY_MAX, ClientInfo, ClientRegistry
from services.core.policy import OutputPolicy

router = APIRouter(prefix="/v1/clients", tags=["clients"])


def _client(reg: ClientRegistry, info: ClientInfo) -> Client:
    return Client(id=info.id, created_at=info.created_at, revoked=info.revoked, key_hint=info.key_hint,
                  policy=Policy.of(reg.get_policy(info.id)))


def _existing(reg: ClientRegistry, client_id: str) -> ClientInfo:
    return found(reg.get(client_id), "client", client_id)


def _policy(body: Policy) -> OutputPolicy:
    try:
        return body.to_policy()
    except ValueError as exc:  # OutputPolicy's own checks, should they ever be stricter than the model's
        raise Problem(422, "invalid-policy", str(exc)) from None


@router.post("", status_code=201, response_model=ClientWithKey, responses=errors(409, 422))
def create_client(body: ClientCreate, response: Response, r: RedisDep, who: OperatorDep) -> ClientWithKey:
    """Create a client and its API key. The key is in this answer only (stored as its SHA-256)."""
    reg = ClientRegistry(r)
    policy = _policy(body.policy) if body.policy is not None else None
    try:
        info, key = reg.add(body.name)
    except ValueError as exc:
        exists = reg.get(body.name) is not None
        raise Problem(409 if exists else 422, "client-exists" if exists else "invalid-client-name", str(exc)) from None
    if policy is not None:
        reg.set_policy(info.id, policy, actor=who.name)
    response.headers["Location"] = f"/v1/clients/{info.id}"
    return ClientWithKey(client=_client(reg, info), api_key=key)


@router.get("", response_model=list[Client], responses=errors())
def list_clients(r: RedisDep, _: ReaderDep) -> list[Client]:
    reg = ClientRegistry(r)
    return [_client(reg, c) for c in reg.list()]


@router.get("/{client_id}", response_model=Client, responses=errors(404))
def read_client(client_id: str, r: RedisDep, _: ReaderDep) -> Client:
    reg = ClientRegistry(r)
    return _client(reg, _existing(reg, client_id))


@router.post("/{client_id}/revoke", response_model=Client, responses=errors(404))
def revoke_client(client_id: str, r: RedisDep, _: OperatorDep) -> Client:
    """Revoke the client's key; the gateways refuse it within one refresh interval. Revoking twice is a no-op."""
    reg = ClientRegistry(r)
    _existing(reg, client_id)
    return _client(reg, reg.revoke(client_id))


@router.post("/{client_id}/rotate-key", response_model=ClientWithKey, responses=errors(404, 409))
def rotate_client_key(client_id: str, r: RedisDep, _: OperatorDep) -> ClientWithKey:
    """A new key (in this answer only); the old key stops working within one refresh interval."""
    reg = ClientRegistry(r)
    _existing(reg, client_id)
    try:
        info, key = reg.rotate_key(client_id)
    except ValueError as exc:
        raise Problem(409, "client-revoked", str(exc)) from None
    return ClientWithKey(client=_client(reg, info), api_key=key)


@router.get("/{client_id}/policy", response_model=Policy, responses=errors(404))
def read_policy(client_id: str, r: RedisDep, _: ReaderDep) -> Policy:
    reg = ClientRegistry(r)
    _existing(reg, client_id)
    return Policy.of(reg.get_policy(client_id))


@router.put("/{client_id}/policy", response_model=Policy, responses=errors(404, 422))
def replace_policy(client_id: str, body: Policy, r: RedisDep, who: OperatorDep) -> Policy:
    """Replace the client's policy (fields left out take their defaults); recorded in its history."""
    reg = ClientRegistry(r)
    _existing(reg, client_id)
    policy = _policy(body)
    reg.set_policy(client_id, policy, actor=who.name)
    return Policy.of(policy)


@router.get("/{client_id}/policy/history", response_model=list[PolicyChange], responses=errors(404))
def read_policy_history(
    client_id: str, r: RedisDep, _: ReaderDep, limit: int = Query(20, ge=1, le=POLICY_HISTORY_MAX)
) -> list[PolicyChange]:
    """Operators' policy changes, newest first (the detector's automatic tightening is on its alerts)."""
    reg = ClientRegistry(r)
    _existing(reg, client_id)
    return [PolicyChange(**entry) for entry in reg.policy_history(client_id, limit)]


@router.get("/{client_id}/usage", response_model=Usage, responses=errors(404))
def read_usage(client_id: str, r: RedisDep, _: ReaderDep) -> Usage:
    """Rows admitted today (UTC) against the daily quota."""
    reg = ClientRegistry(r)
    _existing(reg, client_id)
    day, used = reg.usage_today(client_id)
    quota = reg.get_policy(client_id).daily_quota
    return Usage(client_id=client_id, day=day, used=used, daily_quota=quota,
                 remaining=None if quota is None else max(0, quota - used))


@router.get("/{client_id}/risk", response_model=Risk, responses=errors(404))
def read_client_risk(client_id: str, r: RedisDep, _: ReaderDep) -> Risk:
    """The detector's latest assessment of a client: risk score, level, per-signal statistics."""
    reg = ClientRegistry(r)
    info = _existing(reg, client_id)
    raw = r.get(keys.risk(client_id))
    no_data: dict[str, Any] = {"risk_score": 0.0, "level": "low", "threshold": None, "queries_seen": 0, "models": {}}
    risk = orjson.loads(raw) if raw else no_data  # type: ignore[arg-type]
    return Risk(**{**risk, "client_id": client_id, "revoked": info.revoked,
                   "policy": Policy.of(reg.get_policy(client_id))})
