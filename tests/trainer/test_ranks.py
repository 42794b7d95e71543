"""Every rank's GPU memory on rank 0's endpoint: gathered over a real gloo process group of two ranks (the
memory reader injected, since a CPU has none to read), and exposed with the rank label."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from kubetune.contract import TRAINER_RANK_METRICS
from kubetune_trainer.metrics import TrainerMetrics
from kubetune_trainer.ranks import RankMemory

pytestmark = pytest.mark.slow  # a torchrun of two processes
GIB = 1 << 30
# A torchrun of two processes that import torch: seconds on a quiet machine, minutes on shared cores; the limit
# only catches a hang.
SUBPROCESS_TIMEOUT_SECONDS = 600
# Each case: every rank's (allocated, reserved, peak) reading, or None where the rank has no GPU.
READINGS: dict[str, list[list[int] | None]] = {
    "measured": [[1 * GIB, 2 * GIB, 3 * GIB], [4 * GIB, 5 * GIB, 6 * GIB]],
    "cpu": [None, None],
}
# One log on each rank of a 2-process group, per case: what each rank's endpoint would show.
WORKER = """
import json, sys
import torch.distributed as dist
from kubetune_trainer.metrics import TrainerMetrics
from kubetune_trainer.ranks import RankMemoryCallback

dist.init_process_group("gloo")
expositions = {}
for case, readings in json.loads(sys.argv[2]).items():
    metrics = TrainerMetrics()
    reading = readings[dist.get_rank()]
    RankMemoryCallback(metrics.set_ranks, read=lambda: None if reading is None else tuple(reading)).on_log(
        None, None, None)
    expositions[case] = metrics.exposition().decode()
with open(f"{sys.argv[1]}/rank-{dist.get_rank()}.json", "w") as sink:
    json.dump(expositions, sink)
dist.destroy_process_group()
"""


def rank_samples(exposition: str) -> set[str]:
    return {line for line in exposition.splitlines() if line.startswith(TRAINER_RANK_METRICS)}


@pytest.fixture(scope="module")
def expositions(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Each rank's expositions after one log of each case, from one 2-process torchrun."""
    root = tmp_path_factory.mktemp("ranks")
    worker = root / "worker.py"
    worker.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
               str(root), json.dumps(READINGS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return [json.loads((root / f"rank-{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("measured", {
            'kubetune_train_rank_gpu_memory_allocated_bytes{rank="0"} 1.073741824e+09',
            'kubetune_train_rank_gpu_memory_allocated_bytes{rank="1"} 4.294967296e+09',
            'kubetune_train_rank_gpu_memory_reserved_bytes{rank="0"} 2.147483648e+09',
            'kubetune_train_rank_gpu_memory_reserved_bytes{rank="1"} 5.36870912e+09',
            'kubetune_train_rank_gpu_memory_peak_bytes{rank="0"} 3.221225472e+09',
            'kubetune_train_rank_gpu_memory_peak_bytes{rank="1"} 6.442450944e+09',
        }),
        ("cpu", set()),
    ],
    ids=["rank 0 shows both ranks' GPU memory, one sample per rank", "CPU ranks measure nothing: no samples"],
)
def test_every_ranks_memory_reaches_rank_zero(expositions: list[dict[str, Any]], case: str,
                                               expected: set[str]) -> None:
    rank_zero, rank_one = expositions

    assert rank_samples(rank_zero[case]) == expected
    assert rank_samples(rank_one[case]) == set(), "only rank 0 publishes"


def test_rank_families_are_declared_before_any_log_and_show_the_latest_one() -> None:
    metrics = TrainerMetrics()
    declared = metrics.exposition().decode()
    metrics.set_ranks([RankMemory(0, 1, 2, 3), RankMemory(3, 4, 5, 6)])
    metrics.set_ranks([RankMemory(0, 7, 8, 9)])

    assert all(f"# TYPE {name} gauge" in declared for name in TRAINER_RANK_METRICS)
    assert rank_samples(declared) == set()
    assert rank_samples(metrics.exposition().decode()) == {
        'kubetune_train_rank_gpu_memory_allocated_bytes{rank="0"} 7.0',
        'kubetune_train_rank_gpu_memory_reserved_bytes{rank="0"} 8.0',
        'kubetune_train_rank_gpu_memory_peak_bytes{rank="0"} 9.0',
    }
