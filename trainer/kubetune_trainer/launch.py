"""Multi-GPU on one node: `python -m kubetune_trainer` re-executes itself under torchrun, one
process per GPU; each process then finds RANK/LOCAL_RANK/WORLD_SIZE in its environment."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from kubetune.api import FineTuneJobSpec


def needs_launcher(spec: FineTuneJobSpec, env: Mapping[str, str]) -> bool:
    """Several GPUs asked for, and this process is not already one of torchrun's workers."""
    return spec.resources.gpus > 1 and "LOCAL_RANK" not in env


def torchrun_command(processes: int) -> list[str]:
    """torchrun on this node with one worker per GPU, each running the trainer module."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", "kubetune_trainer",
    ]
