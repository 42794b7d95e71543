"""Measure real peak GPU memory of fine-tuning steps, to check kubetune's estimator (needs CUDA).

Runs on a CUDA machine with torch, transformers and peft (no kubetune import, no hub download: each
model is built from its config.json dimensions with random weights, which take the same memory as
real ones). For each case it runs two optimizer steps the way the Hugging Face Trainer does (bf16
autocast, outputs dropped before backward, AdamW, zero_grad(set_to_none)) and records the peak the
GPU saw: the caching allocator's peak reservation plus the process's CUDA context.

    python tests/benchmarks/estimate_plan_measure_gpu.py tests/benchmarks/estimate_plan_gpu_cases.json OUT.json

Each case names the hub id, the config.json fields (the catalog's dimensions), the method, LoRA rank,
batch, sequence length and checkpointing; docs/estimator.md's measured section holds the results.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

GIB = float(1 << 30)
STEPS = 2  # the optimizer states exist from the first step on; the second step shows the steady peak


def context_gib() -> float:
    """GPU memory this process holds before any tensor: the CUDA context."""
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    return (total - free - torch.cuda.memory_reserved()) / GIB


def quantized(model: torch.nn.Module, quantization: dict[str, Any], attention: str) -> torch.nn.Module:
    """The model reloaded through bitsandbytes, as from_pretrained quantizes a hub checkpoint."""
    import tempfile

    from transformers import BitsAndBytesConfig

    if quantization["bits"] == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_use_double_quant=quantization.get("double_quant", True),
                                    bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        model.save_pretrained(directory)
        del model
        torch.cuda.empty_cache()
        return AutoModelForCausalLM.from_pretrained(directory, quantization_config=config, dtype=torch.bfloat16,
                                                    attn_implementation=attention, device_map={"": 0})


def build(case: dict[str, Any]) -> torch.nn.Module:
    config = AutoConfig.for_model(**case["config"])
    attention = case.get("attention", "sdpa")
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attention)
    if "quantization" in case:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            quantized(model, case["quantization"], attention), use_gradient_checkpointing=case["checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif case["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if case["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        if case["checkpointing"] and "quantization" not in case:
            model.enable_input_require_grads()
        lora = LoraConfig(r=case["rank"], lora_alpha=2 * case["rank"], lora_dropout=case.get("dropout", 0.05),
                          target_modules=case.get("targets", "all-linear"), use_dora=case.get("dora", False),
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.train()
    return model


def make_optimizer(name: str, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizers as the Hugging Face Trainer creates them for `optim`."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=1e-5)
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes

        optimizer = bitsandbytes.optim.PagedAdamW8bit if name.startswith("paged") else bitsandbytes.optim.AdamW8bit
        return optimizer(parameters, lr=1e-5)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=1e-5, scale_parameter=False, relative_step=False)
    return torch.optim.AdamW(parameters, lr=1e-5)


def measure(case: dict[str, Any]) -> dict[str, Any]:
    model = build(case)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(case.get("optimizer", "adamw_torch"), trainable)
    vocab = case["config"]["vocab_size"]
    tokens = torch.randint(0, vocab, (case["batch"], case["seq"]), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(STEPS):
        for _ in range(case.get("accumulation", 1)):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    result = {
        "allocatedGiB": torch.cuda.max_memory_allocated() / GIB,
        "reservedGiB": torch.cuda.max_memory_reserved() / GIB,
        "trainable": sum(p.numel() for p in trainable),
    }
    del model, optimizer, trainable, loss, tokens
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main(cases_file: str, out_file: str) -> None:
    cases = json.loads(Path(cases_file).read_text())
    context = context_gib()
    results = []
    for case in cases:
        started = time.time()
        try:
            measured = measure(case)
        except torch.OutOfMemoryError:
            measured = {"error": "OutOfMemory"}
            gc.collect()
            torch.cuda.empty_cache()
        measured |= {"id": case["id"], "contextGiB": context, "seconds": round(time.time() - started, 1),
                     "device": torch.cuda.get_device_name(), "torch": torch.__version__}
        results.append(measured)
        print(json.dumps(measured), flush=True)
        with open(out_file, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
