"""FSDP through the Trainer: the fsdp_config it gets, FSDP on CPU processes, and the final model from the shards.

FSDP2 (`fully_shard`) wraps each decoder layer; it shards LoRA's mix of frozen and trainable parameters
as it is (FSDP1 needed use_orig_params for that). Checkpoints are sharded: each rank writes its own part
of the weights and optimizer state with torch.distributed.checkpoint (no rank gathers a whole 70B model
to save every saveSteps), and a resume reads them back on every rank. The final model is gathered once,
to rank 0, which writes it as a usual safetensors model or adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fsdp_config() -> dict[str, Any]:
    """The Trainer's fsdp_config (a fresh dict: TrainingArguments fills in its defaults in place)."""
    return {
        "version": 2,
        # Each decoder layer (the model's _no_split_modules) is a unit of its own; the rest is the root unit.
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,  # full shard: a layer's parameters are gathered for its use, then freed
        "state_dict_type": "SHARDED_STATE_DICT",
    }

# What a sharded checkpoint holds in place of model.safetensors: torch.distributed.checkpoint writes the
# .metadata file last, once every rank's part is written (accelerate's FSDP_MODEL_NAME, model index 0).
SHARDED_WEIGHTS_MARKER = "pytorch_model_fsdp_0/.metadata"


def shard_cpu_processes(trainer: Any) -> None:
    """FSDP on CPU processes, as on GPUs. accelerate 1.15 switches to FSDP only for accelerator devices
    (AcceleratorState sets DistributedType.FSDP for MULTI_GPU, MULTI_NPU, ..., never MULTI_CPU), so a
    Trainer asked for FSDP on CPU would silently run DDP; FSDP2 itself shards over gloo. The accelerator
    is told what was asked before it prepares the model: the run then takes the GPU run's FSDP code."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if not trainer.args.fsdp or trainer.is_fsdp_enabled or state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def save_model(trainer: Any, directory: Path) -> None:
    """The trained model (or adapter) in `directory`, written once. Under FSDP every rank takes part in
    gathering the full state dict to rank 0's memory, and rank 0 writes it; accelerate's own gather
    (broadcast_from_rank0) leaves tensors without storage on CPU processes, so torch's is used directly."""
    if not trainer.is_fsdp_enabled:
        trainer.save_model(str(directory))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.args.should_save:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(directory), state_dict=full)
