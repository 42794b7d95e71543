"""Checkpoints: find the newest complete one to resume from, and save one on SIGTERM.

The Trainer writes `checkpoint-<step>/` every saveSteps and keeps saveTotalLimit of them. A pod
killed while saving leaves a half-written directory; it is complete only when its trainer state
says the same step and its weights are there, and a half-written one is skipped. Weights are one of
WEIGHT_FILES: the Trainer's files (adapter or model), FSDP's sharded checkpoint, or the weights and
optimizer state a full fine-tune writes in the background (checkpoint_writes.py); a DCP checkpoint
(those two) is there once its `.metadata`, written last, is.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.api import TrainingSpec
from kubetune.contract import SUMMARY_FILE_NAME
from kubetune_trainer.checkpoint_writes import ASYNC_STATE_MARKER
from kubetune_trainer.sharding import SHARDED_WEIGHTS_MARKER

log = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "adapter_model.bin", "pytorch_model.bin", SHARDED_WEIGHTS_MARKER, ASYNC_STATE_MARKER)


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_DIR.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """The trainer state is readable, names this step, and weights sit beside it."""
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = any((path / name).is_file() for name in WEIGHT_FILES)
    return weights and state.get("global_step") == checkpoint_step(path)


def newest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    if not output_dir.is_dir():
        return None
    candidates = [(step, path) for path in output_dir.iterdir() if (step := checkpoint_step(path)) is not None]
    for step, path in sorted(candidates, reverse=True):
        if is_complete(path):
            return path
        log.warning("skipping incomplete checkpoint %s (step %d): it was not fully written", path, step)
    return None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when the file is missing, unreadable or holds something else."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


# The Trainer rounds an epoch count up to whole steps, so a run of `epochs` ends at or just past that epoch; this
# much below it (in epochs, as floats add up) still counts as there.
EPOCH_TOLERANCE = 1e-3


def planned_steps(state: dict[str, Any], training: TrainingSpec) -> int | None:
    """The step the spec's training ends at, for a checkpoint's trainer state: maxSteps when set, else the step
    count the Trainer worked out for its epochs, once the state has reached the spec's epochs (a run whose
    epochs were raised since has not); None when not known."""
    if training.max_steps is not None:
        return training.max_steps
    epoch, planned = state.get("epoch"), state.get("max_steps")
    if isinstance(epoch, int | float) and isinstance(planned, int) and epoch >= training.epochs - EPOCH_TOLERANCE:
        return planned
    return None


@dataclass(frozen=True)
class CompletedRun:
    """A run that already reached its end in this output directory: nothing is left to train."""

    checkpoint: Path
    step: int
    total_steps: int
    summary: dict[str, Any]


def completed_run(output_dir: Path, training: TrainingSpec) -> CompletedRun | None:
    """The finished run in output_dir, or None when there is training left: its newest complete checkpoint reached
    the spec's last step and the training summary (written after the final artefacts) names that step."""
    checkpoint = newest_complete_checkpoint(output_dir)
    if checkpoint is None:
        return None
    state = read_json(checkpoint / TRAINER_STATE) or {}
    step = int(state.get("global_step", 0))
    total = planned_steps(state, training)
    summary = read_json(output_dir / SUMMARY_FILE_NAME)
    if total is None or step < total or summary is None or summary.get("steps") != step:
        return None
    return CompletedRun(checkpoint, step, total, summary)


class StopOnSignal(TrainerCallback):
    """On SIGTERM: finish the current step, save a checkpoint, stop training (the caller then exits 14)."""

    def __init__(self) -> None:
        self.requested = threading.Event()

    def install(self) -> StopOnSignal:
        signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.requested.set()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.requested.is_set():
            control.should_save = True
            control.should_training_stop = True
        return control
