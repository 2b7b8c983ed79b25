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
