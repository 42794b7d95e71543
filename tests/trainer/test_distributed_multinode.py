"""Two node-ranks on this machine, each its own torchrun (as two pods of an Indexed Job are), meeting at
a c10d rendezvous on localhost and training the tiny model over gloo: with DDP, and with FSDP (LoRA and
full fine-tuning; sharded checkpoints, the final model gathered once).

A small stand-in for the Job controller replaces a node process that fails, as the Indexed Job replaces a
failed pod; the test kills one node mid-training and checks that every rank resumes from the same step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors import safe_open

from kubetune import contract
from kubetune.api import API_VERSION, KIND
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec
from kubetune_trainer.checkpoints import newest_complete_checkpoint
from kubetune_trainer.launch import launch_command
from kubetune_trainer.sharding import SHARDED_WEIGHTS_MARKER

from .conftest import BASE_SPEC, MOUNT, merged

pytestmark = pytest.mark.slow  # several torchrun processes per test
NODES = 2
# Long enough for a slow CI machine to import torch and transformers on both nodes, short enough to
# fail fast when a rendezvous can never complete.
RDZV_TIMEOUT_SECONDS = 60
RUN_TIMEOUT_SECONDS = 600  # a hang guard: two nodes of torch on two shared cores can take minutes
# The Job controller's part: replacements it makes before the test gives up (a gang failure may fail both),
# and its back-off before replacing a failed pod. Like the real controller's (10 s, 20 s, 40 s, ...) it
# doubles with each failure of that index: a replacement that joined the old, closing rendezvous fails
# once more, and the next one waits long enough for the other nodes to have failed and meet afresh.
MAX_REPLACEMENTS = 8
REPLACEMENT_DELAY_SECONDS = 2.0
MAX_REPLACEMENT_DELAY_SECONDS = 16.0
RESUMING = re.compile(r"resuming from .*checkpoint-(\d+)")
# How each run is distributed: (strategy, method) -> spec changes.
SETUPS: dict[str, dict[str, Any]] = {
    "ddp lora": {"training": {"strategy": "ddp"}},
    "fsdp lora": {"training": {"strategy": "fsdp"}},
    "fsdp full": {"training": {"strategy": "fsdp"}, "method": {"type": "full", "lora": None}},
    # checkpoints written in the background, over a gloo group of their own beside DDP's (checkpoint_writes.py)
    "ddp full": {"training": {"strategy": "ddp"}, "method": {"type": "full", "lora": None}},
}
# What the final directory holds for each method, written once by rank 0.
FINAL_WEIGHTS = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}
EMBEDDING = "model.embed_tokens.weight"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@dataclass
class IndexedJob:
    """One process per node index, replaced when it fails (restartPolicy Never + the Job controller)."""

    commands: list[list[str]]
    port: int  # of the c10d store
    logs: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    failed_at: dict[int, float] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    log_files: list[Path] = field(default_factory=list)
    replacements: int = 0

    def start(self, index: int) -> None:
        log = self.logs / f"node-{index}-{len(self.log_files)}.log"
        self.log_files.append(log)
        with log.open("wb") as sink:
            self.processes[index] = subprocess.Popen(self.commands[index], stdout=sink, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        """Pod 0 first: on a cluster only pod 0's name is the endpoint, so only it hosts the c10d store
        (on this machine every node's address matches 127.0.0.1, and the first to bind hosts it)."""
        self.start(0)
        wait_until(lambda: listening(self.port) or self.processes[0].poll() is not None)
        for index in range(1, NODES):
            self.start(index)

    def kill(self, index: int) -> None:
        """What a pod's end does: every process of the node dies (torchrun starts workers in new sessions)."""
        root = self.processes[index].pid
        for pid in [root, *descendants(root)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def run_to_completion(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            codes = {index: process.poll() for index, process in self.processes.items()}
            if all(code == 0 for code in codes.values()):
                return
            now = time.monotonic()
            for index, code in codes.items():
                if code in (None, 0):
                    continue
                failed_at = self.failed_at.setdefault(index, now)
                backoff = REPLACEMENT_DELAY_SECONDS * 2 ** self.failures.get(index, 0)
                if now - failed_at >= min(backoff, MAX_REPLACEMENT_DELAY_SECONDS):
                    assert self.replacements < MAX_REPLACEMENTS, self.tail()
                    self.replacements += 1
                    self.failures[index] = self.failures.get(index, 0) + 1
                    del self.failed_at[index]
                    self.start(index)
            time.sleep(0.2)
        raise AssertionError(f"the job did not finish in time\n{self.tail()}")

    def stop(self) -> None:
        for index, process in self.processes.items():
            if process.poll() is None:
                self.kill(index)
                process.wait()

    def text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.log_files)

    def tail(self) -> str:
        return self.text()[-4000:]


def node_commands(spec: dict[str, Any], port: int, manifest: Path, data_root: Path, output: Path) -> list[list[str]]:
    """Each node's launch as its pod's, running `kubetune train` (which maps /data here) as the worker."""
    env = {contract.ENV_RDZV_ENDPOINT: f"127.0.0.1:{port}", contract.ENV_RDZV_ID: "test",
           contract.ENV_RDZV_TIMEOUT_SECONDS: str(RDZV_TIMEOUT_SECONDS)}
    parsed = effective_spec(parse_spec(spec))
    commands = []
    for index in range(NODES):
        launch = launch_command(parsed, {**env, contract.ENV_JOB_COMPLETION_INDEX: str(index)})
        assert launch[-2:] == ["-m", "kubetune_trainer"]
        commands.append([*launch[:-2], "-m", "kubetune.cli", "train", "-f", str(manifest),
                         "--mount", f"{MOUNT}={data_root}", "--output", str(output)])
    return commands


@pytest.fixture
def job_of(data_root: Path, tmp_path: Path) -> Iterator[Any]:
    jobs: list[IndexedJob] = []

    def make(setup: str, training: dict[str, Any]) -> IndexedJob:
        # One GPU on each of two nodes: what the rendezvous spans (the processes run on the CPU here).
        spec = merged(merged(BASE_SPEC, SETUPS[setup]),
                      {"training": training, "resources": {"gpus": 1, "nodes": NODES}})
        manifest = tmp_path / "job.yaml"
        manifest.write_text(yaml.safe_dump({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "mn"},
                                            "spec": spec}))
        port = free_port()
        job = IndexedJob(node_commands(spec, port, manifest, data_root, tmp_path / "output"), port, tmp_path)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.stop()


def summary_of(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "output" / contract.SUMMARY_FILE_NAME).read_text())


