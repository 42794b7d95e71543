"""Multi-node throughput on CPU: the same epoch of the same rows on 1 node-rank and on 2 node-ranks (two
torchruns meeting at a c10d rendezvous on localhost, over gloo) with DDP and with FSDP, alternately in one
run; each 2-rank tokens/s as a ratio to the 1-rank tokens/s measured in the same run.

Both go through the pods' launch (`launch_command` with the operator's rendezvous env) and `kubetune
train`. Throughput is TRL's count of trained tokens (gathered over every rank) over the Trainer's
train_runtime, from rank 0's training_summary.json. The machine's cores are split between the ranks
(OMP_NUM_THREADS = cores / ranks), as two nodes would each bring their own.

    python tests/benchmarks/multinode_throughput.py [--rounds 2] [--rows 1600] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from kubetune import contract
from kubetune.api import API_VERSION, KIND
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec
from kubetune_trainer import tiny
from kubetune_trainer.launch import launch_command

MOUNT = "/data"
RUN_TIMEOUT_SECONDS = 600
# A model big enough that a step is real work on a few CPU cores, small enough for a quick run.
BENCH_DIMS = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2}
BATCH_SIZE, MAX_SEQ_LENGTH = 8, 128


# (name, node-ranks, spec.training.strategy) of each side of the comparison.
SIDES = (("1 rank", 1, "auto"), ("2 ranks ddp", 2, "ddp"), ("2 ranks fsdp", 2, "fsdp"))


def spec_wire(nodes: int, strategy: str) -> dict[str, Any]:
    return {
        "model": {"path": f"{MOUNT}/model", "dtype": "float32", "attention": "sdpa"},
        "dataset": {"path": f"{MOUNT}/train.jsonl", "format": "instruction"},
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
        "training": {
            "epochs": 1, "batchSize": BATCH_SIZE, "gradientAccumulationSteps": 1, "learningRate": 1e-3,
            "lrScheduler": "constant", "warmupRatio": 0.0, "maxSeqLength": MAX_SEQ_LENGTH,
            "gradientCheckpointing": False, "loggingSteps": 10, "saveSteps": 100000, "seed": 42,
            "strategy": strategy,
        },
        "resources": {"gpus": 1, "nodes": nodes},
        "volumes": [{"claimName": "bench", "mountPath": MOUNT}],
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_ranks(nodes: int, strategy: str, data: Path, work: Path) -> dict[str, Any]:
    """One fresh training run (nothing to resume) over `nodes` node-ranks; rank 0's summary."""
    run = tempfile.mkdtemp(prefix=f"{nodes}-ranks-", dir=work)
    manifest, output = Path(run) / "job.yaml", Path(run) / "output"
    wire = spec_wire(nodes, strategy)
    manifest.write_text(yaml.safe_dump({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "bench"},
                                        "spec": wire}))
    spec = effective_spec(parse_spec(wire))
    rendezvous = {contract.ENV_RDZV_ENDPOINT: f"127.0.0.1:{free_port()}", contract.ENV_RDZV_ID: "bench"}
    threads = str(max(1, (os.cpu_count() or 1) // nodes))
    processes = []
    for index in range(nodes):
        launch = launch_command(spec, {**rendezvous, contract.ENV_JOB_COMPLETION_INDEX: str(index)})
        command = [*launch[:-2], "-m", "kubetune.cli", "train", "-f", str(manifest), "--mount", f"{MOUNT}={data}",
                   "--output", str(output)]
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for process in processes:
        _, stderr = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
        if process.returncode != 0:
            raise RuntimeError(f"{nodes} node-rank run failed: {stderr.decode(errors='replace')[-3000:]}")
    summary: dict[str, Any] = json.loads((output / contract.SUMMARY_FILE_NAME).read_text())
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kubetune-multinode-bench-") as tmp:
        data, work = Path(tmp) / "data", Path(tmp)
        tiny.save_tiny_model(data / "model", **BENCH_DIMS)
        tiny.write_jsonl(data / "train.jsonl", tiny.instruction_rows(args.rows))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SIDES}
        for round_number in range(args.rounds):
            for name, nodes, strategy in SIDES:
                summary = run_ranks(nodes, strategy, data, work)
                results[name].append(summary)
                print(f"round {round_number + 1} {name}: {summary['tokens_per_second']:,.0f} tokens/s, "
                      f"{summary['steps']} steps, {summary['tokens_total']:,} tokens", flush=True)
    median = {name: statistics.median(s["tokens_per_second"] for s in runs) for name, runs in results.items()}
    baseline = SIDES[0][0]
    report = {
        "cpu_count": os.cpu_count(),
        "rows": args.rows,
        "rounds": args.rounds,
        "tokens_per_second": {name: round(value, 1) for name, value in median.items()},
        "ratio_to_1_rank": {name: round(value / median[baseline], 3) for name, value in median.items()},
        "tokens_total": {name: runs[-1]["tokens_total"] for name, runs in results.items()},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
