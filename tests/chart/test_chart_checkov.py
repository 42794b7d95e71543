"""checkov (framework kubernetes) on the manifests the Helm engine renders for the values matrix.
checkov runs once per session; every failed check must be justified in checkov-skips.yaml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.conftest import REPO, VALUES_MATRIX, render_chart

from kubetune import distributed
from kubetune.manifest_files import load_job
from kubetune.manifests import Owner, build_configmap, build_job, build_trainer_rbac
from kubetune.presets import effective_spec

SKIPS = Path(__file__).with_name("checkov-skips.yaml")
# The trainer Jobs scanned with the chart: one GPU, and a multi-node gang (with its Service).
TRAINER_EXAMPLES = ("qlora-llama-3.1-8b-alpaca.yaml", "multinode-llama-3.1-70b-lora.yaml")
# checkov scans every file in a directory in one run (it takes tens of seconds to start).
CHECKOV_TIMEOUT_SECONDS = 240


@pytest.fixture(scope="session")
def checkov_failures(checkov: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("checkov")
    for index, values in enumerate(VALUES_MATRIX.values()):
        rendered = render_chart(values)
        text = "\n---\n".join(t for path, t in sorted(rendered.items()) if path.endswith(".yaml") and t.strip())
        (directory / f"values-{index}.yaml").write_text(text)
    (directory / "trainer-jobs.yaml").write_text(yaml.safe_dump_all(trainer_objects()))
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


def trainer_objects() -> list[dict[str, Any]]:
    """What the operator creates for the example FineTuneJobs: Job, ConfigMap, trainer identity, Service."""
    objects: list[dict[str, Any]] = []
    for example in TRAINER_EXAMPLES:
        job = load_job(str(REPO / "manifests" / "examples" / example))
        owner = Owner(job.metadata.name, "team-a", "uid-1")
        spec = effective_spec(job.spec)
        built = build_job(owner, spec, 1, image="ghcr.io/kubetune/trainer:0.3.0", status_interval_seconds=30,
                          node_affinity=None)
        objects += [built, build_configmap(owner, spec), *build_trainer_rbac(owner)]
        if distributed.is_multinode(spec):
            objects.append(distributed.build_headless_service(built))
    return objects


def test_checkov_scans_the_trainer_jobs(checkov_failures: list[dict[str, Any]]) -> None:
    assert {"Job" in check["resource"] for check in checkov_failures} == {True, False}


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
