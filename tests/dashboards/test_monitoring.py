"""Monitoring is tested code: alert rules pass promtool's unit tests; the dashboard queries real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DASH = Path(__file__).resolve().parents[2] / "dashboards"
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (.ci/run installs it)")
def test_alert_rules_pass_promtool_unit_tests() -> None:
    subprocess.run([PROMTOOL, "check", "rules", str(DASH / "alerts.rules.yml")], check=True)  # type: ignore[list-item]
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(DASH / "tests" / "alerts.test.yml")],  # type: ignore[list-item]
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"modelcustody_[a-z_]+", text))


def test_dashboard_and_rules_only_use_metrics_the_code_exports() -> None:
    """A renamed metric must not leave a dashboard panel or alert silently empty."""
    code = "".join(p.read_text() for p in Path(DASH.parent).glob("**/*.py") if ".venv" not in p.parts)
    exported = _metric_names_in(code)
    used = _metric_names_in((DASH / "alerts.rules.yml").read_text())
    dashboard = json.loads((DASH / "grafana/dashboards/modelcustody-overview.json").read_text())
    used |= _metric_names_in(json.dumps(dashboard))
    suffixes = ("_bucket", "_count", "_sum")

    def is_exported(name: str) -> bool:
        return name in exported or any(name.endswith(s) and name[: -len(s)] in exported for s in suffixes)

    missing = {m for m in used if not is_exported(m)}
    assert not missing, f"dashboards use metrics no component exports: {sorted(missing)}"


RULES = [rule for group in __import__("yaml").safe_load((DASH / "alerts.rules.yml").read_text())["groups"]
         for rule in group["rules"]]


def test_every_rule_has_a_runbook_anchor_in_operations_md() -> None:
    operations = (DASH.parent / "docs/operations.md").read_text()
    # GitHub's anchors: headings lower-cased, spaces to '-', punctuation dropped.
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", operations, flags=re.M)}
    for rule in RULES:
        url = rule["annotations"].get("runbook_url", "")
        assert url.startswith("docs/operations.md#"), f"{rule['alert']}: no runbook_url"
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: {url} names no heading of docs/operations.md"


def test_every_rule_has_a_promtool_test_that_sees_it_fire() -> None:
    import yaml

    tests = yaml.safe_load((DASH / "tests" / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    missing = {rule["alert"] for rule in RULES} - fired
    assert not missing, f"rules no promtool test sees firing: {sorted(missing)}"


def test_dashboard_panels_have_units_and_follow_the_job_and_instance_variables() -> None:
    dashboard = json.loads((DASH / "grafana/dashboards/modelcustody-overview.json").read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"job", "instance"}
    for panel in dashboard["panels"]:
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        for target in panel["targets"]:
            expr = target["expr"]
            # rate() over Grafana's interval (at least four scrapes at any zoom); an hour only for audits, which
            # are rare enough that a shorter window is mostly empty.
            for window in re.findall(r"rate\([^\[]*\[([^\]]+)\]", expr):
                assert window in ("$__rate_interval", "1h"), f"{panel['title']}: {expr}"
            for selector in re.findall(r"modelcustody_[a-z_]+(\{[^}]*\})?", expr):
                assert 'instance=~"$instance"' in selector, f"{panel['title']}: {expr}"
