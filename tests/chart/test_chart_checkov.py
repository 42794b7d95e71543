"""checkov (framework kubernetes) on the manifests the Helm engine renders for the values matrix.
checkov runs once per session; every failed check must be justified in checkov-skips.yaml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.conftest import VALUES_MATRIX, render_chart

SKIPS = Path(__file__).with_name("checkov-skips.yaml")
# checkov scans every file in a directory in one run (it takes tens of seconds to start).
CHECKOV_TIMEOUT_SECONDS = 240


@pytest.fixture(scope="session")
def checkov_failures(checkov: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("checkov")
    for index, values in enumerate(VALUES_MATRIX.values()):
        rendered = render_chart(values)
        text = "\n---\n".join(t for path, t in sorted(rendered.items()) if path.endswith(".yaml") and t.strip())
        (directory / f"values-{index}.yaml").write_text(text)
    result = subprocess.run(
        [checkov, "--framework", "kubernetes", "--directory", str(directory), "--output", "json",
         "--quiet", "--compact", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=CHECKOV_TIMEOUT_SECONDS,
        check=False,
        env={"PATH": "/usr/bin:/bin", "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"},
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert reports and all(report["summary"]["resource_count"] > 0 for report in reports), result.stdout[:2000]
    return [check for report in reports for check in report["results"]["failed_checks"]]


def test_checkov_finds_nothing_that_is_not_justified(checkov_failures: list[dict[str, Any]]) -> None:
    skips = yaml.safe_load(SKIPS.read_text())
    unjustified = sorted(
        f"{check['check_id']} {check['check_name']} on {check['resource']}"
        for check in checkov_failures
        if check["check_id"] not in skips
    )
    assert unjustified == []


def test_every_skip_is_still_needed_and_has_a_reason(checkov_failures: list[dict[str, Any]]) -> None:
    skips = yaml.safe_load(SKIPS.read_text())
    assert all(len(reason) > 40 for reason in skips.values())
    assert set(skips) - {check["check_id"] for check in checkov_failures} == set()
