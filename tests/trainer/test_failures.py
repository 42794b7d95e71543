"""Failures are classified: an exit code per cause and a JSON termination message naming the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune import contract
from kubetune_trainer import train
from kubetune_trainer.errors import TERMINATION_MESSAGE_LIMIT, GpuOutOfMemoryError, termination_message

from .conftest import MOUNT, ContextFactory

# A subprocess that imports torch (and may train) takes seconds on a quiet machine and minutes on shared cores;
# the limit only catches a hang.
SUBPROCESS_TIMEOUT_SECONDS = 600


@pytest.mark.parametrize(
    ("changes", "mounted", "code", "reason", "message"),
    [
        ({"dataset": {"path": f"{MOUNT}/nowhere.jsonl"}}, False, contract.ExitCode.DATASET_ERROR, "DatasetError",
         "nowhere.jsonl does not exist"),
        ({"model": {"path": f"{MOUNT}/no-model"}}, False, contract.ExitCode.MODEL_LOAD_ERROR, "ModelLoadError",
         "no-model is not a directory; check the path and that spec.volumes mounts"),
        ({"model": {"path": f"{MOUNT}/no-model"}}, True, contract.ExitCode.MODEL_LOAD_ERROR, "ModelLoadError",
         f"spec.model.path: {MOUNT}/no-model is not a directory: --mount {MOUNT}="),
        ({"dataset": {"path": None, "url": "http://127.0.0.1:9/train.jsonl?v=2"}}, False,
         contract.ExitCode.DATASET_ERROR, "DatasetError", "spec.dataset.url: http://127.0.0.1:9/train.jsonl (query "
         "hidden): cannot fetch or read it"),
    ],
    ids=["a missing dataset exits 11 with DatasetError",
         "a missing model directory exits 12 with ModelLoadError naming spec.model.path",
         "a missing model directory in a local run names the --mount that maps it",
         "a URL that cannot be fetched exits 11 with DatasetError, the URL redacted"],
)
def test_execute_classifies_failures(make_context: ContextFactory, data_root: Path, *, changes: dict[str, Any],
                                     mounted: bool, code: int, reason: str, message: str) -> None:
    context = make_context(changes, local_mounts={MOUNT: data_root} if mounted else {})

    assert train.execute(context) == code

    assert context.termination_log is not None
    written = json.loads(context.termination_log.read_text())
    assert written["reason"] == reason
    assert message in written["message"]


def test_out_of_memory_names_peak_estimate_and_fixes() -> None:
    failure = train.out_of_memory(21.5, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))

    assert isinstance(failure, GpuOutOfMemoryError) and failure.exit_code == contract.ExitCode.OUT_OF_MEMORY
    assert "kubetune's estimate 21.5 GiB" in failure.message
    assert "peak reserved" in failure.message and "spec.training.batchSize" in failure.message


def test_termination_message_fits_the_kubelet_limit() -> None:
    text = termination_message("DatasetError", "x" * 10_000)

    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(text)["reason"] == "DatasetError"


def _run_module(env_changes: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, str]]:
    log = tmp_path / "termination-log"
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(log), **env_changes}
    command = [sys.executable, "-m", "kubetune_trainer"]
    process = subprocess.run(command, env=env, check=False, capture_output=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    return process.returncode, json.loads(log.read_text())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"spec": {"model": {"name": "x"}}}, "spec.dataset: is required"),
        (["not", "a", "mapping"], "must be a mapping: the spec, or a FineTuneJob"),
    ],
    ids=["an invalid spec exits 10 naming the field", "a file without a spec exits 10"],
)
def test_the_entry_point_rejects_bad_specs(tmp_path: Path, document: Any, message: str) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(document))

    code, written = _run_module({contract.ENV_SPEC_PATH: str(spec_file)}, tmp_path)

    assert code == contract.ExitCode.CONFIG_ERROR
    assert written["reason"] == "ConfigError" and message in written["message"]


def test_out_of_memory_during_training_exits_13(make_context: ContextFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def run_out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train.KubetuneSFTTrainer, "train", run_out_of_memory)
    context = make_context()

    assert train.execute(context) == contract.ExitCode.OUT_OF_MEMORY

    assert context.termination_log is not None
    written = json.loads(context.termination_log.read_text())
    assert written["reason"] == "OutOfMemory"
    assert "kubetune's estimate" in written["message"] and "Tried to allocate 20.00 GiB" in written["message"]
