"""GPU benchmark of the kubetune trainer: throughput, MFU, and peak memory against the estimator.

Each configuration builds a random-initialised model with the dimensions of a real one (from
kubetune's catalog; nothing is downloaded), writes a FineTuneJob spec, runs `python -m
kubetune_trainer` on it in a fresh process, and reads training_summary.json. Peak memory is
torch.cuda.max_memory_reserved of the training process; the estimate is kubetune.estimate for the
same spec. Results: one JSON line per configuration in OUT/gpu_results.jsonl.

    python tests/benchmarks/trainer_gpu.py --out /tmp/out [--only NAME ...] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from kubetune import contract
from kubetune.catalog import lookup
from kubetune.estimate import estimate
from kubetune.validation import parse_spec

# Dense bf16 peak of an H100 SXM (NVIDIA's datasheet figure without sparsity), for MFU.
H100_BF16_PEAK_FLOPS = 989e12
ROW_WORDS = 160  # words per generated text row: a few rows fill a 2048-token packed sequence

CONFIGS: dict[str, dict[str, Any]] = {
    "qlora4-small-llama": {
        "hub_id": None,
        "dims": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 32000},
        "method": {"type": "qlora", "quantization": {"bits": 4, "type": "nf4"}, "lora": {"rank": 16}},
        "training": {"batchSize": 4, "maxSeqLength": 512, "packing": True},
    },
    "llama-3.2-1b-lora-r16-seq2048-packing": {
        "hub_id": "meta-llama/Llama-3.2-1B",
        "method": {"type": "lora", "lora": {"rank": 16}},
        "training": {"batchSize": 4, "maxSeqLength": 2048, "packing": True, "gradientCheckpointing": True},
    },
    "llama-3.2-1b-lora-r16-seq2048-packing-no-checkpointing": {
        "hub_id": "meta-llama/Llama-3.2-1B",
        "method": {"type": "lora", "lora": {"rank": 16}},
        "training": {"batchSize": 4, "maxSeqLength": 2048, "packing": True, "gradientCheckpointing": False},
    },
    "qwen2.5-0.5b-full-seq1024": {
        "hub_id": "Qwen/Qwen2.5-0.5B",
        "method": {"type": "full"},
        "training": {"batchSize": 8, "maxSeqLength": 1024, "packing": True, "gradientCheckpointing": True},
    },
    "llama-3.1-8b-qlora4-seq2048": {
        "hub_id": "meta-llama/Llama-3.1-8B",
        "method": {"type": "qlora", "quantization": {"bits": 4}, "lora": {"rank": 16}},
        "training": {"batchSize": 1, "maxSeqLength": 2048, "packing": True, "gradientCheckpointing": True},
    },
    "llama-3.2-3b-qlora4-seq2048": {
        "hub_id": "meta-llama/Llama-3.2-3B",
        "method": {"type": "qlora", "quantization": {"bits": 4}, "lora": {"rank": 16}},
        "training": {"batchSize": 2, "maxSeqLength": 2048, "packing": True, "gradientCheckpointing": True},
    },
}


def model_dims(config: dict[str, Any]) -> dict[str, Any]:
    if config["hub_id"] is None:
        return dict(config["dims"])
    arch = lookup(config["hub_id"])
    assert arch is not None, config["hub_id"]
    dims = {
        "hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers, "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads, "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tie_word_embeddings,
    }
    if arch.head_dim is not None:
        dims["head_dim"] = arch.head_dim
    return dims


def build_model(directory: Path, dims: dict[str, Any]) -> None:
    """A random Llama-architecture model with these dimensions, in bf16, built on the GPU."""
    from transformers import LlamaConfig

    from kubetune_trainer import tiny

    tokenizer = tiny.build_tokenizer()
    config = LlamaConfig(**dims, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         max_position_embeddings=4096)
    save_random_model(directory, config, tokenizer)


def save_random_model(directory: Path, config: Any, tokenizer: Any) -> None:
    """The model class of `config` with random weights, built in bf16 on the GPU (an 8B model then fits and
    builds fast), saved with the tokenizer where `model.path` loads it."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()


