"""What the product does about a detection: response levels, client tiers, shadow mode, reversible enforcement.

A detection is evidence, not a verdict: a benign client whose captures differ from the reference can cross
the alert threshold once. So the response climbs in levels, and only persistent evidence (or a person)
changes what a client receives:

- ``observe``: the alert is recorded (API, ``mc:alerts`` stream, metrics); no webhook, no change.
- ``notify``: also a webhook to the security team.
- ``enforce``: also the client's output policy is tightened (settings: ``detector_tightened_policy``),
  automatically only when the client is at level ``high`` AND the evidence persists: ``k`` consecutive
  tests over the alert threshold, or two independent signal families firing in one test. An operator may
  confirm enforcement of any alert through the admin API instead.

The global ceiling (``detector_response``) caps every automatic response; a client's *tier* (set by an
operator) can cap it further: ``allowlisted`` clients (known bulk customers) are observed only, and a
client with an ``expected_daily_queries`` is not escalated when the only thing that fired is the volume
test and its volume is within what the operator declared. In *shadow mode* no policy ever changes; the
alert records what would have happened.

Every policy change (automatic or confirmed) is recorded on the alert (``policy_changes``: who, when,
why, the policy before and after) and can be reverted through the API, which restores the policy before
if nobody changed it since. A reverted automatic change is not re-applied automatically for that alert.

``decide`` is a pure function (unit-tested without Redis); the rest reads and writes Redis.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
import redis

from services.core import keys
from services.core.alerts import Alert, AlertStore
from services.core.clients import POLICIES_KEY
from services.core.policy import OutputPolicy

ResponseLevel = Literal["observe", "notify", "enforce"]
RESPONSE_LEVELS: tuple[ResponseLevel, ...] = ("observe", "notify", "enforce")
Tier = Literal["standard", "bulk", "allowlisted"]
TIERS: tuple[Tier, ...] = ("standard", "bulk", "allowlisted")
TIERS_KEY = keys.CLIENT_TIERS  # hash: client id → JSON ClientTier
STREAKS_KEY = keys.DETECTOR_STREAKS  # hash: "<client>\x1f<model>" → consecutive tests over the alert threshold


@dataclass(frozen=True, slots=True)
class ClientTier:
    """An operator's statement about a client: how much it is expected to query, and how far to respond."""

    tier: Tier = "standard"
    expected_daily_queries: int | None = None
    note: str = ""
    set_by: str = ""
    set_at: float = 0.0

    @property
    def ceiling(self) -> ResponseLevel:
        return "observe" if self.tier == "allowlisted" else "enforce"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientTier:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        tier = cls(**known)
        if tier.tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier.tier!r}")
        if tier.expected_daily_queries is not None and tier.expected_daily_queries < 1:
            raise ValueError("expected_daily_queries must be >= 1")
        return tier


