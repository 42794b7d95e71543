"""Trainer overhead: the same model, data and settings through kubetune, through a plain TRL
SFTTrainer script and through a plain transformers + peft script, interleaved in one run; kubetune's
and TRL's throughput as ratios to the plain script's, so kubetune's own overhead and TRL's are apart.

All three train one epoch over the same rows in the same order (so they see exactly the same tokens
in the same batches), LoRA on all linear layers, completion-only loss, no packing, constant learning
rate, no evaluation. On a GPU all run in bf16. Two measures per run:
- tokens/s: trained (non-padding) tokens over the Trainer's train_runtime (kubetune's includes the
  checkpoint it saves at the end);
- the median step time: wall time between the starts of consecutive optimizer steps, median over the
  run. Step i has the same batch on every side, and the median ignores the seconds in which other
  work on a shared machine takes the cores, so it is the steadier measure on a shared CPU.
A warm-up round (one run of each side) is discarded; each round after it runs the three sides in a
rotated order, so drift in the machine's load falls on all of them alike.

    python tests/benchmarks/trainer_overhead.py [--rounds 5] [--rows 1600] [--threads 1] [--out results.json]
        [--model meta-llama/Llama-3.2-1B --prompt-repeats 12 --max-seq-length 512]   # a real-sized step (GPU)

The default model is small (hidden 256), so on a GPU a step is mostly Python; `--model` builds a
random model with a catalog model's dimensions instead, and `--prompt-repeats` lengthens the prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.presets import effective_spec
from kubetune.validation import parse_spec
from kubetune_trainer import tiny
from kubetune_trainer.context import RunContext, with_local_mounts
from kubetune_trainer.train import run as kubetune_run

GOAL_RATIO = 0.97
MOUNT = "/data"
# A model big enough that a step is real work on 2 CPU cores, small enough for a quick run.
BENCH_DIMS = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2}
SETTINGS: dict[str, Any] = {"batch_size": 8, "max_seq_length": 128, "learning_rate": 1e-3, "rank": 8, "seed": 42}


def cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def spec_wire(rows: int) -> dict[str, Any]:
    s = SETTINGS
    return {
        "model": {"path": f"{MOUNT}/model", "dtype": "bfloat16" if cuda() else "float32", "attention": "sdpa"},
        "dataset": {"path": f"{MOUNT}/train.jsonl", "format": "instruction"},
        "method": {"type": "lora", "lora": {"rank": s["rank"], "alpha": 2 * s["rank"], "dropout": 0.0}},
        "training": {
            "epochs": 1, "batchSize": s["batch_size"], "gradientAccumulationSteps": 1,
            "learningRate": s["learning_rate"], "lrScheduler": "constant", "warmupRatio": 0.0,
            "maxSeqLength": s["max_seq_length"], "gradientCheckpointing": False, "loggingSteps": 20,
            "saveSteps": rows, "seed": s["seed"], "optimizer": "adamw_torch",
        },
        "resources": {"gpus": 1 if cuda() else 0},
        "volumes": [{"claimName": "bench", "mountPath": MOUNT}],
    }


class StepClock(TrainerCallback):
    """The start time of every optimizer step of every Trainer built while it is installed."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.starts.append(time.perf_counter())

    def median_step_seconds(self) -> float:
        return statistics.median(later - earlier for earlier, later in pairwise(self.starts))


@contextmanager
def clocked_steps() -> Iterator[StepClock]:
    """A StepClock among the default callbacks of every Trainer (kubetune builds its own inside run())."""
    import transformers.trainer as trainer_module

    clock = StepClock()
    trainer_module.DEFAULT_CALLBACKS.append(clock)
    try:
        yield clock
    finally:
        trainer_module.DEFAULT_CALLBACKS.remove(clock)


