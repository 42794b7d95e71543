"""Peak memory of one real training step, traced on the CPU with fake tensors (no real memory).

What it runs is what the kubetune trainer runs on a GPU, minus the GPU: the real transformers model class
built from a config (real hidden size, heads, head_dim, MLP width and vocabulary; 2 or 3 layers), LoRA
applied by the trainer's own `kubetune_trainer.model.add_adapter`, TRL's fused LM head
(`trl.trainer.utils.add_fused_lm_head`, the loss path of SFTTrainer), bf16 weights under bf16 autocast,
non-reentrant gradient checkpointing when asked, and a foreach AdamW step. It runs under
`FakeTensorMode` inside PyTorch's `MemTracker` (what TorchTitan's scripts/estimate does) and reads the
peak by category. The per-layer slope of the 2- and 3-layer traces extrapolates to the real depth.

The state traced is the steady state of gradient accumulation (kubetune's default): optimizer states and
the gradients of the previous micro-batch exist before the forward pass starts.

What a CPU trace cannot see, and how it is bridged:
- TRL's fused head folds each logits tile with a Triton kernel on CUDA, in place, and accumulates its
  gradient GEMMs with fp32 output (`torch.addmm(out_dtype=float32)`); on a CPU it runs the same math as
  torch ops with several float32 copies of each tile. `cuda_kernels()` swaps those two CPU
  fallbacks for stand-ins that allocate nothing, as the CUDA kernels do; every other tensor of the head
  (the tile buffer, the hidden-state copy, the float32 gradient accumulators) is traced for real.
- Dropout on a CPU multiplies by a mask kept in the input's dtype; CUDA's fused dropout keeps a 1-byte mask.
  `cuda_kernels()` runs aten.native_dropout, CUDA's path, instead.
- sdpa dispatches to PyTorch's CPU flash kernel here (it saves the output and a float32 logsumexp, as
  CUDA's flash and memory-efficient kernels do); CUDA-only kernels (flash-attn 2, cuBLAS workspaces) and
  the CUDA caching allocator's fragmentation are not seen.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from kubetune.api import FineTuneJobSpec
from kubetune.catalog import ModelArchitecture

# LoRA settings of the traced runs: the API's defaults (rank 16, dropout 0.05, all linear layers).
LORA_RANK = 16
LORA_DROPOUT = 0.05
DATASET = {"name": "tatsu-lab/alpaca"}
# Depths traced, extrapolated from. Not 1 and 2: with one layer the backward pass peaks in the loss, with
# two in the last layer's backward, so their difference is not one layer's worth; from 2 layers on, every
# trace peaks at the same point and the difference is exactly what one more layer keeps.
TRACED_LAYERS = (2, 3)


@dataclass(frozen=True)
class Shape:
    """A decoder's dimensions and the transformers model_type that builds it."""

    model_type: str  # llama, mistral, qwen2, gemma2, gemma3_text
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    layers: int  # the real depth, extrapolated to
    tied: bool
    attention: str = "sdpa"  # what the trainer runs: sdpa, or eager where transformers has no sdpa (Gemma 2)

    def architecture(self) -> ModelArchitecture:
        """The estimator's record of the same dimensions (parameters counted from them, as traced)."""
        return ModelArchitecture(
            hidden_size=self.hidden, num_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, intermediate_size=self.ffn, vocab_size=self.vocab,
            tie_word_embeddings=self.tied, head_dim=self.head_dim, name=self.model_type,
        )


@dataclass(frozen=True)
class Run:
    """What one micro-batch trains."""

    method: str  # lora | full
    batch: int
    seq: int
    checkpointing: bool

    def spec(self, shape: Shape) -> FineTuneJobSpec:
        method: dict[str, Any] = {"type": self.method}
        if self.method == "lora":
            method["lora"] = {"rank": LORA_RANK, "dropout": LORA_DROPOUT}
        return FineTuneJobSpec.model_validate({
            "model": {"name": f"trace/{shape.model_type}", "dtype": "bfloat16", "attention": shape.attention},
            "dataset": DATASET,
            "method": method,
            "training": {"batchSize": self.batch, "maxSeqLength": self.seq, "optimizer": "adamw_torch",
                         "gradientCheckpointing": self.checkpointing, "gradientAccumulationSteps": 2},
            "resources": {"gpus": 1},
        })


