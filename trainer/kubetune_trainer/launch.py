"""Several processes: `python -m kubetune_trainer` re-executes itself under torchrun, one process per
GPU; each process then finds RANK/LOCAL_RANK/WORLD_SIZE in its environment.

One node runs torchrun `--standalone`. A multi-node job (the operator set the rendezvous env) runs
torchrun on every pod with a c10d rendezvous on pod 0's stable name; pod 0 hosts the store.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune import contract
from kubetune.api import FineTuneJobSpec
from kubetune_trainer.errors import ConfigError

# Without the operator's value: long enough for pods whose images pull minutes apart.
DEFAULT_RDZV_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class Rendezvous:
    """Where and how this pod meets the other nodes of its Job."""

    endpoint: str  # host:port of pod 0's c10d store
    run_id: str
    node_rank: int
    timeout_seconds: int


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name) or str(default)
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: must be an integer") from None


def rendezvous_from_env(env: Mapping[str, str]) -> Rendezvous | None:
    """The rendezvous the operator gave a multi-node pod; None on a single node."""
    endpoint = env.get(contract.ENV_RDZV_ENDPOINT)
    if not endpoint:
        return None
    return Rendezvous(
        endpoint=endpoint,
        run_id=env.get(contract.ENV_RDZV_ID) or "kubetune",
        node_rank=_int(env, contract.ENV_JOB_COMPLETION_INDEX, 0),
        timeout_seconds=_int(env, contract.ENV_RDZV_TIMEOUT_SECONDS, DEFAULT_RDZV_TIMEOUT_SECONDS),
    )


def processes_per_node(spec: FineTuneJobSpec) -> int:
    """One per GPU; one on a CPU node."""
    return max(1, spec.resources.gpus)


def needs_launcher(spec: FineTuneJobSpec, env: Mapping[str, str]) -> bool:
    """Several GPUs or nodes, and this process is not already one of torchrun's workers."""
    several = spec.resources.gpus > 1 or rendezvous_from_env(env) is not None
    return several and "LOCAL_RANK" not in env


def torchrun_command(processes: int, nodes: int = 1, rendezvous: Rendezvous | None = None) -> list[str]:
    """torchrun with one worker per GPU, each running the trainer module; standalone on one node, else a
    c10d rendezvous (which orders the nodes itself: --node-rank is informational there)."""
    if rendezvous is None:
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={nodes}", f"--node_rank={rendezvous.node_rank}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rendezvous.endpoint}", f"--rdzv_id={rendezvous.run_id}",
            # Pod 0 hosts the store: said outright, since torchrun's guess (does the endpoint resolve to
            # this pod?) fails while the pod's DNS record is not published yet.
            f"--rdzv_conf=join_timeout={rendezvous.timeout_seconds},is_host={str(rendezvous.node_rank == 0).lower()}",
            # A failed worker fails its pod, and the others lose a peer (or pod 0's store) and fail too:
            # the Job replaces the pods, which meet afresh and all resume from the newest checkpoint.
            # (torchrun's own restarts re-use the old store and deadlocked in a test with torch 2.13.)
            "--max_restarts=0",
        ]
    return [
        sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={processes}",
        "-m", "kubetune_trainer",
    ]


def parallelism(estimated: str | None, spec: FineTuneJobSpec, world_size: int) -> str:
    """What the processes run: "single" alone; else the estimator's ddp or fsdp (it sized the job for
    that), an explicit spec.training.strategy when it could not choose (a model it cannot size), or ddp.
    FSDP runs on CPU processes too (sharding.shard_cpu_processes)."""
    if world_size <= 1:
        return "single"
    chosen = estimated if estimated in ("ddp", "fsdp") else spec.training.strategy
    return chosen if chosen in ("ddp", "fsdp") else "ddp"


def launch_command(spec: FineTuneJobSpec, env: Mapping[str, str]) -> list[str]:
    """The torchrun command for this pod."""
    return torchrun_command(processes_per_node(spec), spec.resources.nodes, rendezvous_from_env(env))


def exit_code_of(returncode: int, termination_log: Path) -> int:
    """torchrun exits 1 whatever its workers' exit codes; a worker's termination message (its reason)
    restores the code the Job's podFailurePolicy reads (config, dataset, model, OOM: do not retry)."""
    if returncode == 0:
        return 0
    try:
        message = contract.read_termination_message(termination_log.read_text(encoding="utf-8"))
    except OSError:
        return returncode
    if message is None:
        return returncode
    codes = {str(reason): int(code) for code, reason in contract.EXIT_CODE_REASONS.items()}
    return codes.get(message[0], returncode)


def run_under_torchrun(command: list[str], termination_log: Path) -> int:
    """torchrun as a child process: SIGTERM goes on to it (it stops the workers, which checkpoint), and
    the exit code says what failed."""
    child = subprocess.Popen(command)

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        returncode = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return exit_code_of(returncode, termination_log)
