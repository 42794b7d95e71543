"""Training presets and the effective spec: what the trainer and the estimator actually use.

A preset fills only the training fields the user left out (pydantic's `model_fields_set` tells
which were given); explicit fields always win. Values that depend on other fields (the learning
rate on the method, the 4-bit type, the compute dtype) are resolved here too, so that every
consumer sees one fully resolved spec.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import FineTuneJobSpec, TrainingSpec

PRESETS: dict[str, dict[str, Any]] = {
    # The field defaults of TrainingSpec: a sound single-GPU LoRA recipe.
    "default": {},
    # Trade speed for memory: one sequence per pass, checkpointing on, a paged 8-bit optimizer.
    "low-memory": {
        "batch_size": 1,
        "gradient_accumulation_steps": 16,
        "gradient_checkpointing": True,
        "optimizer": "paged_adamw_8bit",
        "max_seq_length": 1024,
    },
    # Large GPUs: bigger batches and no recomputation.
    "high-memory": {
        "batch_size": 16,
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": False,
    },
    # A smoke test that finishes in minutes and exercises checkpoints and evaluation.
    "quick-test": {
        "max_steps": 30,
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_seq_length": 256,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_steps": 10,
        "eval_steps": 10,
    },
}

# Full fine-tuning moves every weight: an order of magnitude below the adapter learning rate.
FULL_FINE_TUNE_LEARNING_RATE = 2e-5


def effective_training(training: TrainingSpec, method_type: str) -> TrainingSpec:
    """The training settings with the preset and method-dependent defaults applied."""
    given = training.model_fields_set
    filled = {name: value for name, value in PRESETS[training.preset].items() if name not in given}
    if "learning_rate" not in given and "learning_rate" not in filled and method_type == "full":
        filled["learning_rate"] = FULL_FINE_TUNE_LEARNING_RATE
    resolved = training.model_copy(update=filled)
    # Every field is now decided: mark them all as given, so applying this twice changes nothing.
    resolved.model_fields_set.update(TrainingSpec.model_fields)
    return resolved


def effective_spec(spec: FineTuneJobSpec) -> FineTuneJobSpec:
    """The spec with presets and defaults applied; idempotent."""
    method = spec.method
    updates: dict[str, Any] = {}
    if method.type in ("lora", "qlora"):
        lora = method.adapter
        updates["lora"] = lora.model_copy(update={"alpha": lora.effective_alpha})
    if method.quantization is not None:
        quantization = method.quantization
        updates["quantization"] = quantization.model_copy(
            update={
                "type": quantization.effective_type,
                "compute_dtype": quantization.effective_compute_dtype(spec.model.dtype),
            }
        )
    return spec.model_copy(
        update={
            "method": method.model_copy(update=updates),
            "training": effective_training(spec.training, method.type),
        }
    )

