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
- CUDA's autocast runs layer_norm in float32 (it keeps a float32 copy of its input and returns float32); CPU's
  autocast leaves it in bf16. `cuda_kernels()` casts as CUDA does. (The decoders here normalise with RMSNorm, which
  upcasts by hand on either device; LayerNorm is the vision towers'.)
- sdpa dispatches to PyTorch's CPU flash kernel here (it saves the output and a float32 logsumexp, as
  CUDA's flash and memory-efficient kernels do); CUDA-only kernels (flash-attn 2, cuBLAS workspaces) and
  the CUDA caching allocator's fragmentation are not seen.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kubetune.api import FineTuneJobSpec
from kubetune.catalog import ModelArchitecture
from kubetune.estimate import GIB

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
        return self.spec_of({"name": f"trace/{shape.model_type}", "dtype": "bfloat16", "attention": shape.attention})

    def spec_of(self, model: dict[str, Any], dataset: dict[str, Any] = DATASET, **fields: Any) -> FineTuneJobSpec:
        """The FineTuneJob of this run for `model` (spec.model), with more top-level fields (spec.vision)."""
        method: dict[str, Any] = {"type": self.method}
        if self.method == "lora":
            method["lora"] = {"rank": LORA_RANK, "dropout": LORA_DROPOUT}
        return FineTuneJobSpec.model_validate({
            "model": model,
            "dataset": dataset,
            "method": method,
            "training": {"batchSize": self.batch, "maxSeqLength": self.seq, "optimizer": "adamw_torch",
                         "gradientCheckpointing": self.checkpointing, "gradientAccumulationSteps": 2},
            "resources": {"gpus": 1},
            **fields,
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

    def extrapolate(self, *deeper: tuple[Peak, int]) -> Peak:
        """`self` traced at TRACED_LAYERS[0] layers; each (peak, layers) one traced with one more layer in one
        stack (a decoder, a vision tower) and that stack's real depth: each category at the real depths.

        Linear in each stack's depth, and the stacks add up: every tensor alive at the peak belongs to one
        layer of one stack, or to neither (embeddings, head, persistent state of the rest).
        """
        def at(name: str) -> float:
            first = getattr(self, name)
            return first + sum((layers - TRACED_LAYERS[0]) * (getattr(peak, name) - first) for peak, layers in deeper)

        return Peak(*(at(name) for name in Peak.__dataclass_fields__))


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


def _layer_norm_as_cuda_autocast(layer_norm: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """layer_norm as CUDA's autocast runs it: in float32 (on its list of float32 ops), input, weight and bias cast to
    float32, a float32 output; CPU's autocast leaves it in the input's dtype."""
    def in_float32(input: torch.Tensor, normalized_shape: Any, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return layer_norm(input, normalized_shape, weight, bias, eps)
        with torch.autocast("cpu", enabled=False):
            return layer_norm(input.float(), normalized_shape, None if weight is None else weight.float(),
                              None if bias is None else bias.float(), eps)

    return in_float32


@contextlib.contextmanager
def cuda_kernels() -> Iterator[None]:
    """TRL's fused-head tile folds and fp32-output GEMMs, dropout, and autocast's layer_norm as on CUDA (see the
    module doc)."""
    from trl.kernels import chunked_logprob

    replaced: list[tuple[Any, str, Any]] = [
        (chunked_logprob, name, _noop) for name in ("_forward_tile", "_backward_tile", "_addmm_fp32")
    ]
    replaced.append((torch.nn.functional, "dropout", _fused_dropout))
    replaced.append((torch.nn.functional, "layer_norm", _layer_norm_as_cuda_autocast(torch.nn.functional.layer_norm)))
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


def prepare_for_training(model: Any, spec: FineTuneJobSpec) -> Any:
    """A model built on the meta device, prepared as the trainer prepares it: its adapters (or, for full
    fine-tuning, the parts it freezes) from the trainer's own `add_adapter`, TRL's fused head, checkpointing as
    SFTTrainer sets it."""
    from trl.trainer.utils import add_fused_lm_head

    from kubetune_trainer.model import add_adapter
    from kubetune_trainer.vision import keep_frozen_tower_out_of_backward

    checkpointing = spec.training.gradient_checkpointing
    model = add_adapter(model, spec, checkpointing)
    lora = spec.method.type != "full"
    add_fused_lm_head(model.get_base_model() if lora else model, outputs=("log_probs",))  # unlogged steps' head
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()  # what SFTTrainer does for PEFT models with checkpointing
            keep_frozen_tower_out_of_backward(model)  # what the kubetune trainer does next
    model.train()
    return model


def build_model(shape: Shape, run: Run, layers: int) -> Any:
    """The model on the meta device as the trainer prepares it: LoRA, fused head, checkpointing."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(shape, layers), dtype=torch.bfloat16)
    return prepare_for_training(model, run.spec(shape))


# The phase of a traced pass where the model has one: the whole pass is one phase.
PASS = "pass"


def one_phase(_parents: set[str]) -> str:
    return PASS


def _as_peak(snapshot: dict[Any, int]) -> Peak:
    by_name = {getattr(key, "value", key): value for key, value in snapshot.items()}
    return Peak(
        parameters=by_name["Parameter"] + by_name["Buffer"],
        gradients=by_name["Gradient"],
        optimizer=by_name["Optstate"] + by_name["Other"],
        activations=by_name["Activation"],
        temporary=by_name["Temp"],
    )


def _tracker(model: Any, optimizer: Any, phase_of: Callable[[set[str]], str]) -> Any:
    """PyTorch's MemTracker, also keeping the peak of each phase of the pass: `phase_of` names the phase from the
    fully qualified names of the modules running when memory is allocated (MemTracker's module tracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class PhaseTracker(MemTracker):
        phase_peaks: dict[str, dict[Any, int]]

        # MemTracker calls this private hook after every operator; its current snapshot is the memory alive at that
        # point, by category, on the one device traced here. Only the peak per phase is kept: MemTracker's own
        # per-module peaks (a walk over every module at every operator, most of a trace's time) are not used.
        def _update_peak_stats(self, peak_state: Any) -> None:
            phase = phase_of(set(self._mod_tracker.parents))
            for snapshot in self._curr_mem_snap.values():
                if snapshot["Total"] > self.phase_peaks.get(phase, {}).get("Total", -1):
                    self.phase_peaks[phase] = dict(snapshot)

    tracker = PhaseTracker()
    tracker.phase_peaks = {}
    tracker.track_external(model, optimizer)
    for parameter in model.parameters():
        if not parameter.requires_grad:  # MemTracker hooks every parameter; frozen ones cannot take a hook
            tracker._param_to_grad_hook_handles[parameter] = (_NoHook(), _NoHook())
    return tracker


def _peaks(tracker: Any) -> dict[str, Peak]:
    return {phase: _as_peak(snapshot) for phase, snapshot in tracker.phase_peaks.items()}


def trace_step(model: Any, make_inputs: Callable[[], dict[str, Any]],
               phase_of: Callable[[set[str]], str] = one_phase) -> tuple[dict[str, Peak], Peak]:
    """The peaks of one micro-batch's forward and backward (by phase) and of the optimizer step, for a model
    prepare_for_training built; `make_inputs` makes the batch (fake tensors) the model is called with.

    The pass and the step are traced apart: which one is the higher can change with depth (the optimizer step's
    temporaries grow with the parameters, the loss's with the tokens), so each is extrapolated on its own.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True), cuda_kernels():
        warnings.simplefilter("ignore")
        model.to_empty(device="cpu")
        model.tie_weights()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)  # foreach: the CUDA default
        for parameter in trainable:
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()  # creates the states; the zero gradients stand for the previous micro-batch's
        inputs = make_inputs()
        with _tracker(model, optimizer, phase_of) as passes:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = model(**inputs, fused_lm_head=True)
                loss = -outputs.log_probs.sum() / outputs.log_probs.numel()
            # The Trainer's training_step keeps only the loss for backward (compute_loss returns it alone): what
            # the outputs hold beyond the graph (a vision-language model's image features) is freed before it.
            del outputs
            loss.backward()
        del loss
        with _tracker(model, optimizer, one_phase) as step:
            optimizer.step()
        return _peaks(passes), _peaks(step)[PASS]


def trace(shape: Shape, run: Run, layers: int) -> tuple[Peak, Peak]:
    """The peaks of one micro-batch's forward and backward, and of the optimizer step, `layers` layers deep."""
    def tokens() -> dict[str, Any]:
        ids = torch.randint(0, shape.vocab, (run.batch, run.seq))
        return {"input_ids": ids, "labels": ids}

    passes, step = trace_step(build_model(shape, run, layers), tokens)
    return passes[PASS], step


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
    return Traced(pass1.extrapolate((pass2, shape.layers)), step1.extrapolate((step2, shape.layers)))


# ------------------------------------------------------------------------------ what the trace grids share


def grid_params(rows: Iterable[Any]) -> list[Any]:
    """A grid's rows (each with a `title` and `fast`) as pytest params named by their titles; all but the fast
    ones marked slow (tests/unit/conftest.py skips those unless slow tests are selected)."""
    return [pytest.param(row, id=row.title, marks=[] if row.fast else [pytest.mark.slow]) for row in rows]


@dataclass(frozen=True)
class Counted:
    """An estimate's breakdown (GiB) beside a trace whose `total` is the traced peak (bytes)."""

    traced: Any
    breakdown: dict[str, float]

    @property
    def counted_gib(self) -> float:
        """The estimate without what no CPU trace sees (the CUDA context and fragmentation: overhead)."""
        return sum(value for name, value in self.breakdown.items() if name != "overhead")

    @property
    def peak_error(self) -> float:
        return self.counted_gib / (self.traced.total / GIB) - 1
