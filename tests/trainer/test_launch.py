"""Several GPUs: the entry point re-executes itself under torchrun; DDP trains with one process each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune import contract
from kubetune.api import API_VERSION, KIND
from kubetune_trainer.launch import needs_launcher, torchrun_command

from .conftest import BASE_SPEC, MOUNT, SpecFactory, merged

# A subprocess that imports torch (and may train) takes seconds on a quiet machine and minutes on shared cores;
# the limit only catches a hang.
SUBPROCESS_TIMEOUT_SECONDS = 600


@pytest.mark.parametrize(
    ("gpus", "env", "expected"),
    [
        (1, {}, False),
        (4, {}, True),
        (4, {"LOCAL_RANK": "2"}, False),
    ],
    ids=[
        "one GPU runs in this process",
        "several GPUs re-execute under torchrun",
        "a torchrun worker does not launch again",
    ],
)
def test_needs_launcher(make_spec: SpecFactory, gpus: int, env: dict[str, str], expected: bool) -> None:
    spec = make_spec({"resources": {"gpus": gpus}, "model": {"dtype": "bfloat16"}})

    assert needs_launcher(spec, env) is expected


def test_torchrun_runs_one_trainer_per_gpu() -> None:
    command = torchrun_command(4)

    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in command and command[-2:] == ["-m", "kubetune_trainer"]


@pytest.mark.slow  # two trainer processes
def test_two_processes_train_together_on_cpu(data_root: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    spec = merged(BASE_SPEC, {"training": {"maxSteps": 10}})
    manifest.write_text(yaml.safe_dump({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "ddp"},
                                        "spec": spec}))
    output = tmp_path / "output"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "kubetune.cli", "train", "-f", str(manifest), "--mount", f"{MOUNT}={data_root}",
               "--output", str(output)]

    finished = subprocess.run(command, check=False, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)

    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((output / contract.SUMMARY_FILE_NAME).read_text())
    rows = 400
    assert summary["steps"] == 10
    assert summary["epochs"] == pytest.approx(10 * 2 * 8 / rows)  # two processes of 8 rows per step
    step_lines = [line for line in finished.stdout.splitlines() if line.startswith("step 10/10")]
    assert len(step_lines) == 1, "only rank 0 prints"
