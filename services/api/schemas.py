"""The admin API's request and response models: what ``/openapi.json`` names for every route.

Records the stores hold as dataclasses (alerts, audits) are described here field by field; their models
allow extra fields so a field added to a record reaches clients before its model here catches up.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.core.policy import OutputPolicy


class Policy(BaseModel):
    """A client's output policy (the gateway applies it to every answer). Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    label_only: bool = False
    round_decimals: int | None = Field(default=None, ge=0, le=8)
    top_k: int | None = Field(default=None, ge=1)
    noise_sigma: float = Field(default=0.0, ge=0.0, le=1.0)
    daily_quota: int | None = Field(default=None, ge=0, description="rows per UTC day; null = unlimited")
    rate_per_s: float | None = Field(default=None, gt=0, description="rows per second; null = unlimited")
    blocked: bool = False
    answer_watermark: Literal["all", "flagged", "off"] | None = Field(
        default=None, description="whether this client's answers are marked; null: the deployment's mode"
    )
    reason: str = Field(default="", max_length=500)
    extra: dict[str, Any] = Field(default_factory=dict)

    def to_policy(self) -> OutputPolicy:
        return OutputPolicy(**self.model_dump())

    @classmethod
    def of(cls, policy: OutputPolicy) -> Policy:
        return cls(**policy.to_dict())


class Client(BaseModel):
    id: str
    created_at: float
    revoked: bool
    key_hint: str = Field(description="the first characters of the key, to tell keys apart; never the key")
    policy: Policy


class ClientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="letters, digits, '_', '.', '-'")
    policy: Policy | None = None


class ClientWithKey(BaseModel):
    client: Client
    api_key: str = Field(description="shown once: stored only as its SHA-256")


class PolicyChange(BaseModel):
    at: float
    by: str
    policy: Policy


class Usage(BaseModel):
    client_id: str
    day: str = Field(description="UTC day, YYYYMMDD")
    used: int = Field(description="rows admitted today, as the gateways last pushed it (a refresh interval behind)")
    daily_quota: int | None
    remaining: int | None


class Risk(BaseModel):
    model_config = ConfigDict(extra="allow")

    client_id: str
    revoked: bool
    policy: Policy
    risk_score: float
    level: str
    threshold: float | None = None
    queries_seen: int = 0
    models: dict[str, Any] = Field(default_factory=dict)


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    client_id: str
    status: Literal["open", "acknowledged", "resolved"]
    severity: str
    risk_score: float
    window_start: float
    window_end: float
    opened_at: float
    updated_at: float
    queries_seen: int
    signals: list[dict[str, Any]]
    fired_signals: list[str]
    technique: str
    technique_name: str
    detections: int
    history: list[dict[str, Any]] = Field(description="status changes: status, by (the token's name), at, note")
    policy_applied: dict[str, Any] | None = None
    queries_at_open: int = 0
    model: str = ""
    risk_threshold: float = 0.0
    kind: Literal["client", "group"] = Field(
        default="client", description="group: colluding keys, the pooled clients of one source network"
    )
    members: list[str] = Field(default_factory=list, description="group alerts: the member clients counted")


class AlertPage(BaseModel):
    items: list[Alert]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last")


class AlertAction(BaseModel):
    """The actor is the calling token's name; a body ``actor`` is ignored."""

    note: str = Field(default="", max_length=2000)


class _Job(BaseModel):
    """What an audit and a registration share: both are a queued task whose worker reports its progress."""

    model_config = ConfigDict(extra="allow")

    id: str
    progress: float
    message: str
    created_at: float
    finished_at: float | None = None
    task_id: str | None = None
    error: str | None = None
    attempts: int = 0


class Audit(_Job):
    method: str
    protected_model: str
    suspect: dict[str, Any]
    params: dict[str, Any]
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    started_at: float | None = None
    decision: str | None = None
    cancel_requested_by: str | None = None


class ProtectedModel(_Job):
    name: str
    spec: dict[str, Any] = Field(description="formats, parameters and the inputs' digests (never paths or tokens)")
    status: str
    registered_at: str | None = None
    registration_sha256: str | None = None
    methods: list[str]


class DeadLetter(BaseModel):
    model_config = ConfigDict(extra="allow")

    event: str
    attempts: int
    payload: dict[str, Any]


class DeadLetterPage(BaseModel):
    total: int
    offset: int
    items: list[DeadLetter]


class Requeued(BaseModel):
    requeued: int
    remaining: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool
    version: str


class Live(BaseModel):
    status: Literal["ok"]
    version: str


class PublicKey(BaseModel):
    algorithm: Literal["ed25519"]
    keyid: str
    public_key_pem: str


class Whoami(BaseModel):
    name: str
    scope: Literal["read", "auditor", "operator"]


class Verification(BaseModel):
    """What ``POST /v1/reports/verify`` found: valid or not, and for a valid statement what it says."""

    valid: bool
    kind: Literal["audit", "compliance", "registration"] = Field(description="the predicate type asked for")
    keyid: str = Field(description="the service key the signature was checked against")
    error: str | None = Field(default=None, description="why the statement is not valid")
    predicate_type: str | None = None
    subject: list[dict[str, Any]] | None = None
    decision: str | None = None
    method: str | None = None
