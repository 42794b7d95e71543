"""Trainer speed: kubetune's defaults against a plain transformers + peft script and a plain TRL SFTTrainer script,
on the same model, rows and step count; tokens/s, peak memory, MFU and the ratios to the plain script.

    python tests/benchmarks/trainer_speed.py --config tiny --out /tmp/speed              # CPU plumbing, < 60 s
    python tests/benchmarks/trainer_speed.py --out /tmp/speed                            # the three GPU configurations
    python tests/benchmarks/trainer_speed.py --config llama-1b-lora --warmup 5 --steps 15 --out /tmp/speed

Each configuration builds one random-initialised model with a catalog model's dimensions (nothing is
downloaded) and one set of text rows of varied length, then runs each side in a fresh process (so peak
memory is that side's alone):
- kubetune: the trainer's own run (`kubetune_trainer.train.execute`, what `python -m kubetune_trainer` runs) on
  a spec with kubetune's defaults (kernels auto, sdpa unless flash-attn is installed) plus packing: on;
- plain: transformers' Trainer + peft as a competent user writes it: rows padded to the batch's longest row,
  sdpa, bf16, adamw_torch;
- trl: TRL's SFTTrainer with its defaults (no packing), the same peft model;
- kubetune-flat (only with --sides): kubetune with packed micro-batches flattened into one padding-free row, as TRL
  lays them out, instead of the packed rows it chooses under sdpa.
All sides share the LoRA/QLoRA settings (kubetune's defaults: rank 16, alpha 32, dropout 0.05, all linear
layers), batch size, sequence length, gradient checkpointing, learning rate and a constant schedule. Each runs
warm-up + timed optimizer steps; the timed window starts after the warm-up step with a CUDA synchronize and ends
after the last step with another. Measures per side:
- tokens/s: non-padding input tokens of the timed steps over the timed window's wall time;
- peak reserved memory: torch.cuda.max_memory_reserved at the end of the window (None on a CPU);
- MFU: tokens/s x (6N + 12·L·d·s) / 989 TFLOP/s (PaLM's convention, H100/H200 dense bf16; see trainer_gpu.py).
Results: one JSON line per side and configuration in OUT/speed_results.jsonl, and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainer_gpu import H100_BF16_PEAK_FLOPS, build_model, flops_per_token, model_dims  # same directory

REPO = Path(__file__).resolve().parents[2]
MOUNT = "/data"
SIDES = ("kubetune", "plain", "trl")
# Asked for with --sides: kubetune with TRL's own packing layout (a micro-batch flattened into one padding-free row)
# under sdpa, to measure the layout kubetune chose against the one it replaced.
EXTRA_SIDES = ("kubetune-flat",)
LEARNING_RATE = 1e-4
SEED = 42
# Row lengths in words, as fractions of the sequence length: SFT data is mostly shorter than the limit.
ROW_LENGTH_RANGE = (0.1, 1.0)
# Enough rows that no side runs out within warm-up + timed steps, even packed several to a sequence.
ROWS_PER_STEP_AND_SEQUENCE = 6

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hub_id": None, "method": "lora", "batch_size": 4, "max_seq_length": 128, "gradient_checkpointing": False,
        "gpu": False,
    },
    "llama-1b-lora": {
        "hub_id": "meta-llama/Llama-3.2-1B", "method": "lora", "batch_size": 4, "max_seq_length": 2048,
        "gradient_checkpointing": False, "gpu": True,
    },
    "llama-8b-qlora": {
        "hub_id": "meta-llama/Llama-3.1-8B", "method": "qlora", "batch_size": 2, "max_seq_length": 2048,
        "gradient_checkpointing": True, "gpu": True,
    },
    "llama-3b-full": {
        "hub_id": "meta-llama/Llama-3.2-3B", "method": "full", "batch_size": 4, "max_seq_length": 2048,
        "gradient_checkpointing": True, "gpu": True,
    },
}
GPU_CONFIGS = [name for name, config in CONFIGS.items() if config["gpu"]]


def cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------- setup


def write_rows(path: Path, count: int, max_seq_length: int) -> None:
    """Text rows whose lengths vary over ROW_LENGTH_RANGE of the sequence length, the same for every side."""
    from kubetune_trainer import tiny

    pick = random.Random(SEED)
    words = " ".join(row["text"] for row in tiny.text_rows(count * 4)).split()
    low, high = (int(fraction * max_seq_length) for fraction in ROW_LENGTH_RANGE)
    rows, start = [], 0
    for _ in range(count):
        length = pick.randint(low, high)
        rows.append({"text": " ".join(words[(start + i) % len(words)] for i in range(length))})
        start += length
    tiny.write_jsonl(path, rows)


def prepare(config: dict[str, Any], root: Path, steps: int) -> None:
    """The configuration's model (random weights, a catalog model's dimensions) and rows under root."""
    from kubetune_trainer import tiny

    if config["hub_id"] is None:
        tiny.save_tiny_model(root / "model")
    else:
        build_model(root / "model", model_dims(config))
    write_rows(root / "train.jsonl", ROWS_PER_STEP_AND_SEQUENCE * steps * config["batch_size"],
               config["max_seq_length"])


def kubetune_spec(config: dict[str, Any], steps: int) -> dict[str, Any]:
    """kubetune's defaults for this configuration, with packing on (its padding-free fast path)."""
    method: dict[str, Any] = {"type": config["method"]}
    if config["method"] == "qlora":
        method["quantization"] = {"bits": 4, "type": "nf4"}
    return {
        "model": {"path": f"{MOUNT}/model", "dtype": "bfloat16" if config["gpu"] else "float32"},
        "dataset": {"path": f"{MOUNT}/train.jsonl", "format": "text"},
        "method": method,
        "training": {
            "maxSteps": steps, "batchSize": config["batch_size"], "gradientAccumulationSteps": 1,
            "maxSeqLength": config["max_seq_length"], "packing": True,
            "gradientCheckpointing": config["gradient_checkpointing"], "learningRate": LEARNING_RATE,
            "lrScheduler": "constant", "warmupRatio": 0.0, "loggingSteps": steps, "saveSteps": steps,
            "seed": SEED, "completionOnlyLoss": False,
        },
        "resources": {"gpus": 1 if config["gpu"] else 0},
        "volumes": [{"claimName": "bench", "mountPath": MOUNT}],
    }


