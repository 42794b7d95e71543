"""`kubetune train` and `kubetune demo` end to end, and SIGTERM: a checkpoint, exit 14, then resume."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune import contract
from kubetune.api import API_VERSION, KIND
from kubetune_trainer.checkpoints import newest_complete_checkpoint

from .conftest import BASE_SPEC, MOUNT, merged

SIGTERM_GRACE_SECONDS = 30  # the Job's terminationGracePeriodSeconds is at least this
# A CLI run loads torch and trains a few hundred tiny steps: 15-25 s on a quiet 2-core machine, several times that
# when the cores are shared; the limit only catches a hang, never a slow machine.
SUBPROCESS_TIMEOUT_SECONDS = 600
PROGRESS_BAR = re.compile(r"^\s*\d+%\|")  # tqdm's bars, the only thing a run may write to stderr


def _manifest(tmp_path: Path, changes: dict) -> Path:
    path = tmp_path / "job.yaml"
    document = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "cli-test"},
                "spec": merged(BASE_SPEC, changes)}
    path.write_text(yaml.safe_dump(document))
    return path


def _kubetune(*args: str) -> list[str]:
    return [sys.executable, "-m", "kubetune.cli", *args]


def _run_kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_kubetune(*args), check=False, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_SECONDS)


def _stderr_lines(stderr: str) -> list[str]:
    """What a run wrote to stderr besides its progress bars: warnings, tracebacks, stray library output."""
    lines = (line.strip() for line in re.split(r"[\r\n]+", stderr))
    return [line for line in lines if line and not PROGRESS_BAR.match(line)]


@pytest.mark.slow  # two trainer runs as processes
def test_sigterm_saves_a_loadable_checkpoint_and_the_next_run_resumes(data_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "output"
    long_run = _manifest(tmp_path, {"training": {"maxSteps": 5000, "saveSteps": 4000}})
    command = _kubetune("train", "-f", str(long_run), "--mount", f"{MOUNT}={data_root}", "--output", str(output))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("step 10/"):
            break
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = process.wait(timeout=SIGTERM_GRACE_SECONDS)

    assert code == contract.ExitCode.INTERRUPTED
    assert time.monotonic() - started < SIGTERM_GRACE_SECONDS
    checkpoint = newest_complete_checkpoint(output)
    assert checkpoint is not None
    stopped_at = int(checkpoint.name.removeprefix("checkpoint-"))
    assert 10 <= stopped_at < 4000
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(data_root / "model"), checkpoint)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())

    resumed = _manifest(tmp_path, {"training": {"maxSteps": stopped_at + 5}})
    finished = _run_kubetune("train", "-f", str(resumed), "--mount", f"{MOUNT}={data_root}", "--output", str(output))

    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"resuming from {checkpoint}" in finished.stdout
    summary = json.loads((output / contract.SUMMARY_FILE_NAME).read_text())
    assert summary["steps"] == stopped_at + 5 and summary["resumed_from"] == str(checkpoint)


@pytest.mark.slow  # two demo runs as processes
@pytest.mark.timeout(3 * SUBPROCESS_TIMEOUT_SECONDS)
def test_demo_fine_tunes_a_tiny_model_shows_its_metrics_and_a_second_run_trains_nothing(tmp_path: Path) -> None:
    finished = _run_kubetune("demo", "--dir", str(tmp_path / "demo"))

    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _stderr_lines(finished.stderr) == []
    out = finished.stdout
    assert "REAL LoRA fine-tune" in out and "TINY random-initialised model" in out
    assert "loss fell:" in out and "trained 200 steps in" in out
    assert "kubetune_train_loss " in out and "kubetune_train_checkpoints_saved_total " in out
    assert f"the demo's files are in {tmp_path / 'demo'}" in out
    summary_file = tmp_path / "demo" / "output" / contract.SUMMARY_FILE_NAME
    summary = summary_file.read_bytes()
    manifest = yaml.safe_load((tmp_path / "demo" / "finetunejob.yaml").read_text())
    assert manifest["spec"]["model"]["path"].startswith(manifest["spec"]["volumes"][0]["mountPath"])

    again = _run_kubetune("demo", "--dir", str(tmp_path / "demo"))

    assert again.returncode == 0, again.stderr[-2000:]
    assert _stderr_lines(again.stderr) == []
    assert "already complete (step 200/200)" in again.stdout and "trained 200 steps" not in again.stdout
    assert summary_file.read_bytes() == summary
    assert not (tmp_path / "demo" / "output" / "checkpoint-201").exists()


def test_train_rejects_a_malformed_mount(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, {})
    finished = _run_kubetune("train", "-f", str(manifest), "--mount", "data")

    assert finished.returncode == 1
    assert "--mount 'data': write it as MOUNT_PATH=DIR" in finished.stderr
