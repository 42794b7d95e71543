"""Checkpoints: find the newest complete one to resume from, and save one on SIGTERM.

The Trainer writes `checkpoint-<step>/` every saveSteps and keeps saveTotalLimit of them. A pod
killed while saving leaves a half-written directory; it is complete only when its trainer state
says the same step and its weights are there, and a half-written one is skipped.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.sharding import SHARDED_WEIGHTS_MARKER

log = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "adapter_model.bin", "pytorch_model.bin", SHARDED_WEIGHTS_MARKER)


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
