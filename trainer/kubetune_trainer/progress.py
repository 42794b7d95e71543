"""The run's progress as one record, updated from the transformers Trainer's callbacks.

The metrics endpoint, the status reporter and the console all read this record; the callback is
the only writer. Nothing here blocks a training step: listeners only copy numbers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.api import now_rfc3339

GIB = 1024**3


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str
    time: str


@dataclass(frozen=True)
class Progress:
    """A snapshot of the run; every field is None until it is known."""

    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    first_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_total: int = 0  # across resumes: a resumed run starts from its checkpoint's count
    tokens_before_resume: int = 0  # of tokens_total, those trained before this attempt
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    gpu_allocated_bytes: int | None = None
    gpu_reserved_bytes: int | None = None
    gpu_peak_bytes: int | None = None
    checkpoints_saved: int = 0
    last_checkpoint: Checkpoint | None = None
    started: bool = False
    finished: bool = False

    @property
    def percent(self) -> str | None:
        if not self.total_steps:
            return None
        return f"{min(100, math.floor(100 * self.step / self.total_steps))}%"


Listener = Callable[[Progress, str | None], None]
"""Called with the new snapshot and a milestone name (start, checkpoint, end) or None."""


def gpu_memory() -> dict[str, int | None]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu_allocated_bytes": None, "gpu_reserved_bytes": None, "gpu_peak_bytes": None}
    return {
        "gpu_allocated_bytes": torch.cuda.memory_allocated(),
        "gpu_reserved_bytes": torch.cuda.memory_reserved(),
        "gpu_peak_bytes": torch.cuda.max_memory_reserved(),
    }


def gpu_peak_allocated_bytes() -> int | None:
    """The most the allocator handed out at once: the peak without fragmentation (what the estimator counts)."""
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


@dataclass
class ProgressTracker:
    """Holds the latest Progress and tells the listeners about every change."""

    listeners: list[Listener] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, milestone: str | None = None, **changes: Any) -> Progress:
        with self._lock:
            self.progress = replace(self.progress, **changes)
            snapshot = self.progress
        for listener in self.listeners:
            listener(snapshot, milestone)
        return snapshot


class ProgressCallback(TrainerCallback):
    """Feeds the Trainer's logs, steps and saves into a ProgressTracker."""

    def __init__(self, tracker: ProgressTracker) -> None:
        self.tracker = tracker
        self._window_start: tuple[float, int, int] | None = None  # (time, tokens, step) at the last log

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tokens = state.num_input_tokens_seen  # restored from the checkpoint on a resume
        self._window_start = (time.monotonic(), tokens, state.global_step)
        self.tracker.update("start", started=True, step=state.global_step, total_steps=state.max_steps,
                            tokens_total=tokens, tokens_before_resume=tokens)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        changes: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, **gpu_memory()}
        for key, name in (("loss", "loss"), ("eval_loss", "eval_loss"), ("learning_rate", "learning_rate"),
                          ("grad_norm", "grad_norm")):
            if key in logs:
                changes[name] = float(logs[key])
        if "loss" in logs and self.tracker.progress.first_loss is None:
            changes["first_loss"] = float(logs["loss"])
        if "num_tokens" in logs:  # the non-padding tokens trained on, across resumes (KubetuneSFTTrainer)
            changes.update(self._throughput(args, state, int(logs["num_tokens"])))
        self.tracker.update(None, **changes)

    def _throughput(self, args: Any, state: Any, tokens: int) -> dict[str, Any]:
        now, step = time.monotonic(), state.global_step
        changes: dict[str, Any] = {"tokens_total": tokens}
        if self._window_start is not None and step > self._window_start[2]:
            started, tokens_before, step_before = self._window_start
            elapsed = max(now - started, 1e-9)
            seconds_per_step = elapsed / (step - step_before)
            changes["tokens_per_second"] = (tokens - tokens_before) / elapsed
            samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            changes["samples_per_second"] = (step - step_before) * samples_per_step / elapsed
            changes["eta_seconds"] = max(0, state.max_steps - step) * seconds_per_step
            self._window_start = (now, tokens, step)
        return changes

    def checkpoint_saved(self, step: int, folder: Path) -> None:
        """A checkpoint is complete (KubetuneSFTTrainer's CheckpointWrites tells: at once when written synchronously,
        when the write ends when written in the background)."""
        current = self.tracker.progress
        self.tracker.update(
            "checkpoint",
            step=max(current.step, step),
            checkpoints_saved=current.checkpoints_saved + 1,
            last_checkpoint=Checkpoint(step, str(folder), now_rfc3339()),
        )

