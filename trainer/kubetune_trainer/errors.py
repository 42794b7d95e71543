"""Failures the trainer classifies: each has an exit code and a reason (contract.ExitCode), and ends
the process with a JSON termination message the operator reads."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.contract import EXIT_CODE_REASONS, ExitCode

# The kubelet reads at most 4096 bytes of the termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class TrainerError(Exception):
    """A failure with a known cause; `message` says what happened and what to do."""

    exit_code = ExitCode.UNEXPECTED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        return str(EXIT_CODE_REASONS.get(self.exit_code, "Unknown"))


class ConfigError(TrainerError):
    exit_code = ExitCode.CONFIG_ERROR


class DatasetError(TrainerError):
    exit_code = ExitCode.DATASET_ERROR


class ModelLoadError(TrainerError):
    exit_code = ExitCode.MODEL_LOAD_ERROR


class GpuOutOfMemoryError(TrainerError):
    exit_code = ExitCode.OUT_OF_MEMORY


class TrainingInterruptedError(TrainerError):
    exit_code = ExitCode.INTERRUPTED


class CheckpointWriteError(TrainerError):
    """A checkpoint's background write failed (a full disk, a lost volume): the run stops, and the next attempt
    resumes from the checkpoint before it. Retryable, as any unclassified failure (exit 1)."""


def termination_message(reason: str, message: str) -> str:
    """The JSON the operator reads from the container's termination message, within the kubelet's limit."""
    text = json.dumps({"reason": reason, "message": message})
    while len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        message = message[: len(message) * 3 // 4] + "..."
        text = json.dumps({"reason": reason, "message": message})
    return text


def write_termination_message(path: Path, reason: str, message: str) -> bool:
    """Write the message where the kubelet looks for it; False when that path is not writable (local runs)."""
    try:
        path.write_text(termination_message(reason, message), encoding="utf-8")
    except OSError:
        return False
    return True
