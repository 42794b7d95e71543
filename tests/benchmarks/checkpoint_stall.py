"""Checkpoint stall: how long a full fine-tune's training loop waits for each checkpoint, written synchronously (the
Trainer's own write: model.safetensors and optimizer.pt) and in the background (kubetune's default for a full
fine-tune: torch.distributed.checkpoint.async_save), measured in the same run.

    python tests/benchmarks/checkpoint_stall.py --out /tmp/stall           # ~95M parameters, 1.1 GB a checkpoint
    python tests/benchmarks/checkpoint_stall.py --hidden 1536 --layers 8 --out /tmp/stall   # ~2.5 GB a checkpoint

Each side runs --rounds times (3), alternating which goes first; the table shows medians. --threads (torch's
intra-op threads, default 1) leaves the machine's other cores to the background write, as a GPU node's cores are
while its GPU computes; with as many threads as cores the write competes with the training for them.

One Llama-shaped model (random weights; tiny.py's tokenizer, so the embeddings are small and nearly every
parameter is in the decoder layers), one set of rows. Each side runs in a fresh process, the kubetune trainer's
own path (train.build_run, train.train, train.finish) on the same spec: a full fine-tune in float32 with AdamW,
a checkpoint every --save-steps steps. The synchronous side forces checkpoint_writes' choice to synchronous; the
background side takes kubetune's choice. Per checkpoint, from the trainer's CheckpointWrites timings:
- blocked: the time the training loop spent in the save (for the background side: waiting for the previous write,
  if it still ran, the Trainer's small files, and staging the weights and optimizer state to host memory; the first
  checkpoint also allocates the host copy the later ones reuse, so it is shown apart);
- write: from the start of the save until the checkpoint was complete on disk (DCP fsyncs its files; the
  Trainer's safetensors/torch.save leave them in the page cache).
And per side: the median time of a training step (begin to end, the save not included) with no write in flight
and with a background write in flight (what the write costs the steps it overlaps: on a CPU it shares the cores
they compute on), the wall time of train.train() (every step, every checkpoint, the wait for the last write) and
the peak RSS of the process. Results: OUT/checkpoint_stall.json and a table, with the machine's load average before
and after (other processes on the machine show in every number).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MOUNT = "/data"
SIDES = ("synchronous", "background")
ROWS = 2000
SEED = 42


def model_dims(hidden: int, layers: int) -> dict[str, Any]:
    """Llama proportions: SwiGLU width about 2.75x hidden, 128-wide heads, GQA with half the heads for k/v."""
    heads = max(1, hidden // 128)
    return {"hidden_size": hidden, "intermediate_size": int(hidden * 2.75) // 64 * 64, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2), "max_position_embeddings": 512}


def prepare(work: Path, hidden: int, layers: int) -> None:
    """The model and rows every side trains on."""
    from kubetune_trainer import tiny

    tiny.save_tiny_model(work / "model", seed=SEED, **model_dims(hidden, layers))
    tiny.write_jsonl(work / "instruction.jsonl", tiny.instruction_rows(ROWS, seed=SEED))


def spec(steps: int, save_steps: int, batch_size: int) -> dict[str, Any]:
    return {
        "model": {"path": f"{MOUNT}/model", "dtype": "float32"},
        "dataset": {"path": f"{MOUNT}/instruction.jsonl"},
        "method": {"type": "full"},
        "training": {"maxSteps": steps, "saveSteps": save_steps, "batchSize": batch_size,
                     "gradientAccumulationSteps": 1, "learningRate": 1e-5, "lrScheduler": "constant",
                     "warmupRatio": 0.0, "maxSeqLength": 64, "gradientCheckpointing": False,
                     "loggingSteps": save_steps, "optimizer": "adamw_torch"},
        "resources": {"gpus": 0},
        "volumes": [{"claimName": "data", "mountPath": MOUNT}],
    }


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def run_side(side: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One side in this process: the trainer's run, its checkpoint timings, its wall time and peak memory."""
    import torch
    from transformers import TrainerCallback

    from kubetune.presets import effective_spec
    from kubetune.validation import parse_spec
    from kubetune_trainer import checkpoint_writes, train
    from kubetune_trainer.context import RunContext, with_local_mounts
    from kubetune_trainer.progress import ProgressTracker

    torch.set_num_threads(args.threads)
    if side == "synchronous":
        def synchronous(method: str, *, fsdp: bool) -> checkpoint_writes.CheckpointChoice:
            return checkpoint_writes.CheckpointChoice(False, "forced by the benchmark")

        checkpoint_writes.choose_checkpoint_writes = synchronous
    output = work / f"output-{side}"
    shutil.rmtree(output, ignore_errors=True)
    training = spec(args.steps, args.save_steps, args.batch_size)
    effective = with_local_mounts(effective_spec(parse_spec(training)), {MOUNT: work})
    context = RunContext(spec=effective, output_dir=output, termination_log=None)
    train.quiet_libraries()
    built = train.build_run(context, ProgressTracker())
    writes = built.trainer.checkpoint_writes
    step_seconds: dict[bool, list[float]] = {False: [], True: []}  # by whether a write was in flight

    class StepTimes(TrainerCallback):
        began = (0.0, False)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = (time.monotonic(), writes.writing)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            began, overlapped = self.began
            if state.global_step > 1:  # the first step warms up
                step_seconds[overlapped or writes.writing].append(time.monotonic() - began)

    built.trainer.add_callback(StepTimes())
    started = time.monotonic()
    train.train(built)
    train_seconds = time.monotonic() - started
    last = max(output.glob("checkpoint-*"), key=lambda path: int(path.name.rsplit("-", 1)[1]))
    return {
        "side": side, "async": writes.choice.asynchronous, "steps": built.trainer.state.global_step,
        "parameters": built.total_parameters, "checkpoint_bytes": folder_bytes(last),
        "checkpoints": [{"step": t.step, "blocked_seconds": round(t.blocked_seconds, 3),
                         "write_seconds": round(t.write_seconds or 0.0, 3)} for t in writes.timings],
        "step_seconds_quiet": round(statistics.median(step_seconds[False]), 3) if step_seconds[False] else None,
        "step_seconds_during_write": round(statistics.median(step_seconds[True]), 3) if step_seconds[True] else None,
        "train_seconds": round(train_seconds, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side over its rounds: medians over every checkpoint and over the runs' step medians."""
    later = [c for run in runs for c in run["checkpoints"][1:]]
    checkpoints = [c for run in runs for c in run["checkpoints"]]
    during = [run["step_seconds_during_write"] for run in runs if run["step_seconds_during_write"] is not None]
    return {
        "checkpoints": len(checkpoints),
        "blocked_seconds_first": round(statistics.median(run["checkpoints"][0]["blocked_seconds"] for run in runs), 3),
        "blocked_seconds_median": round(statistics.median(c["blocked_seconds"] for c in later), 3),
        "blocked_seconds_max": max(c["blocked_seconds"] for c in checkpoints),
        "write_seconds_median": round(statistics.median(c["write_seconds"] for c in checkpoints), 3),
        "step_seconds_quiet": round(statistics.median(run["step_seconds_quiet"] for run in runs), 3),
        "step_seconds_during_write": round(statistics.median(during), 3) if during else None,
        "train_seconds_median": round(statistics.median(run["train_seconds"] for run in runs), 2),
        "peak_rss_gib": max(run["peak_rss_gib"] for run in runs),
    }


def table(summaries: dict[str, dict[str, Any]]) -> str:
    lines = ["side | checkpoints | blocked: first checkpoint / later ones (median) / max | write per checkpoint "
             "(median) | step: no write / write in flight (median) | train() wall (median) | peak RSS",
             "--- | --- | --- | --- | --- | --- | ---"]
    for side, row in summaries.items():
        during = row["step_seconds_during_write"]
        lines.append(f"{side} | {row['checkpoints']} | {row['blocked_seconds_first']:.2f} s / "
                     f"{row['blocked_seconds_median']:.2f} s / {row['blocked_seconds_max']:.2f} s "
                     f"| {row['write_seconds_median']:.2f} s "
                     f"| {row['step_seconds_quiet']:.2f} s / {f'{during:.2f} s' if during else '-'} "
                     f"| {row['train_seconds_median']:.1f} s | {row['peak_rss_gib']:.2f} GiB")
    return "\n".join(lines)


def ratios(summaries: dict[str, dict[str, Any]]) -> dict[str, float]:
    synchronous, background = summaries["synchronous"], summaries["background"]
    return {"blocked_synchronous_over_background": round(synchronous["blocked_seconds_median"]
                                                         / background["blocked_seconds_median"], 1),
            "train_seconds_synchronous_over_background": round(synchronous["train_seconds_median"]
                                                               / background["train_seconds_median"], 2)}


def run_child(side: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, __file__, "--side", side, "--out", str(args.out), "--work", str(work),
         "--steps", str(args.steps), "--save-steps", str(args.save_steps), "--batch-size", str(args.batch_size),
         "--threads", str(args.threads)],
        capture_output=True, text=True, check=False, cwd=REPO,
    )
    if child.returncode != 0:
        sys.exit(f"{side} failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
    shutil.rmtree(work / f"output-{side}", ignore_errors=True)
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="model, rows and outputs (default: OUT/work)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--save-steps", type=int, default=10, help="more steps than a write takes, as in a real run")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, alternating which goes first")
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads for the training")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in a child process
    args = parser.parse_args()
    work = args.work or args.out / "work"
    if args.side:
        print(json.dumps(run_side(args.side, work, args)), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    prepare(work, args.hidden, args.layers)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for round_ in range(args.rounds):
        for side in SIDES if round_ % 2 == 0 else reversed(SIDES):
            runs[side].append(run_child(side, args, work))
            print(f"round {round_ + 1} {side}: {json.dumps(runs[side][-1])}", flush=True)
    summaries = {side: summarise(side_runs) for side, side_runs in runs.items()}
    report = {"hidden": args.hidden, "layers": args.layers, "batch_size": args.batch_size, "steps": args.steps,
              "save_steps": args.save_steps, "rounds": args.rounds, "threads": args.threads,
              "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "summaries": summaries,
              "ratios": ratios(summaries), "runs": runs}
    (args.out / "checkpoint_stall.json").write_text(json.dumps(report, indent=2) + "\n")
    first = runs["background"][0]
    print(f"{first['parameters']:,} parameters, {first['checkpoint_bytes'] / 2**30:.2f} GiB a checkpoint, "
          f"{args.steps} steps, a checkpoint every {args.save_steps}, {args.rounds} rounds, {args.threads} threads; "
          f"load average {report['load_average_1min'][0]} before, {report['load_average_1min'][1]} after "
          f"({os.cpu_count()} cores)")
    print(table(summaries))
    print(json.dumps(report["ratios"]))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
