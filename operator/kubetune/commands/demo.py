"""`kubetune demo [--dir DIR]`: a real LoRA fine-tune of a tiny random model, on this machine's CPU.

It builds a tiny Llama-shaped model and an instruction dataset in DIR, writes the FineTuneJob it
runs (model and data on a volume, as in a cluster), trains it through the same trainer the Job runs,
and shows the loss falling, lines of its own /metrics, the checkpoint and the summary.
"""

from __future__ import annotations

import argparse
import socket
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kubetune import contract
from kubetune.api import API_VERSION, KIND

HELP = "Fine-tune a tiny random model on CPU (about 25 s on two cores): loss, metrics, checkpoint, summary."
MOUNT_PATH = "/data"  # where the demo's volume would be mounted in a cluster
MODEL_DIR, DATA_FILE, JOB_FILE, OUTPUT_DIR = "tiny-llama", "train.jsonl", "finetunejob.yaml", "output"
DEMO_ROWS = 2000  # 200 steps of 8 rows stay within one epoch: the loss falls on rows it has not seen
SHOWN_METRICS = ("kubetune_train_loss ", "kubetune_train_step ", "kubetune_train_tokens_total ",
                 "kubetune_train_tokens_per_second ", "kubetune_train_checkpoints_saved_total ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("kubetune-demo"), metavar="DIR",
                        help="where the model, data, manifest and output go (default: ./kubetune-demo)")


def demo_manifest() -> dict[str, Any]:
    """The FineTuneJob the demo runs: LoRA on CPU, model and data on a volume at /data."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "kubetune-demo"},
        "spec": {
            "model": {"path": f"{MOUNT_PATH}/{MODEL_DIR}", "dtype": "float32"},
            "dataset": {"path": f"{MOUNT_PATH}/{DATA_FILE}", "format": "instruction", "evalFraction": 0.05},
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "maxSteps": 200, "batchSize": 8, "gradientAccumulationSteps": 1, "learningRate": 3e-3,
                "lrScheduler": "constant_with_warmup", "warmupRatio": 0.05, "maxSeqLength": 64,
                "gradientCheckpointing": False, "loggingSteps": 20, "saveSteps": 100, "saveTotalLimit": 2,
            },
            "resources": {"gpus": 0},
            "volumes": [{"claimName": "kubetune-demo-data", "mountPath": MOUNT_PATH}],
        },
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(SHOWN_METRICS)]


def prepare(directory: Path) -> Path:
    """Tiny model, dataset and manifest in the directory; returns the manifest's path."""
    from kubetune_trainer import tiny

    print(f"building a tiny random Llama-shaped model and {DEMO_ROWS} instruction rows in {directory}/")
    tiny.save_tiny_model(directory / MODEL_DIR)
    tiny.write_jsonl(directory / DATA_FILE, tiny.instruction_rows(DEMO_ROWS))
    manifest = directory / JOB_FILE
    manifest.write_text(yaml.safe_dump(demo_manifest(), sort_keys=False), encoding="utf-8")
    return manifest


def run(args: argparse.Namespace) -> int:
    from kubetune.manifest_files import load_job
    from kubetune.presets import effective_spec
    from kubetune_trainer.context import RunContext, with_local_mounts
    from kubetune_trainer.progress import Progress
    from kubetune_trainer.train import execute, quiet_libraries

    quiet_libraries()  # no "Writing model shards" bar while the tiny model is saved
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    print("kubetune demo: a REAL LoRA fine-tune, on CPU, of a TINY random-initialised model (2 layers,\n"
          "hidden size 64): it learns the pattern of a generated dataset, not language.\n")
    manifest = prepare(directory)
    job = load_job(str(manifest))
    print(f"FineTuneJob: {manifest} (validated; {MOUNT_PATH} is read from {directory})\n")
    port = free_port()
    losses: list[float] = []
    scraped: list[str] = []

    def watch(progress: Progress, milestone: str | None) -> None:
        if milestone is None and progress.loss is not None and (not losses or losses[-1] != progress.loss):
            losses.append(progress.loss)
        if milestone == "end":
            scraped.extend(scrape(port))

    output = directory / OUTPUT_DIR
    context = RunContext(
        spec=with_local_mounts(effective_spec(job.spec), {MOUNT_PATH: directory}),
        output_dir=output, metrics_port=port, interactive=True, termination_log=None,
        local_mounts={MOUNT_PATH: directory},
    )
    code = execute(context, listeners=(watch,))
    if code == 0:
        report(losses, scraped, output)
        print(f"the demo's files are in {directory} (--dir DIR puts them elsewhere; delete the folder when done)")
    return code


def report(losses: list[float], scraped: list[str], output: Path) -> None:
    """What the run showed; a rerun of the finished demo trained nothing and shows only where its results are."""
    print()
    if losses:
        trend = "fell" if losses[-1] < losses[0] else "did not fall"
        print(f"loss {trend}: {losses[0]:.3f} -> {losses[-1]:.3f}")
    if scraped:
        print("from its own /metrics endpoint:")
        for line in scraped:
            print(f"  {line}")
    saved = sorted(p.name for p in output.glob("checkpoint-*"))
    print(f"checkpoints in {output}: {', '.join(saved)} "
          "(a rerun resumes from the newest; a finished run trains nothing)")
    print(f"summary: {output / contract.SUMMARY_FILE_NAME}")