def sharded_checkpoints(output: Path) -> bool:
    checkpoints = list(output.glob("checkpoint-*"))
    return bool(checkpoints) and all((checkpoint / SHARDED_WEIGHTS_MARKER).is_file() for checkpoint in checkpoints)


def assert_whole(weights: Path, model: Path) -> None:
    """The final weights are the whole model or adapter, not one rank's shard."""
    with safe_open(str(weights), framework="pt") as saved:
        shapes = {name: tuple(saved.get_slice(name).get_shape()) for name in saved.keys()}  # noqa: SIM118
    if weights.name == FINAL_WEIGHTS["lora"]:
        assert shapes and all("lora_" in name for name in shapes), shapes
        lora_a = [shape for name, shape in shapes.items() if "lora_A" in name]
        assert lora_a and all(shape[0] == BASE_SPEC["method"]["lora"]["rank"] for shape in lora_a), shapes
    else:
        config = json.loads((model / "config.json").read_text())
        assert shapes[EMBEDDING] == (config["vocab_size"], config["hidden_size"]), shapes


@pytest.mark.parametrize(
    "setup",
    ["ddp lora", pytest.param("fsdp lora", marks=pytest.mark.extended), "fsdp full",
     pytest.param("ddp full", marks=pytest.mark.extended)],
    ids=[
        "ddp: two nodes train a lora adapter together",
        "fsdp: two nodes shard a lora fine-tune",
        "fsdp: two nodes shard a full fine-tune",
        "ddp: two nodes fine-tune fully, writing checkpoints in the background",
    ],
)
def test_two_nodes_train_together_and_the_loss_falls(job_of: Any, data_root: Path, tmp_path: Path, setup: str) -> None:
    job = job_of(setup, {"maxSteps": 20, "saveSteps": 10})
    job.start_all()

    job.run_to_completion(time.monotonic() + RUN_TIMEOUT_SECONDS)

    summary = summary_of(tmp_path)
    assert job.replacements == 0, job.tail()
    assert summary["steps"] == 20
    assert summary["epochs"] == pytest.approx(20 * NODES * 8 / 400)  # both nodes' 8 rows a step, 400 rows
    assert summary["final_loss"] < summary["first_loss"]
    assert len(re.findall(r"step 20/20 +loss", job.text())) == 1, "only global rank 0 prints"
    assert sharded_checkpoints(tmp_path / "output") is setup.startswith("fsdp")
    assert summary["checkpoints"]["async"] is (setup == "ddp full")
    assert_whole(tmp_path / "output" / "final" / FINAL_WEIGHTS[summary["method"]], data_root / "model")


@pytest.mark.parametrize(
    "setup",
    [pytest.param("ddp lora", marks=pytest.mark.extended), "fsdp full",
     pytest.param("ddp full", marks=pytest.mark.extended)],
    ids=["ddp: every rank resumes from the same checkpoint",
         "fsdp: every rank resumes from the same sharded checkpoint",
         "ddp: every rank resumes from the same checkpoint written in the background"],
)
def test_a_killed_node_restarts_every_rank_from_the_same_checkpoint(job_of: Any, tmp_path: Path, setup: str) -> None:
    job = job_of(setup, {"maxSteps": 60, "saveSteps": 10, "saveTotalLimit": 2})
    job.start_all()
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    wait_until(lambda: newest_complete_checkpoint(tmp_path / "output") is not None)
    assert job.processes[1].poll() is None, job.tail()

    job.kill(1)
    job.run_to_completion(deadline)

    resumed_steps = [int(step) for step in RESUMING.findall(job.text())]
    assert job.replacements >= 1
    assert len(resumed_steps) >= NODES and len(set(resumed_steps)) == 1, job.tail()
    summary = summary_of(tmp_path)
    assert summary["steps"] == 60 and summary["resumed_from"].endswith(f"checkpoint-{resumed_steps[0]}")
    assert summary["final_loss"] < summary["first_loss"]
