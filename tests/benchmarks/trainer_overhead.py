"""Trainer overhead: the same model, data and settings through kubetune and through a plain
transformers + peft script, alternately in one run; kubetune's tokens/s as a ratio to the plain one.

Both train one epoch over the same rows (so both see exactly the same tokens), LoRA on all linear
layers, completion-only loss, no packing, constant learning rate, no evaluation. Throughput is
trained (non-padding) tokens over the Trainer's train_runtime. On a GPU both run in bf16.

    python tests/benchmarks/trainer_overhead.py [--rounds 3] [--rows 1600] [--out results.json]
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
from pathlib import Path
from typing import Any

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


def through_kubetune(root: Path, rows: int, output: Path) -> dict[str, float]:
    spec = with_local_mounts(effective_spec(parse_spec(spec_wire(rows))), {MOUNT: root})
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


def through_plain_script(root: Path, rows: list[dict[str, str]], output: Path) -> dict[str, float]:
    """What a user writes by hand with transformers' Trainer and peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    s = SETTINGS
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if cuda() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=dtype, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=s["rank"], lora_alpha=2 * s["rank"], lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    examples = plain_rows(tokenizer, rows)
    arguments = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=s["batch_size"], num_train_epochs=1,
        learning_rate=s["learning_rate"], lr_scheduler_type="constant", optim="adamw_torch", seed=s["seed"],
        logging_steps=20, save_strategy="no", report_to=[], bf16=cuda(), use_cpu=not cuda(), disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=examples,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    return {"tokens": sum(len(e["input_ids"]) for e in examples), "seconds": result.metrics["train_runtime"]}


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


def measure(rounds: int, row_count: int, hub_id: str | None = None, prompt_repeats: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        save_model(root / "model", hub_id)
        rows = benchmark_rows(row_count, prompt_repeats)
        tiny.write_jsonl(root / "train.jsonl", rows)
        plain, kubetune = [], []
        for index in range(rounds):
            plain.append(through_plain_script(root, rows, root / f"plain-{index}"))
            kubetune.append(through_kubetune(root, row_count, root / f"kubetune-{index}"))
    plain_rates = [r["tokens"] / r["seconds"] for r in plain]
    kubetune_rates = [r["tokens"] / r["seconds"] for r in kubetune]
    ratio = statistics.median(kubetune_rates) / statistics.median(plain_rates)
    return {
        "device": "cuda" if cuda() else "cpu",
        "model": hub_id or f"random llama {BENCH_DIMS}",
        "settings": SETTINGS,
        "prompt_repeats": prompt_repeats,
        "rounds": rounds,
        "rows": row_count,
        "tokens_per_run": {"plain": plain[0]["tokens"], "kubetune": kubetune[0]["tokens"]},
        "plain_tokens_per_second": [round(r, 1) for r in plain_rates],
        "kubetune_tokens_per_second": [round(r, 1) for r in kubetune_rates],
        "ratio_of_medians": round(ratio, 4),
        "goal": GOAL_RATIO,
        "meets_goal": ratio >= GOAL_RATIO,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", metavar="HUB_ID", help="random model with this catalog model's dimensions")
    parser.add_argument("--prompt-repeats", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=SETTINGS["max_seq_length"])
    args = parser.parse_args()
    SETTINGS["max_seq_length"] = args.max_seq_length
    result = measure(args.rounds, args.rows, args.model, args.prompt_repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
