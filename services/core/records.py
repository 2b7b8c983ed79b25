"""The query-log record: one row of one prediction request, as the gateway answered it.

This module is the single schema shared by the gateway (writer) and the detector (reader). A record
is stored in the Redis Stream ``mc:queries`` as one entry with two fields: ``v`` (schema version) and
``r`` (the record as compact JSON). Bumping ``SCHEMA_VERSION`` is how a reader learns the shape changed;
readers refuse versions they do not know instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from services.core.protocols import OutputKind, Protocol

SCHEMA_VERSION = 1
# Gateways before 0.1.1 wrote the protocol with an underscore; a record's meaning did not change.
_LEGACY_PROTOCOL = {"oip_v2": "oip-v2", "kserve_v1": "kserve-v1"}


@dataclass(slots=True)
class QueryRecord:
    record_id: str  # "<gateway instance>:<seq>": unique, and orders the records of one gateway
    gateway: str
    seq: int  # per-gateway monotonic sequence; makes replay after an outage exactly-once
    ts: float  # unix seconds when the gateway received the request
    client_id: str
    model: str
    protocol: Protocol
    request_id: str
    row: int  # index of this row within its request's batch
    batch_size: int
    input: list[float]
    output: list[float] | None  # as returned to the client (after the output policy)
    output_kind: OutputKind
    status: int  # upstream HTTP status
    upstream_latency_s: float
    policy: str  # name of the output policy applied, "none" if the answer passed unchanged
    schema: int = SCHEMA_VERSION
    # Which answer watermark the served answer carries: "" none, "probabilities" the keyed cosine,
    # "label" a label that went through the label mark unchanged, "label-flipped" one it replaced,
    # "label-boundary" one the boundary mark replaced by the upstream's runner-up.
    # Added in 0.2 with a default, so v1 records written before it still read (same schema version).
    watermark: str = ""
    # The request's source network ("203.0.113.0/24", "2001:db8:1::/48"; services/gateway/source.py): the
    # TCP peer's, or a trusted proxy's client-address header's. "" from gateways before 0.3 (not grouped).
    network: str = ""

    def to_stream_fields(self) -> dict[str, bytes]:
        return {"v": str(self.schema).encode(), "r": orjson.dumps(asdict(self))}

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes] | dict[str, Any]) -> QueryRecord:
        version = fields.get(b"v", fields.get("v"))  # type: ignore[call-overload]
        raw = fields.get(b"r", fields.get("r"))  # type: ignore[call-overload]
        if version is None or raw is None:
            raise ValueError("not a query record: missing 'v' or 'r' field")
        if int(version) != SCHEMA_VERSION:
            raise ValueError(f"query record schema v{int(version)} is not supported (expected v{SCHEMA_VERSION})")
        data = orjson.loads(raw)
        data["protocol"] = _LEGACY_PROTOCOL.get(data.get("protocol"), data.get("protocol"))
        # Fields a newer writer added with a default are ignored, so readers may be upgraded after writers.
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})

    def predicted_label(self) -> int | None:
        """The class the client learned from this answer (argmax of probabilities, or the label)."""
        if self.output is None or not self.output:
            return None
        if self.output_kind == "label":
            return int(self.output[0])
        out = self.output
        return max(range(len(out)), key=out.__getitem__)


_FIELDS = frozenset(QueryRecord.__dataclass_fields__)
