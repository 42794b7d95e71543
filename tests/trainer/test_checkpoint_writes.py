"""A full fine-tune writes its checkpoints in the background: complete only once written, rotated after, waited for
before the run ends, a failed write is the run's error, and a resume continues exactly where the write left off."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemWriter

from kubetune import contract
from kubetune_trainer import train
from kubetune_trainer.checkpoint_writes import ASYNC_STATE_DIR, choose_checkpoint_writes, write_failure
from kubetune_trainer.checkpoints import is_complete, newest_complete_checkpoint
from kubetune_trainer.progress import Progress

from .conftest import ContextFactory

FULL = {"method": {"type": "full", "lora": None},
        "training": {"learningRate": 1e-3, "lrScheduler": "linear", "maxSteps": 6, "saveSteps": 3, "loggingSteps": 1}}
# How long each background write is held up in the tests that watch a write in flight: long against the staging of
# the tiny model (milliseconds), short for the test's time.
WRITE_DELAY_SECONDS = 0.5


@pytest.mark.parametrize(
    ("method", "fsdp", "asynchronous"),
    [("full", False, True), ("lora", False, False), ("qlora", False, False), ("full", True, False)],
    ids=["a full fine-tune writes in the background", "lora writes its small adapter at once",
         "qlora writes its small adapter at once", "fsdp keeps accelerate's sharded synchronous writes"],
)
def test_choose_checkpoint_writes(method: str, fsdp: bool, asynchronous: bool) -> None:
    choice = choose_checkpoint_writes(method, fsdp=fsdp)

    assert choice.asynchronous is asynchronous
    assert choice.describe().startswith("checkpoints: written " + ("in the background" if asynchronous else
                                                                    "synchronously"))


@pytest.mark.parametrize(
    ("state_step", "files", "complete"),
    [
        (3, ["model_and_optimizer/__0_0.distcp", "model_and_optimizer/.metadata"], True),
        (3, ["model_and_optimizer/__0_0.distcp", "model_and_optimizer/__1_0.distcp"], False),
        (3, ["model_and_optimizer/.metadata.tmp"], False),
        (None, ["model_and_optimizer/__0_0.distcp", "model_and_optimizer/.metadata"], False),
        (2, ["model_and_optimizer/__0_0.distcp", "model_and_optimizer/.metadata"], False),
        (3, ["scheduler.pt", "rng_state.pth"], False),
    ],
    ids=[
        "a background write that finished has its .metadata: complete",
        "every rank's data written but no .metadata yet: still being written",
        "the .metadata not yet renamed into place: still being written",
        "weights without trainer state are half-written",
        "a trainer state of another step is not this checkpoint's",
        "the small files alone, the write not started, are half-written",
    ],
)
def test_completeness_of_a_background_written_checkpoint(tmp_path: Path, state_step: int | None, files: list[str],
                                                         complete: bool) -> None:
    folder = tmp_path / "checkpoint-3"
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    if state_step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": state_step}))

    assert is_complete(folder) is complete


def _raised(exc: BaseException) -> BaseException:
    """`exc` with a traceback, as a writer raises it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "OSError: [Errno 28] No space left on device"),
        (CheckpointException("write", {1: (PermissionError(13, "Permission denied"), traceback.StackSummary()),
                                       0: (OSError(5, "Input/output error"), traceback.StackSummary())}),
         "rank 0: OSError: [Errno 5] Input/output error"),
    ],
    ids=["a plain error is named with its type", "DCP's per-rank failures show the lowest rank's, without tracebacks"],
)
def test_write_failure(failure: BaseException, expected: str) -> None:
    assert write_failure(_raised(failure)) == expected


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Each background write held up WRITE_DELAY_SECONDS; returns, per write, the complete checkpoints of its output
    directory when the write began."""
    seen: list[list[str]] = []
    write_data = FileSystemWriter.write_data

    def slowed(self: FileSystemWriter, plan: Any, planner: Any) -> Any:
        output = Path(self.path).parent.parent
        seen.append(sorted(path.name for path in output.glob("checkpoint-*") if is_complete(path)))
        time.sleep(WRITE_DELAY_SECONDS)
        return write_data(self, plan, planner)

    monkeypatch.setattr(FileSystemWriter, "write_data", slowed)
    return seen


@pytest.fixture
def sigterm_handler() -> Iterator[None]:
    """The trainer installs its SIGTERM handler in this process; the test's own is restored after."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def sigterm_at(step: int) -> Any:
    """A progress listener that sends this process SIGTERM once the run has logged `step`."""
    sent: list[int] = []

    def listener(progress: Progress, milestone: str | None) -> None:
        if progress.step >= step and not sent:
            sent.append(progress.step)
            os.kill(os.getpid(), signal.SIGTERM)

    return listener


