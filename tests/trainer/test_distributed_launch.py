"""The multi-node launch: the rendezvous the operator's env describes, torchrun's arguments, the strategy run."""

from __future__ import annotations

import sys

import pytest

from kubetune import contract
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.launch import (
    DEFAULT_RDZV_TIMEOUT_SECONDS,
    Rendezvous,
    launch_command,
    needs_launcher,
    parallelism,
    rendezvous_from_env,
)

from .conftest import SpecFactory

POD_1 = {
    contract.ENV_RDZV_ENDPOINT: "llama-1-0.llama-1.team-a.svc:29400",
    contract.ENV_RDZV_ID: "llama-1",
    contract.ENV_RDZV_TIMEOUT_SECONDS: "600",
    contract.ENV_JOB_COMPLETION_INDEX: "1",
}


def test_the_operators_env_is_the_rendezvous() -> None:
    assert rendezvous_from_env(POD_1) == Rendezvous("llama-1-0.llama-1.team-a.svc:29400", "llama-1", 1, 600)


def test_a_pod_without_a_timeout_waits_the_default() -> None:
    env = {key: value for key, value in POD_1.items() if key != contract.ENV_RDZV_TIMEOUT_SECONDS}

    rendezvous = rendezvous_from_env(env)

    assert rendezvous is not None and rendezvous.timeout_seconds == DEFAULT_RDZV_TIMEOUT_SECONDS


def test_a_bad_index_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=contract.ENV_JOB_COMPLETION_INDEX):
        rendezvous_from_env({**POD_1, contract.ENV_JOB_COMPLETION_INDEX: "one"})


@pytest.mark.parametrize(
    ("gpus", "env", "expected"),
    [(1, POD_1, True), (0, POD_1, True), (1, {}, False), (8, {**POD_1, "LOCAL_RANK": "3"}, False)],
    ids=[
        "one GPU on each of several nodes still runs under torchrun",
        "a CPU node of a multi-node run (tests) runs under torchrun",
        "one GPU on one node runs in this process",
        "a torchrun worker of a multi-node run does not launch again",
    ],
)
def test_needs_launcher_across_nodes(make_spec: SpecFactory, gpus: int, env: dict[str, str], expected: bool) -> None:
    spec = make_spec({"resources": {"gpus": gpus}, "model": {"dtype": "bfloat16" if gpus else "float32"}})

    assert needs_launcher(spec, env) is expected


def test_each_pod_runs_torchrun_with_a_c10d_rendezvous_on_pod_zero(make_spec: SpecFactory) -> None:
    spec = make_spec({"resources": {"gpus": 8, "nodes": 2}, "model": {"dtype": "bfloat16"}, "maxRetries": 3})

    command = launch_command(spec, POD_1)

    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc_per_node=8", "--node_rank=1", "--rdzv_backend=c10d",
            "--rdzv_endpoint=llama-1-0.llama-1.team-a.svc:29400", "--rdzv_id=llama-1",
            "--rdzv_conf=join_timeout=600", "--max_restarts=0"} <= set(command)
    assert "--standalone" not in command and command[-2:] == ["-m", "kubetune_trainer"]


def test_one_node_stays_standalone(make_spec: SpecFactory) -> None:
    spec = make_spec({"resources": {"gpus": 4}, "model": {"dtype": "bfloat16"}})

    command = launch_command(spec, {})

    assert "--standalone" in command and "--nproc_per_node=4" in command
    assert not any(part.startswith("--rdzv") for part in command)


@pytest.mark.parametrize(
    "case",
    [
        ("fsdp", "auto", 16, True, "fsdp", False),
        ("ddp", "auto", 16, True, "ddp", False),
        (None, "fsdp", 4, True, "fsdp", False),
        (None, "auto", 4, True, "ddp", False),
        ("fsdp", "fsdp", 2, False, "ddp", True),
        ("fsdp", "fsdp", 1, True, "single", False),
    ],
    ids=[
        "the estimator's fsdp over 2 nodes x 8 GPUs is what runs",
        "the estimator's ddp is what runs",
        "an explicit fsdp runs when the estimator cannot size the model",
        "ddp when nothing chose",
        "fsdp on CPU processes runs ddp and says so",
        "one process runs alone",
    ],
)
def test_parallelism(make_spec: SpecFactory, case: tuple[str | None, str, int, bool, str, bool]) -> None:
    estimated, asked, world, on_gpu, expected, noted = case
    spec = make_spec({"resources": {"gpus": 8, "nodes": 2}, "training": {"strategy": asked},
                      "model": {"dtype": "bfloat16"}})

    strategy, note = parallelism(estimated, spec, world, on_gpu=on_gpu)

    assert strategy == expected and (note is not None) is noted