def write_data(path: Path, rows: int) -> None:
    from kubetune_trainer import tiny

    words = " ".join(row["text"] for row in tiny.text_rows(rows * ROW_WORDS // 12)).split()
    lines = [{"text": " ".join(words[i * ROW_WORDS:(i + 1) * ROW_WORDS])} for i in range(rows)]
    tiny.write_jsonl(path, lines)


def spec_for(config: dict[str, Any], model_dir: Path, data_file: Path, steps: int) -> dict[str, Any]:
    return {
        "model": {"path": str(model_dir), "dtype": "bfloat16", "attention": "sdpa"},
        "dataset": {"path": str(data_file), "format": "text"},
        "method": config["method"],
        "training": {"maxSteps": steps, "gradientAccumulationSteps": 1, "loggingSteps": 5, "saveSteps": steps,
                     "completionOnlyLoss": False, **config["training"]},
        "volumes": [{"claimName": "bench", "mountPath": str(model_dir.parent)}],
    }


def flops_per_token(dims: dict[str, Any], seq: int) -> float:
    """6N + 12·L·d·s (PaLM's MFU convention: matmul parameters, attention scores), N without embeddings."""
    h, layers, i = dims["hidden_size"], dims["num_hidden_layers"], dims["intermediate_size"]
    head_dim = dims.get("head_dim", h // dims["num_attention_heads"])
    q, kv = dims["num_attention_heads"] * head_dim, dims["num_key_value_heads"] * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    matmul_params = layers * per_layer + h * dims["vocab_size"]
    return 6 * matmul_params + 12 * layers * q * seq


def run_config(name: str, config: dict[str, Any], work: Path, steps: int) -> dict[str, Any]:
    root = work / name
    model_dir, data_file, output = root / "model", root / "train.jsonl", root / "output"
    dims = model_dims(config)
    started = time.monotonic()
    build_model(model_dir, dims)
    rows = steps * config["training"]["batchSize"] * config["training"]["maxSeqLength"] // ROW_WORDS + 64
    write_data(data_file, rows)
    spec_wire = spec_for(config, model_dir, data_file, steps)
    spec_file = root / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"spec": spec_wire}))
    env = {**os.environ, contract.ENV_SPEC_PATH: str(spec_file), contract.ENV_OUTPUT_DIR: str(output),
           contract.ENV_METRICS_PORT: "0"}
    command = [sys.executable, "-m", "kubetune_trainer"]
    process = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    result: dict[str, Any] = {"config": name, "exit_code": process.returncode,
                              "setup_and_run_seconds": round(time.monotonic() - started, 1)}
    if process.returncode != 0:
        result["log_tail"] = (process.stdout + process.stderr)[-3000:]
        return result
    summary = json.loads((output / contract.SUMMARY_FILE_NAME).read_text())
    predicted = estimate(parse_spec(spec_wire))
    seq = config["training"]["maxSeqLength"]
    steady = summary.get("steady_tokens_per_second")
    result.update({
        "tokens_per_second": summary["tokens_per_second"],
        "steady_tokens_per_second": steady,
        "mfu": round(steady * flops_per_token(dims, seq) / H100_BF16_PEAK_FLOPS, 4) if steady else None,
        "peak_reserved_gib": summary["peak_gpu_memory_gib"],
        "estimated_gib": predicted.per_gpu_gib,
        "estimate_breakdown_gib": predicted.breakdown,
        "first_loss_vs_final": [summary.get("first_loss"), summary["final_loss"]],
        "trainable_parameters": summary["trainable_parameters"],
        "adapter_files": sorted(p.name for p in (output / "final").iterdir()),
    })
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    # Not under /tmp: specs may not mount volumes there (the trainer uses it).
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/kubetune-gpu-bench"))
    parser.add_argument("--only", nargs="*", default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "gpu_results.jsonl"
    for name in args.only:
        try:
            result = run_config(name, CONFIGS[name], args.work, args.steps)
        except Exception as exc:  # one broken configuration must not lose the others' results
            result = {"config": name, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
        with results.open("a") as sink:
            sink.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
