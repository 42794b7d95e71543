"""The multi-node launch: the rendezvous the operator's env describes, torchrun's arguments, the strategy run."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from kubetune import contract
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.launch import (
    DEFAULT_RDZV_TIMEOUT_SECONDS,
    Rendezvous,
    exit_code_of,
    launch_command,
    needs_launcher,
    parallelism,
    rendezvous_from_env,
    run_under_torchrun,
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
            "--rdzv_conf=join_timeout=600,is_host=false", "--max_restarts=0"} <= set(command)
    assert "--standalone" not in command and command[-2:] == ["-m", "kubetune_trainer"]


def test_one_node_stays_standalone(make_spec: SpecFactory) -> None:
    spec = make_spec({"resources": {"gpus": 4}, "model": {"dtype": "bfloat16"}})

    command = launch_command(spec, {})

    assert "--standalone" in command and "--nproc_per_node=4" in command
    assert not any(part.startswith("--rdzv") for part in command)


@pytest.mark.parametrize(
    ("estimated", "asked", "world", "expected"),
    [
        ("fsdp", "auto", 16, "fsdp"),
        ("ddp", "auto", 16, "ddp"),
        (None, "fsdp", 4, "fsdp"),
        (None, "auto", 4, "ddp"),
        ("fsdp", "fsdp", 1, "single"),
    ],
    ids=[
        "the estimator's fsdp over 2 nodes x 8 GPUs is what runs",
        "the estimator's ddp is what runs",
        "an explicit fsdp runs when the estimator cannot size the model",
        "ddp when nothing chose",
        "one process runs alone",
    ],
)
def test_parallelism(make_spec: SpecFactory, estimated: str | None, asked: str, world: int, expected: str) -> None:
    spec = make_spec({"resources": {"gpus": 8, "nodes": 2}, "training": {"strategy": asked},
                      "model": {"dtype": "bfloat16"}})

    assert parallelism(estimated, spec, world) == expected


def termination_log(tmp_path: Path, content: str | None) -> Path:
    path = tmp_path / "termination-log"
    if content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("returncode", "content", "expected"),
    [
        (0, None, 0),
        (1, '{"reason": "OutOfMemory", "message": "peak 80 GiB"}', contract.ExitCode.OUT_OF_MEMORY),
        (1, '{"reason": "DatasetError", "message": "no column text"}', contract.ExitCode.DATASET_ERROR),
        (1, '{"reason": "Interrupted", "message": "SIGTERM"}', contract.ExitCode.INTERRUPTED),
        (1, '{"reason": "Error", "message": "peer lost"}', 1),
        (1, "not json", 1),
        (1, None, 1),
    ],
    ids=[
        "success stays success",
        "a worker's OOM is exit 13 again, which the Job does not retry",
        "a worker's dataset error is exit 11 again",
        "a worker stopped by SIGTERM is exit 14 again",
        "an unclassified failure keeps torchrun's code",
        "an unreadable message keeps torchrun's code",
        "no message keeps torchrun's code",
    ],
)
def test_exit_code_after_torchrun(tmp_path: Path, returncode: int, content: str | None, expected: int) -> None:
    assert exit_code_of(returncode, termination_log(tmp_path, content)) == expected


def test_a_workers_classified_failure_is_the_launchers_exit_code(tmp_path: Path) -> None:
    log = termination_log(tmp_path, None)
    message = '{"reason": "OutOfMemory", "message": "peak 80 GiB"}'
    worker = f"import pathlib, sys; pathlib.Path({str(log)!r}).write_text({message!r}); sys.exit(1)"

    assert run_under_torchrun([sys.executable, "-c", worker], log) == contract.ExitCode.OUT_OF_MEMORY


def test_sigterm_reaches_torchrun(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = ("import pathlib, signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *_: sys.exit(14))\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             "time.sleep(60)\n")

    def terminate_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_ready, daemon=True).start()

    assert run_under_torchrun([sys.executable, "-c", child], termination_log(tmp_path, None)) == 14
