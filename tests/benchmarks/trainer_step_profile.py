"""Where a LoRA training step's time goes on a GPU: one random model with a catalog model's
dimensions, forward + backward with the LM loss, under the inputs the trainer produces.

Cases: a full batch without padding, the same batch with an attention mask (padded batches), and
one packed row with position ids (TRL's padding-free packing). Prints ms/step, tokens/s and the
top CUDA kernels of the slowest case.

    python tests/benchmarks/trainer_step_profile.py [--model meta-llama/Llama-3.2-1B] [--batch 4] [--seq 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from trainer_gpu import model_dims  # same directory

WARMUP_STEPS, TIMED_STEPS = 3, 10


def build(hub_id: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**model_dims({"hub_id": hub_id}), attn_implementation="sdpa"))
    torch.set_default_dtype(torch.float32)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))


def inputs_for(case: str, batch: int, seq: int, vocab: int) -> dict[str, Any]:
    import torch

    ids = torch.randint(0, vocab, (batch, seq), device="cuda")
    if case == "no mask":
        return {"input_ids": ids, "labels": ids}
    if case == "attention mask":
        mask = torch.ones_like(ids)
        mask[:, -seq // 8:] = 0  # an eighth of each row is padding
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    flat = ids.reshape(1, -1)
    document = seq // 8  # eight documents per row, as packing makes
    positions = torch.arange(batch * seq, device="cuda").remainder(document).reshape(1, -1)
    return {"input_ids": flat, "position_ids": positions, "labels": flat}


def time_steps(model: Any, inputs: dict[str, Any]) -> float:
    import torch

    for _ in range(WARMUP_STEPS):
        model(**inputs).loss.backward()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        model(**inputs).loss.backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / TIMED_STEPS


def top_kernels(model: Any, inputs: dict[str, Any], count: int = 8) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        model(**inputs).loss.backward()
    table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=count)
    return table.splitlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meta-llama/Llama-3.2-1B")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    args = parser.parse_args()
    model = build(args.model)
    vocab = model.config.vocab_size
    results, slowest = {}, ("", 0.0)
    for case in ("no mask", "attention mask", "packed position ids"):
        seconds = time_steps(model, inputs_for(case, args.batch, args.seq, vocab))
        results[case] = {"ms_per_step": round(seconds * 1000, 1), "tokens_per_second": round(args.batch * args.seq
                                                                                              / seconds)}
        slowest = max(slowest, (case, seconds), key=lambda item: item[1])
    print(json.dumps({"model": args.model, "batch": args.batch, "seq": args.seq, **results}, indent=2))
    print("\n".join(top_kernels(model, inputs_for(slowest[0], args.batch, args.seq, vocab))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
