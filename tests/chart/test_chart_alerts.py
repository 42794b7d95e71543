"""The chart's PrometheusRule: promtool checks the rendered rules and runs the unit tests in
alerts-test.yaml against them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.conftest import VALUES_MATRIX, Manifest, Render, only

ALERTS = {
    "FineTuneJobFailed",
    "TrainingStalled",
    "LossIsNaN",
    "GPUMemoryAboveEstimate",
    "OperatorDown",
    "ReconcileErrors",
}
UNIT_TESTS = Path(__file__).with_name("alerts-test.yaml")
MONITORED_MATRIX = {
    name: values for name, values in VALUES_MATRIX.items() if values.get("prometheus", {}).get("enabled")
}


def rules_file(objects: list[Manifest], directory: Path) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rules file."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": only(objects, "PrometheusRule")["spec"]["groups"]}))
    return path


def alert_rules(objects: list[Manifest]) -> list[dict[str, Any]]:
    return [rule for group in only(objects, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


def test_the_chart_ships_every_alert_of_the_issue(monitored_objects: list[Manifest]) -> None:
    assert {rule["alert"] for rule in alert_rules(monitored_objects)} == ALERTS


def test_every_alert_has_a_severity_a_summary_and_a_description(monitored_objects: list[Manifest]) -> None:
    for rule in alert_rules(monitored_objects):
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("values", list(MONITORED_MATRIX.values()), ids=list(MONITORED_MATRIX))
def test_promtool_accepts_the_rendered_rules(
    render: Render, promtool: str, tmp_path: Path, values: dict[str, Any]
) -> None:
    path = rules_file(render(values), tmp_path)
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_thresholds_and_labels_come_from_values(render: Render) -> None:
    values = {"prometheus": {"enabled": True, "alerts": {"trainingStalledMinutes": 45, "labels": {"team": "ml"}}}}
    rules = {rule["alert"]: rule for rule in alert_rules(render(values))}
    assert "[45m]" in rules["TrainingStalled"]["expr"] and "offset 45m" in rules["TrainingStalled"]["expr"]
    assert all(rule["labels"]["team"] == "ml" for rule in rules.values())
    assert not alert_rules(render({"prometheus": {"enabled": True}}))[0]["labels"].get("team")


def test_alerts_fire_when_they_should_and_stay_quiet_otherwise(
    monitored_objects: list[Manifest], promtool: str, tmp_path: Path
) -> None:
    rules_file(monitored_objects, tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    result = subprocess.run(
        [promtool, "test", "rules", UNIT_TESTS.name], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in unit_tests for case in test["alert_rule_test"]}
    assert tested == ALERTS
