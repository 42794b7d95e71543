"""How checkpoints are written: a full fine-tune's weights and optimizer state in the background.

A full fine-tune's checkpoint is its weights and optimizer states (with AdamW in fp32 16 bytes a parameter: over
100 GB for a 7B model); written by the Trainer, every step waits for the whole write. Here the Trainer writes the
small files of `checkpoint-<step>/` as usual (trainer state, scheduler, RNG), then
torch.distributed.checkpoint.async_save copies the weights and optimizer state to host memory (the only part the
training loop waits for) and writes them to `checkpoint-<step>/model_and_optimizer/` from a background thread while
the next steps run. DCP writes that folder's `.metadata` last, once every rank's part is on disk, so a checkpoint
is complete only when its write finished (checkpoints.is_complete): a pod killed meanwhile leaves an incomplete one,
which a resume skips.

A write in flight is waited for before the next checkpoint starts, and when training ends (the last step, a SIGTERM
stop, an error); a failed write is a CheckpointWriteError. saveTotalLimit's rotation waits for the write too: the
newest complete checkpoint is never deleted while a newer one is being written. A checkpoint is announced (the
`checkpoint` milestone: status.lastCheckpoint, the checkpoints metric) once it is complete.

Under torchrun every rank writes its part over a gloo process group of its own: a background collective on the
training group (NCCL, or the gloo group DDP all-reduces on) could interleave with the training's and deadlock. A
single process needs no process group. LoRA and QLoRA checkpoints hold only the adapter (small) and FSDP's are
sharded writes through accelerate: both stay synchronous.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.context import is_main_process
from kubetune_trainer.errors import CheckpointWriteError

log = logging.getLogger(__name__)

# The folder of a checkpoint that holds its weights and optimizer state (a DCP checkpoint), and the file DCP writes
# last, once every rank's part is written.
ASYNC_STATE_DIR = "model_and_optimizer"
ASYNC_STATE_MARKER = f"{ASYNC_STATE_DIR}/.metadata"
MODEL_KEY, OPTIMIZER_KEY = "model", "optimizer"


@dataclass(frozen=True)
class CheckpointChoice:
    """How this run writes its checkpoints, and why."""

    asynchronous: bool
    reason: str

    def describe(self) -> str:
        """One line for the startup log."""
        return f"checkpoints: written {'in the background' if self.asynchronous else 'synchronously'} ({self.reason})"


def choose_checkpoint_writes(method: str, *, fsdp: bool) -> CheckpointChoice:
    """Background writes for a full fine-tune without FSDP (one process or DDP); synchronous ones otherwise."""
    if fsdp:
        return CheckpointChoice(False, "FSDP: each rank writes its shard through accelerate")
    if method != "full":
        return CheckpointChoice(False, f"spec.method.type {method}: a checkpoint holds the adapter only, a small write")
    return CheckpointChoice(True, "full fine-tune: training waits only for the copy of the weights and optimizer "
                                  "state to host memory; torch.distributed.checkpoint writes them meanwhile")


def is_async_checkpoint(folder: Path) -> bool:
    """A checkpoint whose weights and optimizer state are a DCP checkpoint (complete or not)."""
    return (folder / ASYNC_STATE_DIR).is_dir()


def write_failure(exc: BaseException) -> str:
    """A failed write's cause in one line: DCP's CheckpointException carries each failed rank's error with its
    traceback; the lowest rank's error is the cause shown (the traceback stays out of what a user reads)."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(exc, CheckpointException) and exc.failures:
        rank, (cause, _) = min(exc.failures.items())
        return f"rank {rank}: {type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class CheckpointTiming:
    """One checkpoint's cost: how long the training loop waited in the save, and how long the write took until its
    files were complete (the same for a synchronous write; None while a background write runs)."""

    step: int
    blocked_seconds: float
    write_seconds: float | None = None


@dataclass
class PendingWrite:
    """A background write in flight and what follows it once it succeeded."""

    timing: CheckpointTiming
    folder: Path
    future: Future[Any]
    started: float
    after: Callable[[], None]

    def record_end(self, _: Future[Any]) -> None:
        """The future's done callback (runs on the writing thread): the write's duration, not when it was noticed."""
        self.timing.write_seconds = time.monotonic() - self.started


def training_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The model's and the optimizer's state dicts, keyed by parameter names (so a fresh optimizer can load them);
    the tensors are the live ones, copied when the write stages them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {MODEL_KEY: get_model_state_dict(model), OPTIMIZER_KEY: get_optimizer_state_dict(model, optimizer)}


