"""The response rules (services/core/response.py) as a pure function: no Redis needed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.core.response import ClientTier, ResponseConfig, decide
from services.core.settings import Settings
from services.detector.service.consumer import _streak

CONFIG = ResponseConfig.from_settings(Settings.model_construct())


def _decide(**kw: Any) -> Any:
    args: dict[str, Any] = {
        "severity": "high",
        "fired": ["ood"],
        "signals": [],
        "streak": 1,
        "tier": ClientTier(),
        "config": CONFIG,
    }
    return decide(**{**args, **kw})


def test_one_detection_notifies_and_persistence_enforces() -> None:
    assert _decide().level == "notify"
    assert _decide(streak=2).level == "notify"
    assert _decide(streak=3).level == "enforce" and _decide(streak=3).would_enforce
    assert _decide(streak=3, severity="medium").level == "notify"  # enforcement needs level high by default
    assert _decide(streak=1, severity="medium", config=replace(CONFIG, enforce_on="medium")).level == "notify"


def test_two_families_enforce_but_correlated_shift_signals_do_not() -> None:
    assert _decide(fired=["boundary", "ood"]).level == "notify"  # both react to benign capture shift
    decision = _decide(fired=["ood", "prada"])
    assert decision.level == "enforce" and "2 independent signal families" in decision.reason
    assert _decide(fired=["ood", "new-signal"]).level == "enforce"  # an unlisted signal is its own family


@pytest.mark.parametrize(
    "kw, level, why",
    [
        ({"tier": ClientTier(tier="allowlisted")}, "observe", "allowlisted"),
        ({"config": replace(CONFIG, ceiling="observe")}, "observe", "ceiling"),
        ({"config": replace(CONFIG, ceiling="notify")}, "notify", "ceiling is notify"),
        ({"config": replace(CONFIG, enforce_on="")}, "notify", "never"),
        ({"enforcement_reverted": True}, "notify", "reverted"),
    ],
)
def test_ceilings_tiers_and_reverts(kw: dict[str, Any], level: str, why: str) -> None:
    decision = _decide(streak=5, **kw)
    assert decision.level == level and why in decision.reason


def test_declared_volume_keeps_a_volume_only_detection_at_observe() -> None:
    sweep = {
        "signal": "sweep",
        "p_value": 4e-9,
        "evidence": {
            "volume_last_day": 9000.0,
            "volume_p": 1e-9,
            "sparse_p": 0.5,
            "collinear_p": 0.4,
            "coverage_p": 0.3,
        },
    }
    bulk = ClientTier(tier="bulk", expected_daily_queries=10_000)
    assert _decide(fired=["sweep"], signals=[sweep], tier=bulk, streak=9).level == "observe"
    assert _decide(fired=["sweep"], signals=[sweep], tier=ClientTier(), streak=9).level == "enforce"
    over = {**sweep, "evidence": {**sweep["evidence"], "volume_last_day": 20_000.0}}
    assert _decide(fired=["sweep"], signals=[over], tier=bulk, streak=9).level == "enforce"
    steps = {**sweep, "evidence": {**sweep["evidence"], "sparse_p": 1e-12}}  # the steps drove it, not volume
    assert _decide(fired=["sweep"], signals=[steps], tier=bulk, streak=9).level == "enforce"


def test_streak_counts_consecutive_tests_over_the_threshold() -> None:
    assert _streak(2, 0, 0, last_alerted=False) == 2  # no test in the batch: unchanged
    assert _streak(2, 1, 1, last_alerted=True) == 3
    assert _streak(2, 3, 3, last_alerted=True) == 5
    assert _streak(2, 3, 2, last_alerted=True) == 1  # order within the batch unknown: only the last counts
    assert _streak(7, 2, 1, last_alerted=False) == 0


def test_tier_records_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="tier"):
        ClientTier.from_dict({"tier": "gold"})
    with pytest.raises(ValueError, match="expected_daily_queries"):
        ClientTier.from_dict({"expected_daily_queries": 0})
