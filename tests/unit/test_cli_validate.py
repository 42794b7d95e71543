"""`kubetune validate` as a user runs it: exit codes, one line per problem, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# A subprocess that imports torch (and may train) takes seconds on a quiet machine and minutes on shared cores;
# the limit only catches a hang.
SUBPROCESS_TIMEOUT_SECONDS = 600

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(str(p) for p in (REPO / "manifests" / "examples").glob("*.yaml"))
VALID = """apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: ok}
spec: {model: {name: a/b}, dataset: {name: c/d}, training: {preset: quick-test}}
"""


def kubetune(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=SUBPROCESS_TIMEOUT_SECONDS, check=False)


def test_every_example_is_valid() -> None:
    result = kubetune("validate", "-f", *EXAMPLES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(EXAMPLES)


CASES: list[tuple[str, str, list[str]]] = [
    ("malformed YAML names the line", "spec: [\n", ["-: not valid YAML (line 2, column 1)"]),
    ("an empty file says it holds nothing", "", ["-: holds no YAML document"]),
    ("a list document is not a FineTuneJob", "- a\n", ["-: (document): must be a mapping"]),
    ("a second document of another kind is named by its number", VALID + "---\napiVersion: v1\nkind: Pod\n",
     ["-#2: apiVersion: must be kubetune.io/v1alpha1; got 'v1'", "-#2: kind: must be FineTuneJob; got 'Pod'"]),
    ("two problems give two lines", VALID.replace("preset: quick-test", "batchSize: 0, optimizer: lion"),
     ["-: spec.training.batchSize: must be at least 1", "-: spec.training.optimizer: must be one of"]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problems_exit_1_with_one_line_each(text: str, expected: list[str]) -> None:
    result = kubetune("validate", "-f", "-", stdin=text)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = kubetune("validate", "-f", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "nope.yaml: cannot read" in result.stderr and "Traceback" not in result.stderr


def test_show_effective_prints_the_resolved_spec() -> None:
    result = kubetune("validate", "-f", "-", "--show-effective", stdin=VALID)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout.split("---")[0])
    training = effective["spec"]["training"]
    assert (training["maxSteps"], training["saveSteps"], training["learningRate"]) == (30, 10, 2e-4)
    assert effective["spec"]["method"]["lora"]["alpha"] == 32