def through_kubetune(root: Path, rows: list[dict[str, str]], output: Path) -> dict[str, float]:
    spec = with_local_mounts(effective_spec(parse_spec(spec_wire(len(rows)))), {MOUNT: root})
    report = kubetune_run(RunContext(spec=spec, output_dir=output, metrics_port=0, termination_log=None))
    return {"tokens": report["tokens_total"], "seconds": report["runtime_seconds"]}


def plain_rows(tokenizer: Any, rows: list[dict[str, str]]) -> list[dict[str, list[int]]]:
    """prompt + response + EOS, truncated; the prompt's labels are -100 (as TRL's completion-only loss)."""
    limit = SETTINGS["max_seq_length"]
    examples = []
    for row in rows:
        prompt = tokenizer(row["prompt"] + "\n\n", add_special_tokens=False)["input_ids"]
        full = tokenizer(row["prompt"] + "\n\n" + row["response"] + tokenizer.eos_token,
                         add_special_tokens=False)["input_ids"][:limit]
        labels = [-100] * len(prompt) + full[len(prompt):]
        examples.append({"input_ids": full, "attention_mask": [1] * len(full), "labels": labels[:limit]})
    return examples


def tokenizer_and_lora_model(root: Path) -> tuple[Any, Any]:
    """The tokenizer (EOS as pad) and the model with LoRA on all linear layers, as a user loads them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = SETTINGS
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if cuda() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=dtype, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=s["rank"], lora_alpha=2 * s["rank"], lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    return tokenizer, model


def plain_arguments(output: Path) -> dict[str, Any]:
    """The TrainingArguments both hand-written scripts share (kubetune's spec asks for the same)."""
    s = SETTINGS
    return {
        "output_dir": str(output), "per_device_train_batch_size": s["batch_size"], "num_train_epochs": 1,
        "learning_rate": s["learning_rate"], "lr_scheduler_type": "constant", "optim": "adamw_torch",
        "seed": s["seed"], "logging_steps": 20, "save_strategy": "no", "report_to": [], "bf16": cuda(),
        "use_cpu": not cuda(), "disable_tqdm": True,
        "gradient_checkpointing": False,  # SFTConfig's default is True; kubetune's spec asks for False
    }


def through_plain_script(root: Path, rows: list[dict[str, str]], output: Path) -> dict[str, float]:
    """What a user writes by hand with transformers' Trainer and peft."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer, model = tokenizer_and_lora_model(root)
    examples = plain_rows(tokenizer, rows)
    trainer = Trainer(model=model, args=TrainingArguments(**plain_arguments(output)), train_dataset=examples,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    return {"tokens": sum(len(e["input_ids"]) for e in examples), "seconds": result.metrics["train_runtime"]}


def through_trl_script(root: Path, rows: list[dict[str, str]], output: Path) -> dict[str, float]:
    """What a user writes by hand with TRL's SFTTrainer and peft: prompt/completion rows as kubetune makes them."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, model = tokenizer_and_lora_model(root)
    dataset = Dataset.from_list([{"prompt": row["prompt"] + "\n\n", "completion": row["response"]} for row in rows])
    arguments = SFTConfig(**plain_arguments(output), max_length=SETTINGS["max_seq_length"], packing=False,
                          completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=arguments, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    return {"tokens": trainer._total_train_tokens, "seconds": result.metrics["train_runtime"]}


Side = Callable[[Path, list[dict[str, str]], Path], dict[str, float]]
SIDES: dict[str, Side] = {"plain": through_plain_script, "trl": through_trl_script, "kubetune": through_kubetune}


def rotated(names: list[str], round_index: int) -> list[str]:
    """The sides in round `round_index`'s order: each round starts one side later than the previous."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def timed_run(side: Side, root: Path, rows: list[dict[str, str]], output: Path) -> dict[str, float]:
    with clocked_steps() as clock:
        result = side(root, rows, output)
    return {**result, "median_step_seconds": clock.median_step_seconds()}


def benchmark_rows(count: int, prompt_repeats: int) -> list[dict[str, str]]:
    """Instruction rows; each prompt is prompt_repeats generated prompts long."""
    rows = tiny.instruction_rows(count * prompt_repeats, seed=7)
    return [
        {"prompt": " ".join(r["prompt"] for r in rows[i * prompt_repeats:(i + 1) * prompt_repeats]),
         "response": rows[i * prompt_repeats]["response"]}
        for i in range(count)
    ]


def save_model(directory: Path, hub_id: str | None) -> None:
    if hub_id is None:
        tiny.save_tiny_model(directory, **BENCH_DIMS)
        return
    from trainer_gpu import build_model, model_dims  # the GPU benchmark's builder, same directory

    build_model(directory, model_dims({"hub_id": hub_id}))


def run_rounds(rounds: int, root: Path, rows: list[dict[str, str]]) -> dict[str, list[dict[str, float]]]:
    """A discarded warm-up round, then `rounds` rounds of every side in rotated order."""
    names = list(SIDES)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_index in range(rounds + 1):
        for name in rotated(names, round_index):
            result = timed_run(SIDES[name], root, rows, root / f"{name}-{round_index}")
            if round_index > 0:
                runs[name].append(result)
    return runs


def side_summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    rates = [run["tokens"] / run["seconds"] for run in runs]
    steps_ms = [1000 * run["median_step_seconds"] for run in runs]
    return {"tokens": runs[0]["tokens"], "tokens_per_second": [round(rate, 1) for rate in rates],
            "median_step_ms": [round(ms, 2) for ms in steps_ms],
            "median_tokens_per_second": statistics.median(rates), "median_of_step_ms": statistics.median(steps_ms),
            "best_tokens_per_second": max(rates), "best_step_ms": min(steps_ms)}


def ratios(side: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """`side`'s throughput over `baseline`'s: by tokens/s and by (inverse) median step time, each as the ratio
    of the medians over the rounds and of the best rounds (the least disturbed by other work on the machine)."""
    return {
        "tokens_per_second": round(side["median_tokens_per_second"] / baseline["median_tokens_per_second"], 4),
        "step_time": round(baseline["median_of_step_ms"] / side["median_of_step_ms"], 4),
        "best_tokens_per_second": round(side["best_tokens_per_second"] / baseline["best_tokens_per_second"], 4),
        "best_step_time": round(baseline["best_step_ms"] / side["best_step_ms"], 4),
    }


def measure(rounds: int, row_count: int, hub_id: str | None = None, prompt_repeats: int = 1) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        save_model(root / "model", hub_id)
        rows = benchmark_rows(row_count, prompt_repeats)
        tiny.write_jsonl(root / "train.jsonl", rows)
        runs = run_rounds(rounds, root, rows)
    sides = {name: side_summary(side_runs) for name, side_runs in runs.items()}
    kubetune_over_plain = ratios(sides["kubetune"], sides["plain"])
    return {
        "device": "cuda" if cuda() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": hub_id or f"random llama {BENCH_DIMS}",
        "settings": SETTINGS,
        "prompt_repeats": prompt_repeats,
        "rounds": rounds,
        "rows": row_count,
        "sides": sides,
        "kubetune_over_plain": kubetune_over_plain,
        "trl_over_plain": ratios(sides["trl"], sides["plain"]),
        "kubetune_over_trl": ratios(sides["kubetune"], sides["trl"]),
        "goal": GOAL_RATIO,
        "meets_goal": kubetune_over_plain["tokens_per_second"] >= GOAL_RATIO,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds, after one warm-up round")
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", metavar="HUB_ID", help="random model with this catalog model's dimensions")
    parser.add_argument("--prompt-repeats", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=SETTINGS["max_seq_length"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a CPU other work shares)")
    args = parser.parse_args()
    SETTINGS["max_seq_length"] = args.max_seq_length
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = measure(args.rounds, args.rows, args.model, args.prompt_repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
