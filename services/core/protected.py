"""The Redis index of protected-model registrations: queued → registering → ready | failed, with progress.

The registration itself (files, nulls, signed record) lives under ``<data_dir>/protected/<id>/``
(``audit.protected``); this index is what the API lists and what an audit submission checks.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
import redis

from services.core import keys
from services.core.jsonrecords import list_records, update_record

RegistrationStatus = Literal["queued", "registering", "ready", "failed"]


def new_protected_id() -> str:
    return f"pm_{secrets.token_hex(6)}"


@dataclass
class ProtectedRecord:
    id: str
    name: str
    spec: dict[str, Any]  # how to register: stored input paths, formats, parameters (internal)
    status: RegistrationStatus = "queued"
    progress: float = 0.0
    message: str = ""
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    registered_at: str | None = None
    registration_sha256: str | None = None
    methods: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    task_id: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ProtectedRecord:
        return cls(**orjson.loads(raw))

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        spec = dict(self.spec)
        inputs = {k: {"sha256": v.get("sha256"), "size": v.get("size")} for k, v in spec.pop("files", {}).items()}
        endpoint = spec.pop("endpoint", None)
        data["spec"] = {**spec, "files": inputs}
        if endpoint:
            data["spec"]["endpoint"] = {k: v for k, v in endpoint.items() if k != "token"}
        return data


class ProtectedIndex:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    @staticmethod
    def _key(pm_id: str) -> str:
        return keys.protected(pm_id)

    def create(self, record: ProtectedRecord) -> ProtectedRecord:
        with self.r.pipeline() as pipe:
            pipe.set(self._key(record.id), record.to_json(), nx=True)
            pipe.zadd(keys.PROTECTED_INDEX, {record.id: record.created_at})
            created, _ = pipe.execute()
        if not created:
            raise KeyError(f"protected model {record.id} exists")
        return record

    def get(self, pm_id: str) -> ProtectedRecord | None:
        raw = self.r.get(self._key(pm_id))
        return ProtectedRecord.from_json(raw) if raw else None  # type: ignore[arg-type]

    def update(self, pm_id: str, **changes: Any) -> ProtectedRecord:
        try:
            return update_record(self.r, self._key(pm_id), ProtectedRecord.from_json, changes)
        except KeyError:
            raise KeyError(pm_id) from None

    def list(self, limit: int = 100) -> list[ProtectedRecord]:
        return list_records(self.r, keys.PROTECTED_INDEX, self._key, ProtectedRecord.from_json, limit)