def effective(config: dict[str, Any], root: Path, steps: int) -> Any:
    from kubetune.presets import effective_spec
    from kubetune.validation import parse_spec
    from kubetune_trainer.context import with_local_mounts

    return with_local_mounts(effective_spec(parse_spec(kubetune_spec(config, steps))), {MOUNT: root})


# ------------------------------------------------------------------------------------ the measuring


class Meter:
    """Counts each micro-batch's non-padding input tokens on the device (no host sync) and times the steps
    after the warm-up; writes the side's numbers to `result_path` after the last timed step and ends the process
    there: what a side does after training (checkpoint, final save) is not measured, and costs GPU time."""

    def __init__(self, warmup: int, timed: int, result_path: Path) -> None:
        self.warmup, self.last = warmup, warmup + timed
        self.result_path = result_path
        self.tokens: Any = 0
        self.window_start: tuple[float, Any] | None = None

    def count(self, inputs: dict[str, Any]) -> None:
        from kubetune_trainer.packing import REAL_TOKENS

        if REAL_TOKENS in inputs:  # kubetune's packed rows: their collator counted the real tokens
            self.tokens = self.tokens + inputs[REAL_TOKENS]
        elif "attention_mask" in inputs:
            self.tokens = self.tokens + inputs["attention_mask"].sum()
        else:  # padding-free: one row of real tokens
            self.tokens = self.tokens + inputs["position_ids"].size(1)

    def step_ended(self, step: int) -> None:
        import torch

        if step not in (self.warmup, self.last):
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now, tokens = time.perf_counter(), int(self.tokens)
        if step == self.warmup:
            self.window_start = (now, tokens)
            return
        assert self.window_start is not None
        started, tokens_before = self.window_start
        peak = torch.cuda.max_memory_reserved() / 1024**3 if torch.cuda.is_available() else None
        self.result_path.write_text(json.dumps({
            "timed_steps": self.last - self.warmup, "timed_tokens": tokens - tokens_before,
            "seconds": now - started, "peak_reserved_gib": peak,
        }))
        sys.stdout.flush()
        os._exit(0)