@dataclass(frozen=True)
class Peak:
    """Bytes alive at the traced peak, by MemTracker's category."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float  # MemTracker's Activation: saved for backward (and recomputed under checkpointing)
    temporary: float  # MemTracker's Temp: backward's gradients of activations and scratch

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.temporary

    @property
    def step(self) -> float:
        """What the forward/backward pass holds beyond the persistent state."""
        return self.activations + self.temporary

    def extrapolate(self, other: Peak, layers: int) -> Peak:
        """`self` traced with TRACED_LAYERS[0] layers, `other` with one more: each category at `layers` layers."""
        def at(first: float, second: float) -> float:
            return first + (layers - TRACED_LAYERS[0]) * (second - first)

        return Peak(*(at(getattr(self, name), getattr(other, name)) for name in Peak.__dataclass_fields__))


def model_config(shape: Shape, layers: int) -> Any:
    from transformers import AutoConfig

    extra: dict[str, Any] = {}
    if shape.model_type.startswith("gemma"):
        # Every layer global: a sliding window shorter than the sequence only lowers the real peak.
        extra["layer_types"] = ["full_attention"] * layers
    return AutoConfig.for_model(
        shape.model_type, hidden_size=shape.hidden, num_hidden_layers=layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, intermediate_size=shape.ffn,
        vocab_size=shape.vocab, tie_word_embeddings=shape.tied, attn_implementation=shape.attention, use_cache=False,
        **extra,
    )


def _noop(*_args: Any, **_kwargs: Any) -> None:
    """What an in-place CUDA kernel allocates: nothing."""


def _fused_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Dropout as CUDA runs it (aten.native_dropout, a 1-byte mask); the CPU fallback keeps one in the input dtype."""
    return torch.native_dropout(input, p, training)[0] if training and p > 0 else input


@contextlib.contextmanager
def cuda_kernels() -> Iterator[None]:
    """TRL's fused-head tile folds and fp32-output GEMMs, and dropout, as on CUDA (see the module doc)."""
    from trl.kernels import chunked_logprob

    replaced: list[tuple[Any, str, Any]] = [
        (chunked_logprob, name, _noop) for name in ("_forward_tile", "_backward_tile", "_addmm_fp32")
    ]
    replaced.append((torch.nn.functional, "dropout", _fused_dropout))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replaced]
    for owner, name, value in replaced:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class _NoHook:
    def remove(self) -> None:
        return


def build_model(shape: Shape, run: Run, layers: int) -> Any:
    """The model on the meta device as the trainer prepares it: LoRA, fused head, checkpointing."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from kubetune_trainer.model import add_adapter

    spec = run.spec(shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(shape, layers), dtype=torch.bfloat16)
    model = add_adapter(model, spec, run.checkpointing)
    base = model.get_base_model() if run.method != "full" else model
    add_fused_lm_head(base, outputs=("log_probs",))  # the trainer's head on steps it does not log
    if run.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if run.method != "full":
            model.enable_input_require_grads()  # what SFTTrainer does for PEFT models with checkpointing
    model.train()
    return model


def _peak(tracker: Any) -> Peak:
    snapshot = next(iter(tracker.get_tracker_snapshot("peak").values()))
    by_name = {getattr(key, "value", key): value for key, value in snapshot.items()}
    return Peak(
        parameters=by_name["Parameter"] + by_name["Buffer"],
        gradients=by_name["Gradient"],
        optimizer=by_name["Optstate"] + by_name["Other"],
        activations=by_name["Activation"],
        temporary=by_name["Temp"],
    )


def _tracker(model: Any, optimizer: Any) -> Any:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    for parameter in model.parameters():
        if not parameter.requires_grad:  # MemTracker hooks every parameter; frozen ones cannot take a hook
            tracker._param_to_grad_hook_handles[parameter] = (_NoHook(), _NoHook())
    return tracker


def trace(shape: Shape, run: Run, layers: int) -> tuple[Peak, Peak]:
    """The peaks of one micro-batch's forward and backward, and of the optimizer step, `layers` layers deep.

    Two phases, traced apart: which one is the higher can change with depth (the optimizer step's temporaries
    grow with the parameters, the loss's with the tokens), so each is extrapolated on its own.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = build_model(shape, run, layers)
    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True), cuda_kernels():
        warnings.simplefilter("ignore")
        model.to_empty(device="cpu")
        model.tie_weights()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)  # foreach: the CUDA default
        for parameter in trainable:
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()  # creates the states; the zero gradients stand for the previous micro-batch's
        ids = torch.randint(0, shape.vocab, (run.batch, run.seq))
        with _tracker(model, optimizer) as passes:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = model(input_ids=ids, labels=ids, fused_lm_head=True)
                loss = -outputs.log_probs.sum() / ids.numel()
            loss.backward()
        del outputs, loss
        with _tracker(model, optimizer) as step:
            optimizer.step()
        return _peak(passes), _peak(step)


@dataclass(frozen=True)
class Traced:
    """Both phases' peaks at the real depth."""

    passes: Peak
    step: Peak

    @property
    def total(self) -> float:
        return max(self.passes.total, self.step.total)


def traced_peak(shape: Shape, run: Run) -> Traced:
    """The peaks at the real depth, from the traces at TRACED_LAYERS."""
    (pass1, step1), (pass2, step2) = (trace(shape, run, layers) for layers in TRACED_LAYERS)
    return Traced(pass1.extrapolate(pass2, shape.layers), step1.extrapolate(step2, shape.layers))
