"""Every Redis key Model Custody writes, named once.

Components import the name from here instead of spelling ``"mc:..."`` themselves, so a key can be found,
renamed or documented in one place. Streams whose name is a setting (``queries_stream``, ``alerts_stream``)
have their defaults here too.

| key | type | written by | read by |
|---|---|---|---|
| ``mc:queries`` | stream | gateway | detector, archiver, compliance |
| ``mc:queries:malformed`` | stream | detector | operators |
| ``mc:gateway:<instance>:seq`` | string | gateway | gateway (replay after an outage) |
| ``mc:clients``, ``mc:clients:by_key``, ``mc:policies`` | hash | API, CLI, detector | gateway |
| ``mc:usage:<day>`` | hash | gateway | API |
| ``mc:policy:history:<client>`` | list | API, detector | API |
| ``mc:client:tiers`` | hash | API | detector |
| ``mc:det:state:<client>`` | hash | detector | detector |
| ``mc:det:streaks`` | hash | detector | detector |
| ``mc:det:population:<model>`` | string | detector | detector (at start) |
| ``mc:det:group:<model>|<network>``, ``mc:det:groups`` | hash, zset | detector | detector |
| ``mc:risk:<client>``, ``mc:risk:levels`` | string, hash | detector | API, compliance |
| ``mc:alerts`` | stream | detector | SOC integrations |
| ``mc:alert:<id>``, ``mc:alert:open:<client>``, ``mc:alerts:index`` | str, str, zset | detector, API | API |
| ``mc:webhook:outbox``, ``…:processing:<instance>``, ``mc:webhook:dead`` | list | detector | detector, API |
| ``mc:audit:<id>``, ``mc:audit:dedupe:<key>``, ``mc:audits:index`` | str, str, zset | API, workers | API |
| ``mc:protected:<id>``, ``mc:protected:index`` | string, zset | API, workers | API, workers, compliance |
| ``mc:admin:tokens``, ``mc:admin:token_names`` | hash | CLI | API |
| ``mc:archive:head`` | string | archiver | ``archive verify`` |
| ``mc:metrics:hard_limit_failures`` | hash | workers | workers (metrics) |
"""

from __future__ import annotations

QUERIES_STREAM = "mc:queries"
MALFORMED_STREAM = "mc:queries:malformed"
ALERTS_STREAM = "mc:alerts"

CLIENTS = "mc:clients"
CLIENTS_BY_KEY = "mc:clients:by_key"
POLICIES = "mc:policies"
CLIENT_TIERS = "mc:client:tiers"

DETECTOR_STATE_PREFIX = "mc:det:state:"
DETECTOR_STREAKS = "mc:det:streaks"
DETECTOR_POPULATION_PREFIX = "mc:det:population:"
DETECTOR_GROUP_PREFIX = "mc:det:group:"
DETECTOR_GROUPS = "mc:det:groups"  # zset: group id -> last seen (bounds how many groups are kept)
RISK_PREFIX = "mc:risk:"
RISK_LEVELS = "mc:risk:levels"

ALERT_PREFIX = "mc:alert:"
ALERTS_INDEX = "mc:alerts:index"
WEBHOOK_OUTBOX = "mc:webhook:outbox"
WEBHOOK_DEAD = "mc:webhook:dead"

AUDIT_PREFIX = "mc:audit:"
AUDITS_INDEX = "mc:audits:index"
PROTECTED_PREFIX = "mc:protected:"
PROTECTED_INDEX = "mc:protected:index"

ADMIN_TOKENS = "mc:admin:tokens"
ADMIN_TOKEN_NAMES = "mc:admin:token_names"
ARCHIVE_HEAD = "mc:archive:head"
HARD_LIMIT_FAILURES = "mc:metrics:hard_limit_failures"


def gateway_seq(instance: str) -> str:
    return f"mc:gateway:{instance}:seq"


def usage(day: str) -> str:
    return f"mc:usage:{day}"


def policy_history(client_id: str) -> str:
    return f"mc:policy:history:{client_id}"


def risk(client_id: str) -> str:
    return RISK_PREFIX + client_id


def alert(alert_id: str) -> str:
    return ALERT_PREFIX + alert_id


def open_alert(client_id: str) -> str:
    return f"mc:alert:open:{client_id}"


def detector_group(group_id: str) -> str:
    """A colluding-keys group's pooled state; ``group_id`` is ``<model>|<source network>``."""
    return DETECTOR_GROUP_PREFIX + group_id


def detector_population(model: str) -> str:
    """A model's population baseline (``Population.to_bytes``), the catch-all's under ``*``."""
    return DETECTOR_POPULATION_PREFIX + model


def webhook_processing(instance: str) -> str:
    return f"mc:webhook:processing:{instance}"


def audit(audit_id: str) -> str:
    return AUDIT_PREFIX + audit_id


def audit_dedupe(key: str) -> str:
    return f"mc:audit:dedupe:{key}"


def protected(protected_id: str) -> str:
    return PROTECTED_PREFIX + protected_id