def install(meter: Meter) -> None:
    """The meter in every Trainer this process builds: each micro-batch through Trainer.training_step (TRL's and
    kubetune's trainers call it), each step's end through a default callback."""
    import transformers.trainer as trainer_module
    from transformers import Trainer, TrainerCallback

    original = Trainer.training_step

    def training_step(self: Any, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        meter.count(inputs)
        return original(self, model, inputs, *args, **kwargs)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            meter.step_ended(state.global_step)

    Trainer.training_step = training_step  # type: ignore[method-assign]
    trainer_module.DEFAULT_CALLBACKS.append(StepEnd)  # type: ignore[arg-type]  # annotated too narrowly


# ------------------------------------------------------------------------------------------ the sides


def run_kubetune(config: dict[str, Any], root: Path, steps: int, *, flat: bool = False) -> None:
    """What `python -m kubetune_trainer` runs (train.execute: the allocator settings, then the run); its kernel
    choice is kept in root/kubetune-kernels.json as it is made (the process ends after the timed steps, before
    training_summary.json)."""
    from kubetune_trainer import kernels
    from kubetune_trainer.context import RunContext
    from kubetune_trainer.train import execute

    choose = kernels.choose_kernels

    def choose_and_keep(*args: Any, **kwargs: Any) -> Any:
        choice = choose(*args, **kwargs)
        (root / "kubetune-kernels.json").write_text(json.dumps(choice.as_summary()))
        return choice

    kernels.choose_kernels = choose_and_keep
    if flat:
        kernels.packing_layout = lambda packing, attention: "padding-free" if packing else "off"
    execute(RunContext(spec=effective(config, root, steps), output_dir=root / "kubetune-output", metrics_port=None,
                       termination_log=None))


def user_model(config: dict[str, Any], root: Path, spec: Any) -> tuple[Any, Any]:
    """Tokenizer and model as a user loads them: bf16, sdpa; nf4 and k-bit preparation for QLoRA; LoRA with the
    same settings as kubetune's."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    dtype = torch.bfloat16 if config["gpu"] else torch.float32
    kwargs: dict[str, Any] = {}
    if config["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=dtype, attn_implementation="sdpa", **kwargs)
    if config["method"] == "full":
        return tokenizer, model
    if config["method"] == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config["gradient_checkpointing"])
    lora = spec.method.adapter
    return tokenizer, get_peft_model(model, LoraConfig(
        r=lora.rank, lora_alpha=int(lora.effective_alpha), lora_dropout=lora.dropout, target_modules="all-linear",
        task_type="CAUSAL_LM"))


def user_arguments(config: dict[str, Any], root: Path, steps: int) -> dict[str, Any]:
    """The TrainingArguments both hand-written scripts share."""
    return {
        "output_dir": str(root / "user-output"), "per_device_train_batch_size": config["batch_size"],
        "max_steps": steps, "learning_rate": LEARNING_RATE, "lr_scheduler_type": "constant", "optim": "adamw_torch",
        "seed": SEED, "logging_steps": steps, "save_strategy": "no", "report_to": [], "bf16": config["gpu"],
        "use_cpu": not config["gpu"], "disable_tqdm": True,
        "gradient_checkpointing": config["gradient_checkpointing"],
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if config["gradient_checkpointing"] else None,
    }


def run_plain(config: dict[str, Any], root: Path, steps: int) -> None:
    """transformers' Trainer + peft: rows tokenized and truncated, padded to the batch's longest row."""
    from datasets import load_dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer, model = user_model(config, root, effective(config, root, steps))
    limit = config["max_seq_length"]

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        ids = tokenizer(row["text"] + tokenizer.eos_token)["input_ids"][:limit]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}

    rows = load_dataset("json", data_files=str(root / "train.jsonl"), split="train")
    rows = rows.map(tokenize, remove_columns=rows.column_names)
    Trainer(model=model, args=TrainingArguments(**user_arguments(config, root, steps)), train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)).train()


def run_trl(config: dict[str, Any], root: Path, steps: int) -> None:
    """TRL's SFTTrainer with its defaults, on the same peft model and text rows."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, model = user_model(config, root, effective(config, root, steps))
    rows = load_dataset("json", data_files=str(root / "train.jsonl"), split="train")
    arguments = SFTConfig(**user_arguments(config, root, steps), max_length=config["max_seq_length"])
    SFTTrainer(model=model, args=arguments, train_dataset=rows, processing_class=tokenizer).train()


def run_kubetune_flat(config: dict[str, Any], root: Path, steps: int) -> None:
    run_kubetune(config, root, steps, flat=True)


RUNNERS = {"kubetune": run_kubetune, "plain": run_plain, "trl": run_trl, "kubetune-flat": run_kubetune_flat}


def side_main(side: str, config_name: str, root: Path, warmup: int, timed: int) -> int:
    """One side in this (fresh) process: its numbers land in root/<side>.json."""
    import torch

    if not CONFIGS[config_name]["gpu"]:
        torch.set_num_threads(1)  # a tiny model gains nothing from threads, and they stall on a shared CPU
    install(Meter(warmup, timed, root / f"{side}.json"))
    RUNNERS[side](CONFIGS[config_name], root, warmup + timed)
    return 0


# ------------------------------------------------------------------------------------------- driving


def run_side(side: str, config_name: str, root: Path, warmup: int, timed: int) -> dict[str, Any]:
    paths = [str(REPO / "operator"), str(REPO / "trainer"), str(REPO)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, __file__, "--side", side, "--config", config_name, "--root", str(root),
               "--warmup", str(warmup), "--steps", str(timed)]
    started = time.monotonic()
    process = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    result: dict[str, Any] = {"config": config_name, "side": side, "exit_code": process.returncode,
                              "process_seconds": round(time.monotonic() - started, 1)}
    numbers = root / f"{side}.json"
    if process.returncode != 0 or not numbers.is_file():
        result["log_tail"] = (process.stdout + process.stderr)[-3000:]
        return result
    measured = json.loads(numbers.read_text())
    config = CONFIGS[config_name]
    tokens_per_second = measured["timed_tokens"] / measured["seconds"]
    per_token = flops_per_token(model_dims(config) if config["hub_id"] else tiny_dims(), config["max_seq_length"])
    result.update({
        "tokens_per_second": round(tokens_per_second, 1),
        "peak_reserved_gib": None if measured["peak_reserved_gib"] is None else round(measured["peak_reserved_gib"], 3),
        "mfu": round(tokens_per_second * per_token / H100_BF16_PEAK_FLOPS, 4),
        **measured,
    })
    if side.startswith("kubetune"):
        result["kernels"] = json.loads((root / "kubetune-kernels.json").read_text())
    return result


def tiny_dims() -> dict[str, Any]:
    from kubetune_trainer import tiny

    return {**tiny.TINY_DIMS, "vocab_size": tiny.TINY_VOCAB_SIZE}


def with_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each side's tokens/s and peak memory over the plain script's, where both are known."""
    plain = next((r for r in results if r["side"] == "plain" and "tokens_per_second" in r), None)
    for result in results:
        if plain is None or "tokens_per_second" not in result:
            continue
        result["tokens_per_second_vs_plain"] = round(result["tokens_per_second"] / plain["tokens_per_second"], 3)
        if result["peak_reserved_gib"] is not None and plain["peak_reserved_gib"]:
            result["peak_memory_vs_plain"] = round(result["peak_reserved_gib"] / plain["peak_reserved_gib"], 3)
    return results


def table(results: list[dict[str, Any]]) -> str:
    header = ("config", "side", "tokens/s", "x plain", "peak GiB", "x plain", "MFU", "kernels")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for r in results:
        if "tokens_per_second" not in r:
            lines.append(f"{r['config']} | {r['side']} | failed (exit {r['exit_code']})")
            continue
        kernels = r.get("kernels")
        described = (f"liger {'on' if kernels['liger'] else 'off'}, packing {kernels['packing']}, "
                     f"{kernels['optimizer']}") if kernels else ""
        peak = "-" if r["peak_reserved_gib"] is None else f"{r['peak_reserved_gib']:.2f}"
        lines.append(" | ".join([
            r["config"], r["side"], f"{r['tokens_per_second']:,.0f}", f"{r.get('tokens_per_second_vs_plain', 1):.2f}",
            peak, f"{r['peak_memory_vs_plain']:.2f}" if "peak_memory_vs_plain" in r else "-",
            f"{100 * r['mfu']:.1f}%", described,
        ]))
    return "\n".join(lines)


def benchmark(config_names: list[str], out: Path, work: Path, warmup: int, timed: int, *,
              sides: tuple[str, ...] = SIDES) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    everything = []
    for name in config_names:
        root = work / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        prepare(CONFIGS[name], root, warmup + timed)
        try:
            results = with_ratios([run_side(side, name, root, warmup, timed) for side in sides])
        finally:
            shutil.rmtree(root, ignore_errors=True)  # an 8B model is 16 GB of disk
        with (out / "speed_results.jsonl").open("a") as sink:
            for result in results:
                print(json.dumps(result), flush=True)
                sink.write(json.dumps(result) + "\n")
        everything += results
    return everything


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="*", choices=list(CONFIGS), help="default: the GPU configurations")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/kubetune-speed-bench"),
                        help="where models and rows are built; each configuration's folder is removed after it")
    parser.add_argument("--warmup", type=int, default=5, help="optimizer steps before the timed window")
    parser.add_argument("--steps", type=int, default=15, help="timed optimizer steps")
    parser.add_argument("--sides", nargs="+", choices=SIDES + EXTRA_SIDES, default=list(SIDES),
                        help="the sides to run (plain is the baseline of the ratios)")
    # internal: one side, in this process
    parser.add_argument("--side", choices=SIDES + EXTRA_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        return side_main(args.side, args.config[0], args.root, args.warmup, args.steps)
    if args.out is None:
        parser.error("--out is required")
    results = benchmark(args.config or GPU_CONFIGS, args.out, args.work, args.warmup, args.steps,
                        sides=tuple(args.sides))
    print(table(results))
    return 0 if all("tokens_per_second" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