@dataclass(frozen=True, slots=True)
class ResponseConfig:
    ceiling: ResponseLevel = "enforce"
    shadow: bool = False
    enforce_after_tests: int = 3
    enforce_on: str = "high"  # the alert level from which enforcement may apply ("" never, "medium")
    families: Mapping[str, str] = field(default_factory=dict)
    tightened_policy: OutputPolicy = OutputPolicy(label_only=True, daily_quota=1000)

    @classmethod
    def from_settings(cls, settings: Any) -> ResponseConfig:
        return cls(
            ceiling=settings.detector_response,
            shadow=settings.detector_shadow_mode,
            enforce_after_tests=settings.detector_enforce_after_tests,
            enforce_on=settings.detector_tighten_on,
            families=dict(settings.detector_signal_families),
            tightened_policy=OutputPolicy.from_dict(settings.detector_tightened_policy),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    level: ResponseLevel
    reason: str
    would_enforce: bool = False  # enforcement was due by the evidence (applied unless shadow or reverted)


def families_fired(fired: Sequence[str], families: Mapping[str, str]) -> set[str]:
    return {families.get(signal, signal) for signal in fired}


def _volume_only(signals: Sequence[Mapping[str, Any]], fired: Sequence[str], expected: int | None) -> bool:
    """The only evidence is the sweep signal's volume sub-test, and the volume is within the declared tier."""
    if expected is None or list(fired) != ["sweep"]:
        return False
    sweep = next((s for s in signals if s.get("signal") == "sweep"), None)
    evidence = (sweep or {}).get("evidence") or {}
    volume, volume_p = evidence.get("volume_last_day"), evidence.get("volume_p")
    if volume is None or volume_p is None:
        return False
    # The sweep signal is a Bonferroni minimum of sub-tests: volume drove it when its p-value is the smallest.
    others = [float(evidence[k]) for k in ("sparse_p", "collinear_p", "coverage_p") if evidence.get(k) is not None]
    return float(volume) <= expected and all(float(volume_p) <= o for o in others)


def decide(
    *,
    severity: str,
    fired: Sequence[str],
    signals: Sequence[Mapping[str, Any]],
    streak: int,
    tier: ClientTier,
    config: ResponseConfig,
    enforcement_reverted: bool = False,
) -> Decision:
    """The automatic response to one detection (an alert opened or updated at ``severity``)."""
    ceiling = min(config.ceiling, tier.ceiling, key=RESPONSE_LEVELS.index)
    if _volume_only(signals, fired, tier.expected_daily_queries):
        return Decision("observe", f"volume within the {tier.expected_daily_queries} queries/day the operator declared")
    if ceiling == "observe":
        why = "client allowlisted by the operator" if tier.ceiling == "observe" else "response ceiling is observe"
        return Decision("observe", why)
    level_ok = config.enforce_on != "" and (severity == "high" or config.enforce_on == "medium")
    n_families = len(families_fired(fired, config.families))
    persistent = streak >= config.enforce_after_tests
    if not level_ok:
        return Decision("notify", f"level {severity}: enforcement needs level {config.enforce_on or 'never'}")
    if not persistent and n_families < 2:
        return Decision(
            "notify",
            f"not persistent yet: {streak} consecutive test(s) over the threshold (needs "
            f"{config.enforce_after_tests}) and {n_families} signal family(ies) (needs 2)",
        )
    evidence = (
        f"{streak} consecutive tests over the threshold" if persistent else f"{n_families} independent signal families"
    )
    if ceiling != "enforce":
        return Decision("notify", f"{evidence}, but the response ceiling is {ceiling}")
    if enforcement_reverted:
        return Decision("notify", f"{evidence}, but an operator reverted this alert's enforcement")
    return Decision("enforce", f"level {severity} with {evidence}", would_enforce=True)


# ---------------------------------------------------------------------- tiers
class TierStore:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def get(self, client_id: str) -> ClientTier:
        raw = self.r.hget(TIERS_KEY, client_id)
        if not raw:
            return ClientTier()
        try:
            return ClientTier.from_dict(orjson.loads(raw))  # type: ignore[arg-type]
        except (ValueError, TypeError, orjson.JSONDecodeError):
            return ClientTier()  # a damaged record must not exempt a client: standard tier

    def set(self, client_id: str, tier: ClientTier) -> ClientTier:
        self.r.hset(TIERS_KEY, client_id, orjson.dumps(tier.to_dict()))
        return tier


# ---------------------------------------------------------------------- policy changes on alerts
class PolicyConflict(Exception):
    """The change cannot be made as asked (already reverted, policy changed since, ...)."""


def _watch_alert(pipe: redis.client.Pipeline, key: str, alert_id: str) -> Alert:
    """WATCH the alert and the policies (a concurrent change to either retries the transaction), then read
    the alert; KeyError when it does not exist."""
    pipe.watch(key, POLICIES_KEY)
    raw = pipe.get(key)
    if raw is None:
        raise KeyError(alert_id)
    return Alert.from_json(raw)  # type: ignore[arg-type]


def apply_enforcement(
    r: redis.Redis,
    alerts: AlertStore,
    alert_id: str,
    target: OutputPolicy,
    *,
    by: str,
    trigger: str,
    reason: str,
    shadow: bool,
) -> tuple[Alert, dict[str, Any] | None]:
    """Tighten the alert's client's policy toward ``target`` and record it on the alert, atomically.

    Returns (alert, the change recorded) or (alert, None) when the policy is already at least as tight.
    In shadow mode the change is recorded with ``applied: False`` and the policy is left alone.
    """
    key = alerts.key(alert_id)
    with r.pipeline() as pipe:
        while True:
            try:
                alert = _watch_alert(pipe, key, alert_id)
                raw_policy = pipe.hget(POLICIES_KEY, alert.client_id)
                before = OutputPolicy.from_dict(orjson.loads(raw_policy)) if raw_policy else OutputPolicy()  # type: ignore[arg-type]
                after = before.tightened(OutputPolicy(**{**target.to_dict(), "reason": f"alert {alert.id}"}))
                # In shadow mode the policy never changes, so record what would have happened once per actor.
                shadowed = shadow and any(c["shadow"] and c["by"] == by for c in alert.policy_changes)
                if after == before or shadowed:
                    pipe.unwatch()
                    return alert, None
                now = time.time()
                change = {
                    "id": f"pc_{secrets.token_hex(4)}",
                    "at": now,
                    "by": by,
                    "trigger": trigger,  # "persistence", "signal families" or "operator"
                    "reason": reason,
                    "shadow": shadow,
                    "applied": not shadow,
                    "policy_before": before.to_dict(),
                    "policy_after": after.to_dict(),
                    "reverted": None,
                }
                alert.policy_changes.append(change)
                if not shadow:
                    alert.policy_applied = after.to_dict()
                alert.updated_at = now
                pipe.multi()
                pipe.set(key, alert.to_json())
                if not shadow:
                    pipe.hset(POLICIES_KEY, alert.client_id, orjson.dumps(after.to_dict()))
                pipe.xadd(
                    alerts.stream,
                    {"event": "policy_changed" if not shadow else "policy_shadowed", "alert": alert.to_json()},
                    maxlen=100_000,
                    approximate=True,
                )
                pipe.execute()
                return alert, change
            except redis.WatchError:
                continue


def revert_change(
    r: redis.Redis, alerts: AlertStore, alert_id: str, change_id: str, *, by: str, note: str = ""
) -> Alert:
    """Restore the policy a change replaced, if the client's policy is still the one it set."""
    key = alerts.key(alert_id)
    with r.pipeline() as pipe:
        while True:
            try:
                alert = _watch_alert(pipe, key, alert_id)
                change = next((c for c in alert.policy_changes if c["id"] == change_id), None)
                if change is None:
                    raise KeyError(change_id)
                if change["reverted"] is not None:
                    raise PolicyConflict(f"policy change {change_id} was already reverted")
                if not change["applied"]:
                    raise PolicyConflict(f"policy change {change_id} was recorded in shadow mode; nothing to revert")
                raw_policy = pipe.hget(POLICIES_KEY, alert.client_id)
                current = OutputPolicy.from_dict(orjson.loads(raw_policy)) if raw_policy else OutputPolicy()  # type: ignore[arg-type]
                if current != OutputPolicy.from_dict(change["policy_after"]):
                    raise PolicyConflict(
                        f"client {alert.client_id}'s policy changed since {change_id}; set the policy explicitly"
                    )
                now = time.time()
                change["reverted"] = {"at": now, "by": by, "note": note}
                alert.policy_applied = None
                alert.updated_at = now
                alert.history.append({"status": alert.status, "by": by, "at": now, "note": f"reverted {change_id}"})
                before = OutputPolicy.from_dict(change["policy_before"])
                pipe.multi()
                pipe.set(key, alert.to_json())
                if before == OutputPolicy():
                    pipe.hdel(POLICIES_KEY, alert.client_id)
                else:
                    pipe.hset(POLICIES_KEY, alert.client_id, orjson.dumps(before.to_dict()))
                event = {"event": "policy_reverted", "alert": alert.to_json()}
                pipe.xadd(alerts.stream, event, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
                pipe.execute()
                return alert
            except redis.WatchError:
                continue


def enforcement_reverted(alert: Alert) -> bool:
    return any(c.get("reverted") is not None and c.get("by") == "detector" for c in alert.policy_changes)