def test_rotation_waits_until_the_newer_checkpoint_is_written(make_context: ContextFactory,
                                                              slow_writes: list[list[str]],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    announced: list[tuple[str, bool]] = []

    def on_checkpoint(progress: Progress, milestone: str | None) -> None:
        if milestone == "checkpoint" and progress.last_checkpoint is not None:
            announced.append((Path(progress.last_checkpoint.path).name,
                              is_complete(Path(progress.last_checkpoint.path))))

    context = make_context({**FULL, "training": {**FULL["training"], "maxSteps": 4, "saveSteps": 2,
                                                 "saveTotalLimit": 1}})
    with caplog.at_level(logging.INFO, logger=train.__name__):
        report = train.run(context, listeners=(on_checkpoint,))

    assert slow_writes == [[], ["checkpoint-2"]], "the last complete checkpoint stays while the next is written"
    assert sorted(path.name for path in context.output_dir.glob("checkpoint-*")) == ["checkpoint-4"]
    assert announced == [("checkpoint-2", True), ("checkpoint-4", True)], "announced once complete"
    assert "checkpoints: written in the background (full fine-tune" in caplog.text
    saved = report["checkpoints"]
    assert saved["async"] is True and saved["saved"] == 2
    # The loop waits for staging, and for a previous write still in flight, never for the whole of every write.
    assert saved["blockedSeconds"] < saved["writeSeconds"] and saved["writeSeconds"] >= 2 * WRITE_DELAY_SECONDS


def test_a_sigterm_stop_exits_once_the_checkpoint_is_written(make_context: ContextFactory, slow_writes: list,
                                                            sigterm_handler: None) -> None:
    context = make_context({**FULL, "training": {**FULL["training"], "maxSteps": 50, "saveSteps": 40}})

    code = train.execute(context, listeners=(sigterm_at(3),))

    assert code == contract.ExitCode.INTERRUPTED
    checkpoint = newest_complete_checkpoint(context.output_dir)
    assert checkpoint is not None and checkpoint.name in {"checkpoint-3", "checkpoint-4"}
    assert (checkpoint / ASYNC_STATE_DIR / ".metadata").is_file()


def test_a_failed_background_write_is_the_runs_error(make_context: ContextFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(self: FileSystemWriter, plan: Any, planner: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSystemWriter, "write_data", no_space)
    context = make_context({**FULL, "training": {**FULL["training"], "saveSteps": 2}})

    code = train.execute(context)

    assert code == contract.ExitCode.UNEXPECTED
    message = json.loads(context.termination_log.read_text())["message"]
    assert message.startswith("checkpoint-2: writing the weights and optimizer state")
    assert "OSError: [Errno 28] No space left on device" in message and "Traceback" not in message
    assert "spec.output.volume" in message
    assert newest_complete_checkpoint(context.output_dir) is None
    assert not (context.output_dir / "checkpoint-6").exists(), "training stops at the next save at the latest"
    assert not (context.output_dir / train.FINAL_DIR).exists()


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(make_context: ContextFactory, tmp_path: Path,
                                                                     sigterm_handler: None) -> None:
    straight = make_context(FULL, output_dir=tmp_path / "straight")
    interrupted = make_context(FULL, output_dir=tmp_path / "interrupted")
    train.run(straight)

    assert train.execute(interrupted, listeners=(sigterm_at(2),)) == contract.ExitCode.INTERRUPTED
    stopped_at = newest_complete_checkpoint(interrupted.output_dir)
    resumed = train.run(interrupted)

    assert stopped_at is not None and resumed["resumed_from"] == str(stopped_at)
    assert resumed["steps"] == 6
    expected = load_file(straight.output_dir / train.FINAL_DIR / "model.safetensors")
    weights = load_file(interrupted.output_dir / train.FINAL_DIR / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
