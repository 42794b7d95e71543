"""Every rank's GPU memory, visible from rank 0 (the only process that serves metrics).

At each log (the Trainer calls on_log on every rank, at the same steps) each rank reads its own GPU's
allocated, reserved and peak bytes and they are gathered to rank 0 over the run's process group: three
ints a rank, at logging cadence. Rank 0 hands them to the metrics endpoint, which shows one sample per
rank (the `rank` label: at most world-size values). On CPU processes nothing is measured, so nothing shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.progress import gpu_memory


@dataclass(frozen=True)
class RankMemory:
    """One rank's GPU memory at a log."""

    rank: int
    allocated_bytes: int
    reserved_bytes: int
    peak_bytes: int


# This process's (allocated, reserved, peak) GPU bytes; None without a GPU.
MemoryReading = tuple[int, int, int] | None


def cuda_memory() -> MemoryReading:
    memory = gpu_memory()
    allocated, reserved, peak = memory["gpu_allocated_bytes"], memory["gpu_reserved_bytes"], memory["gpu_peak_bytes"]
    if allocated is None or reserved is None or peak is None:
        return None
    return allocated, reserved, peak


def rank_memories(readings: Sequence[MemoryReading]) -> list[RankMemory]:
    """The readings gathered in rank order, without the ranks that measured nothing."""
    return [RankMemory(rank, *reading) for rank, reading in enumerate(readings) if reading is not None]


def gather_to_rank_zero(reading: MemoryReading) -> list[RankMemory]:
    """Every rank's reading on rank 0 (a collective: every rank calls it); [] on the other ranks. A single
    process, without a process group, is rank 0 alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return rank_memories([reading])
    is_zero = dist.get_rank() == 0
    gathered: list[Any] = [None] * dist.get_world_size() if is_zero else []
    dist.gather_object(reading, gathered if is_zero else None, dst=0)
    return rank_memories(gathered) if is_zero else []


class RankMemoryCallback(TrainerCallback):
    """Gathers every rank's GPU memory at each log; rank 0 publishes it (to TrainerMetrics.set_ranks)."""

    def __init__(self, publish: Callable[[list[RankMemory]], None], read: Callable[[], MemoryReading] = cuda_memory):
        self.publish = publish
        self.read = read

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        memories = gather_to_rank_zero(self.read())
        if memories:
            self.publish(memories)