class CheckpointWrites(TrainerCallback):
    """The run's checkpoint writes: starts background writes, notices their end, keeps their timings and tells the
    listeners of each complete checkpoint (step, folder)."""

    def __init__(self, choice: CheckpointChoice) -> None:
        self.choice = choice
        self.timings: list[CheckpointTiming] = []
        self.listeners: list[Callable[[int, Path], None]] = []
        self._pending: PendingWrite | None = None
        self._group: Any = None
        self._stager: Any = None

    @property
    def writing(self) -> bool:
        """A background write is in flight."""
        return self._pending is not None and not self._pending.future.done()

    def as_summary(self) -> dict[str, Any]:
        """The "checkpoints" entry of training_summary.json: the choice and this attempt's checkpoints' cost."""
        written = [timing.write_seconds for timing in self.timings if timing.write_seconds is not None]
        return {"async": self.choice.asynchronous, "reason": self.choice.reason, "saved": len(self.timings),
                "blockedSeconds": round(sum(timing.blocked_seconds for timing in self.timings), 3),
                "writeSeconds": round(sum(written), 3)}

    def saved(self, step: int, folder: Path, seconds: float) -> None:
        """A checkpoint the Trainer wrote synchronously: complete as it returns."""
        self.timings.append(CheckpointTiming(step, seconds, seconds))
        self._announce(step, folder)

    def process_group(self) -> Any:
        """The gloo group for checkpoint collectives under torchrun (made once, at the same point on every rank: the
        first checkpoint save or load); None for a single process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        if self._group is None:
            self._group = dist.new_group(backend="gloo")
        return self._group

    def _staging(self) -> Any:
        """One stager for the run: its host copy of the weights and optimizer state is allocated (pinned, with CUDA)
        at the first checkpoint and reused by the next ones, which only copy into it (a write in flight is always
        waited for before the next staging). Host memory holds that copy from the first checkpoint on: the peak is
        the same as with a fresh copy per checkpoint, and fresh pages cost each staging their first touch."""
        import torch
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        if self._stager is None:
            self._stager = DefaultStager(StagingOptions(use_pinned_memory=torch.cuda.is_available(),
                                                        use_shared_memory=False, use_async_staging=False,
                                                        use_non_blocking_copy=False))
        return self._stager

    def start(self, step: int, folder: Path, state: dict[str, Any], *, entered: float, started: float,
              after: Callable[[], None]) -> None:
        """Stages `state` to host memory and writes it to folder/model_and_optimizer in the background; `after` runs
        once the write succeeded. `entered`: when the save began (the loop waits from then on); `started`: when this
        checkpoint's own work began (after waiting for the previous write)."""
        import torch.distributed.checkpoint as dcp

        if self._pending is not None:
            raise RuntimeError("a checkpoint write is in flight: wait() for it before starting the next")
        if is_main_process():  # a marker left by an earlier write to this folder would make it look complete
            (folder / ASYNC_STATE_MARKER).unlink(missing_ok=True)
        response = dcp.async_save(state, checkpoint_id=str(folder / ASYNC_STATE_DIR),
                                  process_group=self.process_group(), async_stager=self._staging())
        future = response if isinstance(response, Future) else response.upload_completion
        timing = CheckpointTiming(step, 0.0)
        pending = PendingWrite(timing, folder, future, started, after)
        future.add_done_callback(pending.record_end)
        timing.blocked_seconds = time.monotonic() - entered
        self.timings.append(timing)
        self._pending = pending

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A write that ended since the last step is finished here: a failure stops training at once."""
        if self._pending is not None and self._pending.future.done():
            self._finish(self._pending)

    def wait(self) -> None:
        """Waits for the write in flight, if any; CheckpointWriteError when it failed."""
        if self._pending is not None:
            self._finish(self._pending)

    def end(self, *, quietly: bool = False) -> None:
        """Training ended: waits for the write in flight and frees the host copy. `quietly` on a path that already
        fails: a failed write is logged, the failure in progress stays the error."""
        try:
            self.wait()
        except CheckpointWriteError as exc:
            if not quietly:
                raise
            log.error("%s", exc.message)
        finally:
            if self._stager is not None:
                self._stager.close()
                self._stager = None

    def _finish(self, pending: PendingWrite) -> None:
        self._pending = None
        try:
            pending.future.result()
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            raise CheckpointWriteError(
                f"{pending.folder.name}: writing the weights and optimizer state to {pending.folder / ASYNC_STATE_DIR}"
                f" failed ({write_failure(exc)}); it is incomplete, and the next attempt resumes from the checkpoint "
                f"before it. Check that the output volume (spec.output.volume) has room for two checkpoints and is "
                f"writable"
            ) from exc
        pending.after()
        self._announce(pending.timing.step, pending.folder)

    def _announce(self, step: int, folder: Path) -> None:
        for listener in self.listeners:
            listener(step, folder)

    def load_model(self, model: Any, checkpoint: Path) -> None:
        """The weights of a background-written checkpoint into `model` (every rank reads them)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        weights = get_model_state_dict(model)
        dcp.load({MODEL_KEY: weights}, checkpoint_id=str(checkpoint / ASYNC_STATE_DIR),
                 process_group=self.process_group())
        set_model_state_dict(model, weights)

    def load_optimizer(self, model: Any, optimizer: Any, checkpoint: Path) -> None:
        """The optimizer state of a background-written checkpoint into a fresh optimizer of `model`'s parameters."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        state = get_optimizer_state_dict(model, optimizer)  # a fresh optimizer's state is made (no step) to load into
        dcp.load({OPTIMIZER_KEY: state}, checkpoint_id=str(checkpoint / ASYNC_STATE_DIR),
                 process_group=self.process_group())
        set_optimizer_state_dict(model, optimizer, state)
