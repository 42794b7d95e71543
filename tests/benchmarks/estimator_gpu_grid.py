"""GPU check of the memory estimator: many configurations through the kubetune trainer, several at once.

Each row builds (once per shape) a random-initialised model with the dimensions of a catalog model and
its real transformers class (Llama, Qwen2, Gemma 2, Gemma 3), writes a FineTuneJob spec, runs
`python -m kubetune_trainer` on it and reads training_summary.json: the trainer's peak reserved and
allocated GPU memory. Peak memory is per process (torch.cuda.max_memory_*), so rows run concurrently
on one large GPU without disturbing each other's numbers; throughput is not measured here.

    python tests/benchmarks/estimator_gpu_grid.py --out /tmp/out [--only NAME ...] [--parallel 4] [--deadline 420]

Results: one JSON line per row in OUT/grid_results.jsonl, and a table at the end. The estimate is
kubetune.estimate for the same spec (analytic, no calibration), computed here, so the table shows the
estimator of this checkout against what the trainer of this checkout really used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trainer_gpu import save_random_model  # same directory

from kubetune import contract
from kubetune.catalog import lookup
from kubetune.estimate import estimate
from kubetune.validation import parse_effective_spec as parse_spec

ROW_WORDS = 160  # words per generated text row: packing fills long sequences from a few rows
# Context the CUDA driver holds outside PyTorch's allocator (measured on H100 for rows M; H200 alike).
CUDA_CONTEXT_GIB = 0.6
# Concurrent rows must fit the GPU together even when a row needs this much more than estimated.
BUDGET_FACTOR = {"qlora8": 3.0}
DEFAULT_BUDGET_FACTOR = 1.6
GPU_BUDGET_GIB = 125.0
ROW_TIMEOUT_SECONDS = 240

# Catalog hub id -> the transformers model_type whose real model code the row runs.
MODEL_TYPES = {
    "meta-llama/Llama-3.2-1B": "llama",
    "meta-llama/Llama-3.2-3B": "llama",
    "meta-llama/Llama-3.1-8B": "llama",
    "Qwen/Qwen2.5-1.5B": "qwen2",
    "google/gemma-2-2b": "gemma2",
    "google/gemma-3-1b-pt": "gemma3_text",
}


@dataclass(frozen=True)
class Row:
    name: str
    hub_id: str
    method: str  # lora | full | qlora4 | qlora8
    batch: int
    seq: int
    checkpointing: bool
    rank: int = 16
    extra_training: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


L1, L3, L8 = "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B"
Q15, G2, G3 = "Qwen/Qwen2.5-1.5B", "google/gemma-2-2b", "google/gemma-3-1b-pt"
# The trainer before this round: the caching allocator's default segments (and no fused kernels, which it
# did not have). Most rows run so: they are what the estimator must never be dangerously below.
OLD_ALLOCATOR = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}


def _rows() -> list[Row]:
    base = [
        ("l1-lora-bs4-s2048-ckpt", L1, "lora", 4, 2048, True, 16),
        ("l1-lora-bs16-s1024-nockpt", L1, "lora", 16, 1024, False, 16),
        ("l1-lora-bs1-s8192-nockpt", L1, "lora", 1, 8192, False, 16),
        ("l1-lora-bs1-s16384-ckpt", L1, "lora", 1, 16384, True, 16),
        ("l1-full-bs4-s2048-ckpt", L1, "full", 4, 2048, True, 16),
        ("l1-qlora8-bs2-s2048-ckpt", L1, "qlora8", 2, 2048, True, 16),
        ("l1-qlora4-bs8-s1024-nockpt", L1, "qlora4", 8, 1024, False, 16),
        ("l3-lora-bs2-s8192-ckpt", L3, "lora", 2, 8192, True, 16),
        ("l3-full-bs2-s2048-ckpt", L3, "full", 2, 2048, True, 16),
        ("l3-qlora4-r64-bs4-s2048-ckpt", L3, "qlora4", 4, 2048, True, 64),
        ("l3-qlora8-bs1-s4096-ckpt", L3, "qlora8", 1, 4096, True, 16),
        ("l8-qlora4-bs2-s2048-ckpt", L8, "qlora4", 2, 2048, True, 16),
        ("l8-qlora4-bs1-s8192-ckpt", L8, "qlora4", 1, 8192, True, 16),
        ("l8-lora-bs2-s4096-ckpt", L8, "lora", 2, 4096, True, 16),
        ("l8-lora-bs1-s2048-nockpt", L8, "lora", 1, 2048, False, 16),
        ("l8-qlora8-bs1-s2048-ckpt", L8, "qlora8", 1, 2048, True, 16),
        ("q15-full-bs4-s1024-nockpt", Q15, "full", 4, 1024, False, 16),
        ("q15-lora-r32-bs16-s1024-nockpt", Q15, "lora", 16, 1024, False, 32),
        ("q15-qlora4-bs4-s4096-ckpt", Q15, "qlora4", 4, 4096, True, 16),
        ("g2-lora-bs4-s2048-ckpt", G2, "lora", 4, 2048, True, 16),
        ("g2-lora-bs2-s4096-nockpt", G2, "lora", 2, 4096, False, 16),
        ("g2-qlora4-bs4-s2048-ckpt", G2, "qlora4", 4, 2048, True, 16),
        ("g3-lora-bs8-s2048-ckpt", G3, "lora", 8, 2048, True, 16),
        ("g3-full-bs4-s1024-ckpt", G3, "full", 4, 1024, True, 16),
    ]
    rows = [Row(name, hub, method, batch, seq, ckpt, rank, env=OLD_ALLOCATOR)
            for name, hub, method, batch, seq, ckpt, rank in base]
    # The trainer's defaults now (growable allocator segments; fused kernels where the API has them).
    defaults = {"l1-lora-bs4-s2048-ckpt", "l1-lora-bs16-s1024-nockpt", "l8-qlora4-bs2-s2048-ckpt",
                "g2-lora-bs4-s2048-ckpt", "l3-full-bs2-s2048-ckpt", "l1-qlora8-bs2-s2048-ckpt"}
    rows += [Row(f"{name}-defaults", hub, method, batch, seq, ckpt, rank)
             for name, hub, method, batch, seq, ckpt, rank in base if name in defaults]
    return rows


ROWS = _rows()


def method_spec(row: Row) -> dict[str, Any]:
    lora = {"rank": row.rank}
    if row.method == "full":
        return {"type": "full"}
    if row.method == "lora":
        return {"type": "lora", "lora": lora}
    bits = 8 if row.method == "qlora8" else 4
    return {"type": "qlora", "quantization": {"bits": bits}, "lora": lora}


def spec_wire(row: Row, model_dir: Path, data_file: Path, steps: int) -> dict[str, Any]:
    import torch

    return {
        "model": {"path": str(model_dir), "dtype": "bfloat16"},
        "dataset": {"path": str(data_file), "format": "text"},
        "method": method_spec(row),
        "training": {"maxSteps": steps, "gradientAccumulationSteps": 2, "loggingSteps": 1, "saveSteps": 1000,
                     "completionOnlyLoss": False, "packing": True, "batchSize": row.batch,
                     "maxSeqLength": row.seq, "gradientCheckpointing": row.checkpointing, **row.extra_training},
        "volumes": [{"claimName": "bench", "mountPath": str(model_dir.parent.parent)}],
        "resources": {"gpus": 1 if torch.cuda.is_available() else 0},
    }


# --plumbing: the same rows on tiny widths, to check the script on a CPU before GPU time is spent.
PLUMBING_DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 512, "head_dim": 16}


def build_model(directory: Path, hub_id: str, plumbing: bool = False) -> None:
    """A random model of the catalog entry's dimensions and its real class, saved in bf16."""
    from transformers import AutoConfig

    from kubetune_trainer import tiny

    if (directory / "config.json").exists():
        return
    arch = lookup(hub_id)
    assert arch is not None, hub_id
    tokenizer = tiny.build_tokenizer()
    dims: dict[str, Any] = {
        "hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers, "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads, "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tie_word_embeddings, "max_position_embeddings": 32768,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch.head_dim is not None:
        dims["head_dim"] = arch.head_dim
    if plumbing:
        dims.update(PLUMBING_DIMS)
    save_random_model(directory, AutoConfig.for_model(MODEL_TYPES[hub_id], **dims), tokenizer)


def write_data(path: Path, rows: int) -> None:
    from kubetune_trainer import tiny

    words = " ".join(row["text"] for row in tiny.text_rows(rows * ROW_WORDS // 12)).split()
    tiny.write_jsonl(path, [{"text": " ".join(words[i * ROW_WORDS:(i + 1) * ROW_WORDS])} for i in range(rows)])


def budget_gib(row: Row, spec: dict[str, Any]) -> float:
    predicted = estimate(parse_spec(spec)).per_gpu_gib
    return predicted * BUDGET_FACTOR.get(row.method, DEFAULT_BUDGET_FACTOR) + 2.0


@dataclass
class Running:
    row: Row
    process: subprocess.Popen[str]
    started: float
    budget: float
    spec: dict[str, Any]
    output: Path
    log: Path


def start(row: Row, work: Path, data_file: Path, steps: int) -> Running:
    model_dir = work / "models" / row.hub_id.replace("/", "--")
    root = work / "runs" / row.name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    spec = spec_wire(row, model_dir, data_file, steps)
    spec_file = root / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"spec": spec}))
    output, log = root / "output", root / "log.txt"
    env = {**os.environ, contract.ENV_SPEC_PATH: str(spec_file), contract.ENV_OUTPUT_DIR: str(output),
           contract.ENV_METRICS_PORT: "0", **row.env}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "kubetune_trainer"], env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, text=True)
    return Running(row, process, time.monotonic(), budget_gib(row, spec), spec, output, log)


