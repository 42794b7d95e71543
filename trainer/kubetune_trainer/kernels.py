"""Which fast paths a run takes: Liger's fused kernels, how packed documents are laid out, the fused AdamW.

`choose_kernels` is pure (the spec's wishes and the facts of this machine -> the choices); `kernel_facts`
is its one I/O edge. The choices go into the Trainer's arguments, the startup log and training_summary.json.

- Liger (liger-kernel, the optional `gpu` extra): Triton kernels for RMSNorm, SwiGLU and RoPE, applied by
  transformers' `use_liger_kernel`. TRL's SFTTrainer keeps its own chunked LM head (log-probabilities without
  the full logits), so Liger's fused linear cross-entropy is left off: TRL refuses it.
- Packing layout: TRL packs documents into rows of maxSeqLength with best-fit decreasing; position ids restart at
  every document, and transformers derives a per-document causal mask from them, so documents never attend to each
  other. With flash_attention_2 a micro-batch is flattened into one padding-free row (TRL's padding_free: the varlen
  kernel takes the document boundaries, no mask, no work across documents). With sdpa or eager the rows stay rows
  (`packed rows`): a flattened row of batch x seq tokens would make their mask (batch x seq) squared and attend
  across the whole batch, batch times the work and the mask of the rows (trainer/kubetune_trainer/packing.py).
- LoRA inputs under autocast: peft keeps adapter weights in float32 (the master copy AdamW updates) and casts each
  adapter's input to float32 before it; under the Trainer's bf16/fp16 autocast the adapter's matmul then casts it
  straight back. With mixed precision the cast is switched off for training (peft's disable_input_dtype_casting):
  autocast computes the same bf16 product from the bf16 input, two elementwise passes over every adapted input
  fewer, forward and backward; the weights and optimizer states stay float32. Not for DoRA (its own weight-norm
  arithmetic) nor under FSDP (its mixed-precision policy casts parameters instead), and generation after training
  runs with peft's casting back on, outside autocast.
- Fused AdamW: `adamw_torch` becomes `adamw_torch_fused` on CUDA (one kernel for the whole update); the same
  arithmetic, so it is not a choice a user needs to make.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.api import Kernels
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.model import Device

# Liger's Triton kernels are written and tested for Ampere (compute capability 8.0) and newer.
LIGER_MIN_CAPABILITY = (8, 0)
# spec.training.optimizer names whose fused CUDA twin computes the same update.
FUSED_OPTIMIZERS = {"adamw_torch": "adamw_torch_fused"}

# How packed documents reach the model: not packed; packed rows of maxSeqLength with a per-document mask each; or a
# micro-batch flattened into one padding-free row for flash attention's varlen kernel.
PackingLayout = Literal["off", "rows", "padding-free"]


@dataclass(frozen=True)
class KernelFacts:
    """What this machine and model allow: the device, its compute capability, whether Triton is installed,
    the model types liger-kernel can patch (None when liger-kernel is not installed) and the model's type."""

    device: Device
    capability: tuple[int, int] | None
    triton_installed: bool
    liger_model_types: frozenset[str] | None
    model_type: str


@dataclass(frozen=True)
class KernelChoice:
    liger: bool
    reason: str
    packing: PackingLayout
    optimizer: str
    adapters_autocast: bool = False  # LoRA inputs left in the compute dtype for autocast (training only)

    @property
    def padding_free(self) -> bool:
        """TRL's padding_free: the micro-batch is flattened into one row."""
        return self.packing == "padding-free"

    def as_summary(self) -> dict[str, Any]:
        """The "kernels" entry of training_summary.json."""
        return {"liger": self.liger, "reason": self.reason, "packing": self.packing, "optimizer": self.optimizer,
                "loraInputs": "autocast" if self.adapters_autocast else "peft default"}

    def describe(self) -> str:
        """One line for the startup log."""
        liger = "on" if self.liger else "off"
        lora = "; LoRA inputs left to autocast" if self.adapters_autocast else ""
        return f"kernels: Liger {liger} ({self.reason}); packing {self.packing}; optimizer {self.optimizer}{lora}"


def _liger_unavailable(facts: KernelFacts) -> str | None:
    """Why Liger cannot run here, or None when it can."""
    if facts.device != "cuda":
        return "no CUDA GPU"
    if facts.capability is None or facts.capability < LIGER_MIN_CAPABILITY:
        return f"GPU compute capability {facts.capability} is below {LIGER_MIN_CAPABILITY} (Ampere)"
    if not facts.triton_installed:
        return "Triton is not installed"
    if facts.liger_model_types is None:
        return "liger-kernel is not installed (pip install 'kubetune[gpu]')"
    if facts.model_type not in facts.liger_model_types:
        return f"liger-kernel has no kernels for model type {facts.model_type!r}"
    return None


def packing_layout(packing: bool, attention: str) -> PackingLayout:
    """Padding-free only where the attention kernel takes document boundaries instead of a mask."""
    if not packing:
        return "off"
    return "padding-free" if attention == "flash_attention_2" else "rows"


def adapters_under_autocast(method: str, dora: bool, mixed_precision: bool, fsdp: bool) -> bool:
    """Whether LoRA inputs can skip peft's float32 cast: the Trainer's autocast computes the adapters."""
    return method in ("lora", "qlora") and not dora and mixed_precision and not fsdp


def choose_kernels(requested: Kernels, *, packing: bool, attention: str, optimizer: str, facts: KernelFacts,
                   adapters_autocast: bool = False) -> KernelChoice:
    """The fast paths for this run, given the attention implementation the model was loaded with. kernels liger
    is a hard request: a ConfigError names why it cannot run; auto falls back to none with the reason."""
    unavailable = _liger_unavailable(facts)
    if requested == "liger" and unavailable is not None:
        raise ConfigError(f"spec.training.kernels: liger cannot run here: {unavailable}; set kernels to auto or none")
    if requested == "none":
        liger, reason = False, "spec.training.kernels is none"
    elif unavailable is not None:
        liger, reason = False, unavailable
    else:
        liger, reason = True, f"requested ({requested}) and supported for model type {facts.model_type!r}"
    fused = FUSED_OPTIMIZERS.get(optimizer) if facts.device == "cuda" else None
    return KernelChoice(liger=liger, reason=reason, packing=packing_layout(packing, attention),
                        optimizer=fused or optimizer, adapters_autocast=adapters_autocast)


def liger_model_types() -> frozenset[str] | None:
    """The model types liger-kernel can patch, or None when it is not installed (imported only then: it
    imports Triton)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def kernel_facts(device: Device, capability: tuple[int, int] | None, model: Any) -> KernelFacts:
    """The facts of this machine and model; liger-kernel and Triton are looked at only on a GPU."""
    on_gpu = device == "cuda"
    return KernelFacts(
        device=device,
        capability=capability,
        triton_installed=on_gpu and importlib.util.find_spec("triton") is not None,
        liger_model_types=liger_model_types() if on_gpu else None,
        model_type=str(model.config.model_type),
    )
