"""Audit records in Redis: queued → running → done | failed, with progress, de-duplicated by request.

Re-submitting the same suspect + method + parameters + protected model returns the existing audit
(unless it failed), so a nervous double-click does not spend a second query budget on the suspect.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
import redis

from services.core import keys
from services.core.jsonrecords import list_records, update_record

AuditStatus = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: tuple[str, ...] = ("done", "failed", "cancelled")


def canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


@dataclass
class AuditRecord:
    id: str
    method: str  # "watermark" | "dataset_inference" | "dataset_inference_mingd"
    protected_model: str
    suspect: dict[str, Any]  # identity + how to load it (file path/format or endpoint)
    params: dict[str, Any]
    status: AuditStatus = "queued"
    progress: float = 0.0
    message: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    task_id: str | None = None
    report_path: str | None = None
    decision: str | None = None
    error: str | None = None
    attempts: int = 0
    dedupe_key: str = ""
    # Set by ``POST /v1/audits/{id}/cancel`` on a running audit: the worker stops at its next progress update.
    cancel_requested_by: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> AuditRecord:
        return cls(**orjson.loads(raw))

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["suspect"] = {k: v for k, v in self.suspect.items() if k not in ("path", "token")}
        data.pop("report_path")
        return data


def dedupe_key(method: str, protected_model: str, suspect_identity: dict[str, Any], params: dict[str, Any]) -> str:
    return hashlib.sha256(canonical([method, protected_model, suspect_identity, params])).hexdigest()


class AuditStore:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    @staticmethod
    def _key(audit_id: str) -> str:
        return keys.audit(audit_id)

    def create_or_get(
        self,
        *,
        method: str,
        protected_model: str,
        suspect: dict[str, Any],
        identity: dict[str, Any],
        params: dict[str, Any],
    ) -> tuple[AuditRecord, bool]:
        """The existing audit for the same request (unless it failed), else a new queued one.

        Atomic (WATCH on the de-duplication key): two identical submissions racing each other get one audit.
        """
        key = dedupe_key(method, protected_model, identity, params)
        dkey = keys.audit_dedupe(key)
        record = AuditRecord(
            id=f"au_{int(time.time())}_{secrets.token_hex(4)}",
            method=method,
            protected_model=protected_model,
            suspect={**suspect, **identity},
            params=params,
            dedupe_key=key,
        )
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(dkey)
                    existing_id = pipe.get(dkey)
                    if existing_id:
                        existing = self.get(existing_id.decode())  # type: ignore[union-attr]
                        if existing is not None and existing.status not in ("failed", "cancelled"):
                            return existing, False
                    pipe.multi()
                    pipe.set(self._key(record.id), record.to_json())
                    pipe.set(dkey, record.id)
                    pipe.zadd(keys.AUDITS_INDEX, {record.id: record.created_at})
                    pipe.execute()
                    return record, True
                except redis.WatchError:
                    continue

    def get(self, audit_id: str) -> AuditRecord | None:
        raw = self.r.get(self._key(audit_id))
        return AuditRecord.from_json(raw) if raw else None  # type: ignore[arg-type]

    def update(self, audit_id: str, **changes: Any) -> AuditRecord:
        try:
            return update_record(self.r, self._key(audit_id), AuditRecord.from_json, changes)
        except KeyError:
            raise KeyError(audit_id) from None

    def list(self, limit: int = 100) -> list[AuditRecord]:
        return list_records(self.r, keys.AUDITS_INDEX, self._key, AuditRecord.from_json, limit)
