"""Vision-language models: telling one from its config, and which of its parts are trained.

A vision-language model (Qwen2-VL, Qwen2.5-VL, Idefics3/SmolVLM, LLaVA, Gemma 3, Mllama) has three
parts: the vision tower (a ViT), the projector that maps its features into the language model's
embedding space, and the language model. kubetune trains the language model; spec.vision.train adds
the projector and/or the vision tower. Parts are told apart by the module names transformers gives
them, which are the same across these families (`vision_tower`, `visual`, `vision_model`;
`multi_modal_projector`, `connector`, `merger`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

from transformers import TrainerCallback

from kubetune.api import FineTuneJobSpec

log = logging.getLogger(__name__)

# model_type of the vision-language families kubetune knows; any config with a vision_config counts too.
VISION_LANGUAGE_MODEL_TYPES = frozenset(
    {"qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "llava", "llava_next", "gemma3", "mllama", "paligemma"}
)
# Module names of the vision tower in those families (Qwen: visual; Idefics3, Mllama: vision_model).
VISION_TOWER_NAMES = frozenset({"vision_tower", "visual", "vision_model"})
# Module names of the projector (Qwen's merger sits inside `visual`, so the projector is looked for first).
PROJECTOR_NAMES = frozenset({"multi_modal_projector", "connector", "merger", "mm_projector"})

Part = Literal["languageModel", "projector", "visionTower"]
# The forward hook transformers' enable_input_require_grads registers (make_inputs_require_grads), and peft's own
# for models without that method (make_inputs_require_grad).
INPUT_REQUIRE_GRAD_HOOK = "make_inputs_require_grad"


def is_vision_language(config: Any) -> bool:
    """Whether a transformers config describes a vision-language model."""
    return getattr(config, "vision_config", None) is not None or (
        getattr(config, "model_type", None) in VISION_LANGUAGE_MODEL_TYPES
    )


def part_of(module_name: str) -> Part:
    """The part a module belongs to, from its dotted name."""
    names = set(module_name.split("."))
    if names & PROJECTOR_NAMES:
        return "projector"
    if names & VISION_TOWER_NAMES:
        return "visionTower"
    return "languageModel"


def trained_parts(spec: FineTuneJobSpec) -> frozenset[Part]:
    """The language model, plus what spec.vision.train adds."""
    return frozenset({"languageModel", *spec.vision_settings.train})


def _wanted(module_name: str, targets: list[str]) -> bool:
    """peft's rule for a target name: the whole name, or its last dotted components."""
    return targets == ["all-linear"] or any(
        module_name == target or module_name.endswith("." + target) for target in targets
    )


def lora_targets(linear_names: Iterable[str], output_name: str | None, spec: FineTuneJobSpec) -> list[str]:
    """Full names of the linear layers that get adapters: those of the trained parts that match
    spec.method.lora.targetModules; the output projection only when named there (as peft's all-linear)."""
    parts = trained_parts(spec)
    targets = list(spec.method.adapter.target_modules)
    chosen = []
    for name in linear_names:
        if name == output_name:
            if targets != ["all-linear"] and _wanted(name, targets):
                chosen.append(name)
        elif part_of(name) in parts and _wanted(name, targets):
            chosen.append(name)
    return chosen


def linear_layer_names(model: Any) -> tuple[list[str], str | None]:
    """Names of the model's linear layers (bitsandbytes' are linear too), and the output projection's."""
    import torch

    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    output = model.get_output_embeddings()
    output_name = next((name for name, module in model.named_modules() if module is output), None)
    return names, output_name


def freeze_untrained_parts(model: Any, spec: FineTuneJobSpec) -> None:
    """Full fine-tuning: the vision tower and the projector keep their weights unless spec.vision.train lists them."""
    parts = trained_parts(spec)
    for name, parameter in model.named_parameters():
        if part_of(name) not in parts:
            parameter.requires_grad_(False)


def keep_frozen_tower_out_of_backward(model: Any) -> int:
    """Takes a frozen vision tower out of the backward pass; returns how many hooks were removed.

    transformers' enable_input_require_grads (which TRL calls for adapters with gradient checkpointing, and peft's
    prepare_model_for_kbit_training for qlora) hooks every sub-model's input embeddings so that their outputs
    require grad: the vision tower's patch embedding too. A tower none of whose parameters train then keeps every
    block's activations, is recomputed and is back-propagated through, for a gradient nothing uses (traced:
    tests/unit/memtrace_vision.py). Those hooks are removed from the tower's modules, every one of them: each call
    of enable_input_require_grads adds its own and keeps only the newest handles. The language model's stay (its
    adapters need them under reentrant checkpointing), and a projector that trains still gets its gradients from
    its own weights."""
    tower = [module for name, module in model.named_modules() if name and part_of(name) == "visionTower"]
    if not tower or any(p.requires_grad for name, p in model.named_parameters() if part_of(name) == "visionTower"):
        return 0
    removed = 0
    for module in tower:
        for hook_id, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "").startswith(INPUT_REQUIRE_GRAD_HOOK):
                del module._forward_hooks[hook_id]
                removed += 1
    return removed


class FrozenTowerOutOfBackward(TrainerCallback):
    """keep_frozen_tower_out_of_backward once training begins: the Trainer enables checkpointing (and with it the
    input-embedding hooks) again at the start of train(), after the model was built."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and keep_frozen_tower_out_of_backward(model) and state.is_world_process_zero:
            log.info("vision tower frozen: kept out of the backward pass")