def result_of(run: Running) -> dict[str, Any]:
    row = run.row
    result: dict[str, Any] = {"row": row.name, "model": row.hub_id, "method": row.method, "batch": row.batch,
                              "seq": row.seq, "checkpointing": row.checkpointing, "rank": row.rank,
                              "env": row.env, "extra": row.extra_training, "exit_code": run.process.returncode,
                              "seconds": round(time.monotonic() - run.started, 1)}
    predicted = estimate(parse_spec(run.spec))
    result["estimated_gib"] = predicted.per_gpu_gib
    result["estimate_breakdown_gib"] = predicted.breakdown
    summary_file = run.output / contract.SUMMARY_FILE_NAME
    if run.process.returncode != 0 or not summary_file.exists():
        result["log_tail"] = run.log.read_text(errors="replace")[-2500:]
        return result
    summary = json.loads(summary_file.read_text())
    reserved = summary.get("peak_gpu_memory_gib")
    result.update({
        "peak_reserved_gib": reserved,
        "peak_allocated_gib": summary.get("peak_gpu_memory_allocated_gib"),
        "measured_gib": round(reserved + CUDA_CONTEXT_GIB, 3) if reserved is not None else None,
        "kernels": summary.get("kernels"),
        "tokens_per_second": summary.get("tokens_per_second"),
        "loss": [summary.get("first_loss"), summary.get("final_loss")],
    })
    if result["measured_gib"]:
        result["error"] = round(predicted.per_gpu_gib / result["measured_gib"] - 1, 4)
    log_text = run.log.read_text(errors="replace")
    result["startup_log"] = [line for line in log_text.splitlines() if "kernel" in line.lower()
                             or "attention" in line.lower() or "optimizer" in line.lower()][:6]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    # Not under /tmp: specs may not mount volumes there (the trainer uses it).
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/kubetune-grid"))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds; no row starts after this")
    parser.add_argument("--plumbing", action="store_true", help="tiny widths: check the script on a CPU")
    args = parser.parse_args()
    began = time.monotonic()
    rows = [row for row in ROWS if args.only is None or row.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    sink = args.out / "grid_results.jsonl"
    data_file = args.work / "data" / "train.jsonl"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    write_data(data_file, 4000)
    pending = list(rows)
    built: set[str] = set()
    running: list[Running] = []
    results: list[dict[str, Any]] = []
    while pending or running:
        for run in [r for r in running if r.process.poll() is not None
                    or time.monotonic() - r.started > ROW_TIMEOUT_SECONDS]:
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
            running.remove(run)
            result = result_of(run)
            shutil.rmtree(run.output, ignore_errors=True)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}), flush=True)
            with sink.open("a") as out:
                out.write(json.dumps(result) + "\n")
        if time.monotonic() - began > args.deadline:
            pending.clear()
        used = sum(r.budget for r in running)
        for row in list(pending):
            if len(running) >= args.parallel:
                break
            if row.hub_id not in built:
                build_model(args.work / "models" / row.hub_id.replace("/", "--"), row.hub_id, args.plumbing)
                built.add(row.hub_id)
            model_dir = args.work / "models" / row.hub_id.replace("/", "--")
            need = budget_gib(row, spec_wire(row, model_dir, data_file, args.steps))
            if running and used + need > GPU_BUDGET_GIB:
                continue
            pending.remove(row)
            running.append(start(row, args.work, data_file, args.steps))
            used += need
        time.sleep(1)
    print(f"\n{'row':44} {'est':>7} {'meas':>7} {'alloc':>7} {'error':>7}")
    for r in results:
        print(f"{r['row']:44} {r['estimated_gib']:7.2f} {r.get('measured_gib') or 0:7.2f} "
              f"{r.get('peak_allocated_gib') or 0:7.2f} {r.get('error', float('nan')):+7.1%}"
              + ("" if r["exit_code"] == 0 else f"  exit {r['exit_code']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
