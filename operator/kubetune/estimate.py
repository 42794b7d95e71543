"""GPU memory estimate of a FineTuneJob: peak GiB per GPU, with a breakdown, from first principles.

Peak = weights + adapters + gradients + optimizer states (persistent across steps)
     + max(activations + logits during forward/backward, optimizer-step temporaries)
     + CUDA context + allocator fragmentation.
Every constant is named below with the reason it has its value; docs/estimator.md compares the
result with published measurements. Pure: no I/O except reading config.json for an unknown model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from kubetune.api import EstimateStatus, FineTuneJobSpec
from kubetune.catalog import ModelArchitecture, UnknownModelError, VisionTower, resolve_architecture
from kubetune.gpus import DEFAULT_GPU_MEMORY_GIB, DEFAULT_SAFETY_MARGIN, product_memory_gib
from kubetune.presets import effective_spec

__all__ = ["LossPath", "UnknownModelError", "VramEstimate", "estimate", "lora_parameters"]

GIB = float(1 << 30)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# --- quantized weights (bitsandbytes) ---------------------------------------------------------
# NF4/FP4 store two weights per byte.
FOUR_BIT_BYTES = 0.5
# 4-bit blocks are 64 weights with one fp32 absmax each: 4 / 64 bytes per weight.
FOUR_BIT_BLOCK = 64
FP32_BYTES = 4
# Double quantization stores the absmax as 8-bit in blocks of 256 with one fp32 constant per block
# (QLoRA paper, section 3): 1/64 + 4/(64*256) bytes per weight instead of 4/64.
DOUBLE_QUANT_BLOCK = 256
# LLM.int8 stores one byte per weight plus one fp32 scale per output row (counted per layer).
EIGHT_BIT_BYTES = 1.0

# --- LoRA ------------------------------------------------------------------------------------
# PEFT keeps adapter weights in float32 when the base is float16/bfloat16 (autocast_adapter_dtype).
ADAPTER_BYTES = 4

# --- optimizer states, bytes per trainable parameter ----------------------------------------------
# torch AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype: 2 x its size.
ADAM_STATES = 2
# bitsandbytes 8-bit Adam: two uint8 states plus one fp32 absmax per 256-value block for each.
ADAM_8BIT_BYTES = 2 + 2 * FP32_BYTES / 256
# HF Adafactor (beta1 None) keeps only factored second moments: one fp32 row and column per matrix.
# SGD with the Trainer's defaults has no momentum, so no state.

# --- activations, per token, in the compute dtype ----------------------------------------------
# RMSNorm/LayerNorm upcast their input to float32 and keep it for the backward pass.
NORM_SAVED_BYTES = 4
NORMS_PER_BLOCK = 2
# Gemma 2 and 3 also normalise each sublayer's output (pre- and post-norms: traced, 4 float32 copies).
SANDWICH_NORMS_PER_BLOCK = 4
SANDWICH_NORM_FAMILIES = ("gemma-2", "gemma2", "gemma-3", "gemma3")
# Gemma 2's eager attention soft-caps the scores (tanh): tanh keeps its output in the compute dtype.
# transformers has no sdpa for Gemma 2 (`_supports_sdpa = False`: sdpa cannot soft-cap), so every attention
# but flash_attention_2 runs eager there and keeps the score matrix.
SOFTCAP_SCORE_BYTES = 2
SOFTCAP_FAMILIES = ("gemma-2", "gemma2")
# Flash/SDPA attention keeps q, k, v and the output; eager attention also keeps the probabilities,
# in float32 (softmax upcast) and again in the compute dtype for the product with v.
EAGER_SCORE_BYTES = FP32_BYTES + 2
# A gated MLP keeps the gate output (activation input), its activation and the up output; a plain
# MLP keeps the activation input.
GATED_MLP_SAVED_WIDTHS = 3
PLAIN_MLP_SAVED_WIDTHS = 1
# LoRA's A matrix keeps its input in the compute dtype (autocast copy) and a 1-byte dropout mask.
DROPOUT_MASK_BYTES = 1
# Mixture-of-experts: each token passes through its top-2 experts (Mixtral's num_experts_per_tok).
MOE_EXPERTS_PER_TOKEN = 2
# Liger (spec.training.kernels: liger; TRL keeps its own fused head, so only the layer kernels run):
# its SwiGLU recomputes silu(gate) in backward instead of keeping it (liger_kernel/ops/swiglu.py), and its
# RMSNorm keeps the input in its own dtype plus one float32 statistic per token (ops/rms_norm.py).
LIGER_SWIGLU_RECOMPUTED_WIDTHS = 1
LIGER_NORM_STAT_BYTES = 4
# With checkpointing the block inputs are kept, and one block is recomputed at a time in backward.
RECOMPUTED_BLOCKS = 1
# transformers' sdpa and eager attention expand grouped-query k and v to every query head (repeat_kv) whenever
# an attention mask is passed (padded or packed batches: traced, tests/unit/test_estimator_trace_grid.py), and
# the expanded copies are what attention keeps for backward: k and v are counted at the query width.
# sdpa turns the boolean mask into an additive bias in the compute dtype in every layer and keeps it for the
# backward pass: seq_length values per token per layer.
SDPA_MASK_BIAS_VALUES = 1
# The boolean mask itself (seq_length x seq_length per sequence, one byte each) is built once per forward
# pass and kept by every layer until the backward pass ends.
SDPA_MASK_BYTES = 1
# PEFT casts each adapted linear's input to the adapter dtype (float32) and applies dropout to that copy
# before autocast casts it back: while the widest adapted input is projected, a float32 copy and a float32
# dropout output of it exist at once (the dropout output only with dropout). Under checkpointing this happens
# again in the recomputed block, on top of everything the recomputation keeps. (TRL casts qlora adapters to
# bfloat16: there the copy is in the compute dtype and the dropout output is the input lora_A keeps.)
LORA_INPUT_CAST_BYTES = FP32_BYTES

# bitsandbytes' LLM.int8 matmul (MatMul8bitLt) keeps each quantized linear's input for its backward pass as
# a plain ctx attribute, outside autograd's saved-tensor hooks, so gradient checkpointing cannot drop it:
# in every layer the inputs of the 8-bit linears stay alive until backward reaches them (q/k/v and gate/up
# share theirs): the two norm outputs and the MLP's down input in the residual dtype, and the attention
# output in the compute dtype (read in bitsandbytes 0.50 autograd/_functions.py; bitsandbytes cannot be
# traced on a CPU, so this is not confirmed by the trace grid).
EIGHT_BIT_KEPT_NORM_OUTPUTS = 2

# --- logits and loss ----------------------------------------------------------------------------
# Two ways the loss can be computed (LossPath):
# "fused": the kubetune trainer trains through TRL's SFTTrainer, which patches the LM head
#   (trl.trainer.utils.add_fused_lm_head, TRL 1.16) to project the hidden states in tiles and keep
#   only per-token log-probabilities: the (tokens x vocabulary) logits never exist. What is alive at
#   once: one tile of FUSED_TOKEN_TILE x FUSED_VOCAB_TILE in the compute dtype, a compute-dtype copy
#   of one vocabulary slice of the head, the float32 gradient of the hidden states and, when the head
#   itself trains (full fine-tuning), a float32 gradient of its weight.
# "materialized": transformers' own loss (model(..., labels=...)), which other trainers use.
LossPath = Literal["fused", "materialized"]
FUSED_TOKEN_TILE = 4096  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE
FUSED_VOCAB_TILE = 32768  # trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE
# transformers' loss upcasts the logits to float32 and cross-entropy keeps its float32 log-softmax for
# backward; backward then holds that, the float32 gradient from the loss and the float32 gradient of
# the logits at once: three float32 copies. (Forward peaks lower: compute-dtype logits, the upcast
# and the log-softmax.)
LOGITS_BYTES_PER_ENTRY = 3 * FP32_BYTES

# --- the rest of the GPU ------------------------------------------------------------------------
# CUDA context, cuBLAS handles and lazily loaded kernels, before the first tensor: 0.60 GiB measured
# on an H100 with torch 2.11 / CUDA 13 (docs/estimator.md, measured section).
CUDA_CONTEXT_GIB = 0.6
# The caching allocator reserves more than it hands out (rounded and split blocks). Reserved over
# allocated peak, median of 23 H100 runs (docs/estimator.md, rows M): 6% without gradient
# checkpointing (7 runs, 3-12%) and 18% with it (16 runs, 5-44%), where each block's recomputed
# activations are allocated and freed once per layer while gradients are being allocated between them.
FRAGMENTATION = 0.06
FRAGMENTATION_WITH_CHECKPOINTING = 0.18

# --- conservative bounds where the counted terms are not confirmed (docs/estimator.md) ---------------
# QLoRA 8-bit: the one measured run (M27, H100) allocated 2.0 bytes per quantized weight beyond every
# counted term (a 16-bit copy's worth) and reserved 32% over its allocation. Neither the trace (it cannot
# follow bitsandbytes' int8 matmul) nor a second GPU row explains it, so the planner counts it as a bound.
EIGHT_BIT_UNEXPLAINED_BYTES = 2.0
FRAGMENTATION_EIGHT_BIT = 0.32
# Several GPUs: NCCL's communicators allocate their own buffers outside PyTorch's allocator (NCCL_BUFFSIZE
# 4 MiB per channel and peer, up to 32 channels on NVLink); neither the trace nor a GPU row here measured
# them, so each process counts this much for them.
NCCL_BUFFERS_GIB = 1.0

# --- multi-GPU ---------------------------------------------------------------------------------
# DDP copies the gradients into communication buckets of the same dtype (gradient_as_bucket_view off).
DDP_BUCKET_COPIES = 1
# FSDP holds the gathered parameters of the current unit and prefetches the next one.
FSDP_GATHERED_UNITS = 2

OPTIMIZER_STEP_TEMPORARY = {"adamw_torch": 1.0}  # foreach AdamW: one parameter-sized intermediate


@dataclass(frozen=True)
class VramEstimate:
    """Peak GPU memory of one training process, and where it goes."""

    per_gpu_gib: float
    total_gib: float
    strategy: str  # "cpu" (gpus 0), "single" (1 GPU), "ddp" or "fsdp"
    breakdown: dict[str, float]  # component -> GiB per GPU
    trainable_parameters: int
    total_parameters: int
    assumptions: tuple[str, ...]
    # The estimate from first principles; per_gpu_gib differs from it only after calibration.
    analytic_gib: float = 0.0
    calibration_records: int = 0  # measured runs of this shape that informed per_gpu_gib
    calibration_note: str | None = None
    architecture_key: str = ""  # ModelArchitecture.key of the model estimated

    def __post_init__(self) -> None:
        if not self.analytic_gib:
            object.__setattr__(self, "analytic_gib", self.per_gpu_gib)

    def calibrated(self, per_gpu_gib: float, records: int, note: str) -> VramEstimate:
        """This estimate with the per-GPU peak that measured runs of its shape call for."""
        world = self.total_gib / self.per_gpu_gib if self.per_gpu_gib else 1.0
        return replace(self, per_gpu_gib=round(per_gpu_gib, 3), total_gib=round(per_gpu_gib * world, 3),
                       calibration_records=records, calibration_note=note)

    def to_status(self) -> EstimateStatus:
        return EstimateStatus.model_validate(self.to_json())

    def to_json(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "perGpuGiB": self.per_gpu_gib,
            "totalGiB": self.total_gib,
            "strategy": self.strategy,
            "breakdown": dict(self.breakdown),
            "trainableParameters": self.trainable_parameters,
            "totalParameters": self.total_parameters,
            "assumptions": list(self.assumptions),
            "analyticGiB": self.analytic_gib,
            "calibrationRecords": self.calibration_records,
        }
        if self.calibration_note is not None:
            wire["calibration"] = self.calibration_note
        return wire


# ---------------------------------------------------------------------------------- LoRA targets

# Module names per role across families (Llama/Mistral/Qwen/Gemma, Phi-3 fused, GPT-2, Falcon, Phi-2).
MODULE_ROLES: dict[str, tuple[str, ...]] = {
    "q_proj": ("q",), "k_proj": ("k",), "v_proj": ("v",), "o_proj": ("o",),
    "gate_proj": ("gate",), "up_proj": ("up",), "down_proj": ("down",),
    "qkv_proj": ("qkv", "q", "k", "v"), "gate_up_proj": ("gate_up", "gate", "up"),
    "c_attn": ("qkv", "q", "k", "v"), "c_fc": ("up",), "c_proj": ("o", "down"),
    "query_key_value": ("qkv", "q", "k", "v"), "dense": ("o",), "dense_h_to_4h": ("up",), "dense_4h_to_h": ("down",),
    "fc1": ("up",), "fc2": ("down",), "w1": ("gate",), "w3": ("up",), "w2": ("down",),
    "q": ("q",), "k": ("k",), "v": ("v",), "o": ("o",),
}
LM_HEAD = "lm_head"


def target_roles(targets: list[str], architecture: ModelArchitecture) -> tuple[set[str], bool, list[str]]:
    """(block roles adapted, whether lm_head is adapted, names not recognised)."""
    present = set(architecture.linear_shapes())
    if "all-linear" in targets:
        return present, False, []  # PEFT's all-linear leaves the output layer out
    roles: set[str] = set()
    unknown = []
    for target in targets:
        if target == LM_HEAD:
            continue
        if target in MODULE_ROLES:
            roles.update(role for role in MODULE_ROLES[target] if role in present)
        else:
            unknown.append(target)
    return roles, LM_HEAD in targets, unknown


def lora_parameters(architecture: ModelArchitecture, roles: set[str], lm_head: bool, rank: int, dora: bool) -> int:
    """Adapter parameters: r x (in + out) per adapted matrix (+ out magnitudes for DoRA)."""
    shapes = architecture.linear_shapes()
    per_layer = sum(
        (rank * (n_in + n_out) + (n_out if dora else 0)) * copies
        for role, (n_in, n_out, copies) in shapes.items()
        if role in roles
    )
    total = per_layer * architecture.num_layers
    if lm_head:
        total += rank * (architecture.hidden_size + architecture.vocab_size) + (architecture.vocab_size if dora else 0)
    return total


# ------------------------------------------------------------------------------------ components


@dataclass(frozen=True)
class _Setup:
    """The facts of a spec the formulas need, resolved once."""

    architecture: ModelArchitecture
    method: str
    dtype_bytes: int
    compute_dtype: str
    bits: int | None
    double_quant: bool
    roles: set[str]
    lm_head_adapted: bool
    rank: int
    dropout: bool
    dora: bool
    tokens: int  # per GPU per forward pass
    seq_length: int
    liger: bool  # spec.training.kernels liger: the trainer runs Liger's RMSNorm and SwiGLU or refuses to start
    checkpointing: bool
    eager_attention: bool
    flash_attention: bool  # flash_attention_2 asked for: no mask, k and v kept at their own width
    optimizer: str
    world: int
    unquantized_bytes: int  # bytes per parameter of what bitsandbytes leaves unquantized
    residual_bytes: int  # bytes per value of the residual stream (what checkpointing keeps)
    loss: LossPath
    # Vision-language models: which of the vision tower and projector train, and the images of a micro-batch.
    vision_trained: frozenset[str] = frozenset()
    images: int = 0  # images per GPU per forward pass (batch x maxImages; 0 for text rows)
    max_pixels: int = 0


def _weights_bytes(s: _Setup) -> float:
    a = s.architecture
    if s.bits is None:
        return a.parameters * s.dtype_bytes
    linear = a.block_linear_parameters
    # Embeddings, the output layer and norms stay unquantized (bitsandbytes skips them).
    kept = (a.parameters - linear) * s.unquantized_bytes
    if s.bits == 8:
        rows = sum(n_out * copies for _, n_out, copies in a.linear_shapes().values()) * a.num_layers
        return linear * EIGHT_BIT_BYTES + rows * FP32_BYTES + kept
    if s.double_quant:
        constants = (1 + FP32_BYTES / DOUBLE_QUANT_BLOCK) / FOUR_BIT_BLOCK
    else:
        constants = FP32_BYTES / FOUR_BIT_BLOCK
    return linear * (FOUR_BIT_BYTES + constants) + kept


def _trainable(s: _Setup) -> int:
    if s.method == "full":
        return s.architecture.parameters
    return lora_parameters(s.architecture, s.roles, s.lm_head_adapted, s.rank, s.dora)


def _trainable_bytes_each(s: _Setup) -> int:
    return s.dtype_bytes if s.method == "full" else ADAPTER_BYTES


def _adafactor_state_bytes(s: _Setup) -> float:
    """Factored second moments: (rows + columns) fp32 values per trainable matrix."""
    a = s.architecture
    shapes = a.linear_shapes()
    if s.method == "full":
        per_layer = sum((n_in + n_out) * copies for n_in, n_out, copies in shapes.values())
        vectors = (a.parameters - a.block_linear_parameters - a.embedding_parameters)
        embeddings = (a.vocab_size + a.hidden_size) * (1 if a.tie_word_embeddings else 2)
        return (per_layer * a.num_layers + vectors + embeddings) * FP32_BYTES
    per_layer = sum(
        (2 * s.rank + n_in + n_out) * copies for role, (n_in, n_out, copies) in shapes.items() if role in s.roles
    )
    return per_layer * a.num_layers * FP32_BYTES


def _optimizer_bytes(s: _Setup, trainable: int) -> float:
    if s.optimizer == "adamw_torch":
        return trainable * ADAM_STATES * _trainable_bytes_each(s)
    if s.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return trainable * ADAM_8BIT_BYTES
    if s.optimizer == "adafactor":
        return _adafactor_state_bytes(s)
    return 0.0  # sgd without momentum


def _soft_caps_attention(architecture: ModelArchitecture) -> bool:
    """Gemma 2: soft-capped attention scores, which transformers runs only as eager attention (no sdpa)."""
    return not architecture.sdpa or any(name in architecture.name.lower() for name in SOFTCAP_FAMILIES)


def _block_activation_bytes_per_token(s: _Setup) -> float:
    """What one transformer block keeps for its backward pass, per token."""
    a = s.architecture
    act = DTYPE_BYTES[s.compute_dtype]
    h, i = a.hidden_size, a.intermediate_size
    family = a.name.lower()
    norms = SANDWICH_NORMS_PER_BLOCK if any(name in family for name in SANDWICH_NORM_FAMILIES) else NORMS_PER_BLOCK
    # Liger's RMSNorm keeps its input in the residual dtype and one float32 statistic per token.
    per_norm = h * s.residual_bytes + LIGER_NORM_STAT_BYTES if s.liger else h * NORM_SAVED_BYTES
    saved = norms * per_norm
    # q, k, v and the attention output; k and v expanded to every query head except under flash_attention_2.
    kv_width = a.kv_width if s.flash_attention else a.q_width
    saved += (2 * a.q_width + 2 * kv_width) * act
    if not (s.flash_attention or s.eager_attention):
        saved += s.seq_length * SDPA_MASK_BIAS_VALUES * act
    widths = GATED_MLP_SAVED_WIDTHS if a.mlp == "gated" else PLAIN_MLP_SAVED_WIDTHS
    if s.liger and a.mlp == "gated":
        widths -= LIGER_SWIGLU_RECOMPUTED_WIDTHS
    experts_per_token = min(MOE_EXPERTS_PER_TOKEN, a.num_experts)
    # Quantized linears return their input's dtype: with qlora's float32 residual stream the MLP's
    # elementwise activations are float32 (measured: docs/estimator.md, row M26).
    saved += widths * i * s.residual_bytes * experts_per_token
    if s.eager_attention:
        softcap = SOFTCAP_SCORE_BYTES if _soft_caps_attention(a) else 0
        saved += a.num_attention_heads * s.seq_length * (EAGER_SCORE_BYTES + softcap)
    shapes = a.linear_shapes()
    if s.method == "full":
        # Trained weights need their inputs: the norm outputs (shared by q/k/v and by gate/up),
        # the attention output and the down projection input, and the normed inputs for the norm weights.
        saved += (2 * h + a.q_width + i * experts_per_token + NORMS_PER_BLOCK * h) * act
    else:
        per_input = act + (DROPOUT_MASK_BYTES if s.dropout else 0)
        for role in s.roles:
            n_in, _, copies = shapes[role]
            saved += (n_in * per_input + s.rank * act) * min(copies, experts_per_token)
    return saved


def _eight_bit_inputs_bytes_per_token(s: _Setup) -> float:
    """What LLM.int8's matmuls keep per layer and token, with or without checkpointing (see the constant)."""
    if s.bits != 8:
        return 0.0
    a = s.architecture
    experts_per_token = min(MOE_EXPERTS_PER_TOKEN, a.num_experts)
    residual = (EIGHT_BIT_KEPT_NORM_OUTPUTS * a.hidden_size + a.intermediate_size * experts_per_token)
    return residual * s.residual_bytes + a.q_width * DTYPE_BYTES[s.compute_dtype]


def _lora_input_cast_bytes_per_token(s: _Setup) -> float:
    """PEFT's float32 copy of the widest adapted input (and its dropout output), alive while it is projected."""
    if s.method == "full" or not s.roles:
        return 0.0
    shapes = s.architecture.linear_shapes()
    widest = max(shapes[role][0] for role in s.roles)
    if s.bits is not None:
        return widest * DTYPE_BYTES[s.compute_dtype]
    return widest * LORA_INPUT_CAST_BYTES * (2 if s.dropout else 1)


def _activation_bytes(s: _Setup, logits: float) -> float:
    """Activations alive at the peak of the backward pass, beyond the logits.

    Without checkpointing every block's activations are alive when the loss is computed. With it,
    only the block inputs are. transformers' loss frees its full logits before the first block is
    recomputed, so there the larger of the two counts; TRL's fused head is small, and the trace shows
    its hidden-state gradient and buffers still alive while the last block is recomputed: both count.
    """
    a = s.architecture
    block = _block_activation_bytes_per_token(s) * s.tokens
    # Alive through the whole pass, whatever checkpointing does: sdpa's boolean mask, LLM.int8's inputs.
    mask = 0.0 if s.flash_attention or s.eager_attention else s.tokens * s.seq_length * SDPA_MASK_BYTES
    whole_pass = mask + _eight_bit_inputs_bytes_per_token(s) * s.tokens * a.num_layers
    if not s.checkpointing:
        return a.num_layers * block + whole_pass
    checkpoints = a.num_layers * a.hidden_size * s.residual_bytes * s.tokens
    recomputed = RECOMPUTED_BLOCKS * block + _lora_input_cast_bytes_per_token(s) * s.tokens
    # The fused head's float32 head-weight gradient (full fine-tuning) is freed before the recomputation.
    overlap = logits if s.loss == "materialized" else _head_gradient_bytes(s)
    return checkpoints + whole_pass + max(0.0, recomputed - overlap)


def _head_gradient_bytes(s: _Setup) -> float:
    """The fused head's float32 gradient of the head weight and its copy in the weight's dtype, which exist
    together when its backward returns (traced), when the head trains (full fine-tuning)."""
    a = s.architecture
    return a.vocab_size * a.hidden_size * (FP32_BYTES + s.dtype_bytes) if s.method == "full" else 0.0


def _loss_bytes(s: _Setup) -> float:
    """Logits and loss at their peak (see LossPath)."""
    a = s.architecture
    if s.loss == "materialized":
        return s.tokens * a.vocab_size * LOGITS_BYTES_PER_ENTRY
    act = DTYPE_BYTES[s.compute_dtype]
    vocab_tile = min(a.vocab_size, FUSED_VOCAB_TILE)
    tile = min(s.tokens, FUSED_TOKEN_TILE) * vocab_tile * act
    head_slice = vocab_tile * a.hidden_size * act
    hidden_gradient = s.tokens * a.hidden_size * FP32_BYTES
    return tile + head_slice + hidden_gradient + _head_gradient_bytes(s)


def _per_gpu_components(s: _Setup, strategy: str) -> dict[str, float]:
    """Bytes per GPU of each component for a strategy."""
    trainable = _trainable(s)
    shard = s.world if strategy == "fsdp" else 1
    weights = _weights_bytes(s)
    adapters = 0.0 if s.method == "full" else trainable * ADAPTER_BYTES
    gradients = trainable * _trainable_bytes_each(s)
    optimizer = _optimizer_bytes(s, trainable)
    logits = _loss_bytes(s)
    components = {
        "weights": weights / shard,
        "adapters": adapters / shard,
        "gradients": gradients / shard,
        "optimizer": optimizer / shard,
        "activations": _activation_bytes(s, logits),
        "logits": logits,
    }
    if strategy == "ddp":
        components["ddpBuckets"] = gradients * DDP_BUCKET_COPIES
    if strategy == "fsdp":
        components["fsdpGathered"] = FSDP_GATHERED_UNITS * weights / s.architecture.num_layers
    # Activations and logits are freed before the optimizer step; its temporaries count only
    # where they exceed them.
    temporary = OPTIMIZER_STEP_TEMPORARY.get(s.optimizer, 0.0) * gradients / shard
    components["optimizerStep"] = max(0.0, temporary - components["activations"] - components["logits"])
    if s.architecture.vision is not None:
        language_pass = components["activations"] + components["logits"]
        components.update({name: value / (shard if name != "visionActivations" else 1)
                           for name, value in vision_components(s, s.architecture.vision, language_pass).items()})
    return components


# ------------------------------------------------------------------------------------- vision tower

# What one block of a vision tower keeps per patch for its backward pass (traced: tests/unit/memtrace_vision.py,
# docs/vision.md; the counts before the trace were half of these for a trained tower):
# - its two norms' inputs in float32 (CUDA's autocast runs LayerNorm in float32; RMSNorm upcasts by hand);
VISION_NORMS_PER_BLOCK = 2
# - attention's q, k, v and output (sdpa): 4 widths; a fused qkv projection with rotary positions (Qwen) keeps the
#   rotated q and k and, through v (a view of it), the whole qkv output: 6 widths;
VISION_ATTENTION_SAVED_WIDTHS = 4
VISION_FUSED_ATTENTION_SAVED_WIDTHS = 6
# - the MLP: quick_gelu keeps its input and its sigmoid (2 widths of the MLP), SwiGLU gate, activation and up (3);
VISION_MLP_SAVED_WIDTHS = 2
VISION_GATED_MLP_SAVED_WIDTHS = 3
# - LoRA's adapters keep their input (and dropout mask) as in the decoder; frozen linears keep nothing.
# A tower takes part in the backward pass when it trains. Frozen, it would too under gradient checkpointing with
# adapters: SFTTrainer (and peft's prepare_model_for_kbit_training) call transformers' enable_input_require_grads,
# which hooks the input embeddings of every sub-model, the tower's patch embedding included, and the frozen tower
# then keeps its block inputs, is recomputed and back-propagated through (traced) for no gradient anyone uses. The
# kubetune trainer removes the tower's hooks (kubetune_trainer.vision.keep_frozen_tower_out_of_backward).
# Without a backward pass the tower's blocks run one after another and keep nothing (a model that reads a middle
# block's features holds every block's output through its forward: VisionTower.keeps_block_outputs).
# In backward, the block being recomputed and its backward's temporaries: at most twice what a block keeps (traced
# 1.4-1.8 x); they run after the language model's backward, so they count only beyond its activations.
VISION_BACKWARD_BLOCKS = 2
# The tower's ends while the pass runs, in bytes per tower width per patch: the patch embedding's output, the
# first and last norms, the projector's activation input (up to 4 x the tower width) and the image features in the
# text width; beside them the float32 pixel values, counted apart. Traced: 1-12 across Qwen2-VL, Qwen2.5-VL and
# LLaVA-1.5 with the projector frozen or adapted; 22-29 where LLaVA's projector trains in full or behind a trained
# tower (up to 40 MiB more than counted, on peaks of 47-64 GiB). They are kept for the backward pass only when it
# reaches them: the tower or the projector trains. A frozen tower and projector keep none of it (traced: the images
# add 0-0.06 GiB beyond their pixel values and the hooked embedding copy).
VISION_ENDS_BYTES_PER_WIDTH = 12
# Under the input-embedding hook (checkpointing with adapters), the input embeddings exist twice through the pass:
# the embedding's output, and masked_scatter's copy with the image features in it (traced).
HOOKED_EMBEDDING_COPIES = 1


def vision_trainable_parameters(s: _Setup, tower: VisionTower) -> int:
    """Parameters of the vision tower and projector that train: all of a listed part for full fine-tuning; LoRA
    adapters on a listed part's linear layers otherwise (the projector counted as one linear layer of its size)."""
    trained = s.vision_trained
    if s.method == "full":
        return (tower.tower_parameters if "visionTower" in trained else 0) + (
            tower.projector_parameters if "projector" in trained else 0)
    adapters = 0
    if "visionTower" in trained:
        adapters += s.rank * tower.num_layers * sum(n_in + n_out for n_in, n_out in tower.linear_shapes().values())
    if "projector" in trained and tower.projector_parameters:
        width = s.architecture.hidden_size
        adapters += s.rank * (tower.projector_parameters // width + width)
    return adapters


def _vision_weights_bytes(s: _Setup, tower: VisionTower) -> float:
    """The tower and projector weights; qlora quantizes their linear layers too (bitsandbytes skips only the
    output head) and keeps the rest in float32 (prepare_model_for_kbit_training)."""
    total = tower.tower_parameters + tower.projector_parameters
    if s.bits is None:
        return total * s.dtype_bytes
    linear = tower.num_layers * sum(n_in * n_out for n_in, n_out in tower.linear_shapes().values())
    linear += tower.projector_parameters
    quantized_bytes = FOUR_BIT_BYTES if s.bits == 4 else EIGHT_BIT_BYTES
    return linear * quantized_bytes + (total - linear) * s.unquantized_bytes


def _input_embeddings_hooked(s: _Setup) -> bool:
    """Checkpointing with adapters: every sub-model's input embeddings are made to require grad (see
    VISION_BACKWARD_BLOCKS' comment)."""
    return s.checkpointing and s.method != "full"


def _vision_in_backward(s: _Setup) -> bool:
    """Whether the tower takes part in the backward pass: it trains (a frozen one is kept out of it)."""
    return "visionTower" in s.vision_trained


def _vision_block_bytes_per_patch(s: _Setup, tower: VisionTower) -> float:
    """What one tower block keeps per patch for its backward pass (the constants above)."""
    act = DTYPE_BYTES[s.compute_dtype]
    h, i = tower.hidden_size, tower.intermediate_size
    attention = VISION_FUSED_ATTENTION_SAVED_WIDTHS if tower.fused_qkv else VISION_ATTENTION_SAVED_WIDTHS
    mlp = VISION_GATED_MLP_SAVED_WIDTHS if tower.gated_mlp else VISION_MLP_SAVED_WIDTHS
    # As in the decoder, qlora's quantized linears return the float32 residual dtype (not traced: bitsandbytes).
    saved = VISION_NORMS_PER_BLOCK * h * FP32_BYTES + attention * h * act + mlp * i * s.residual_bytes
    if "visionTower" not in s.vision_trained:
        return saved
    if s.method == "full":
        # Trained weights need their inputs: q/k/v's and up/gate's (each shared), o's and down's, and the normed
        # inputs for the norm weights.
        return saved + (3 * h + i + VISION_NORMS_PER_BLOCK * h) * act
    per_input = act + (DROPOUT_MASK_BYTES if s.dropout else 0)
    return saved + sum(n_in * per_input + s.rank * act for n_in, _ in tower.linear_shapes().values())


def _vision_activation_bytes(s: _Setup, tower: VisionTower, language_pass: float) -> float:
    """The tower's and projector's activations for the images of a micro-batch, at the peak: what they keep through
    the language model's pass (the pixel values, the tower's ends, and in backward every block's inputs or, without
    checkpointing, everything every block keeps), and what the tower's own phases hold beyond the language model's
    activations and loss (`language_pass`): its forward, or its recomputation and backward."""
    patches = s.images * tower.patches_per_image(s.max_pixels)
    block = _vision_block_bytes_per_patch(s, tower) * patches
    stream = patches * tower.hidden_size * (FP32_BYTES if tower.float32_stream else s.residual_bytes)
    kept: float = patches * tower.patch_values * FP32_BYTES
    ends_kept = _vision_in_backward(s) or "projector" in s.vision_trained
    if ends_kept:
        kept += patches * VISION_ENDS_BYTES_PER_WIDTH * tower.hidden_size
    if _input_embeddings_hooked(s):
        kept += HOOKED_EMBEDDING_COPIES * s.tokens * s.architecture.hidden_size * DTYPE_BYTES[s.compute_dtype]
    if tower.rule not in ("dynamic", "fixed") and not s.flash_attention:
        # sdpa's mask over one image's patches (padded tiles: Idefics3, Mllama; not traced). Qwen's tower attends
        # per image or window without one and CLIP's at its fixed size takes none (traced); nor does SigLIP's.
        kept += s.images * tower.patches_per_image(s.max_pixels) ** 2 * SDPA_MASK_BYTES
    if _vision_in_backward(s):
        # Under checkpointing the block inputs are the block outputs a model may keep as well.
        kept += tower.num_layers * (stream if s.checkpointing else block)
        tower_phase = VISION_BACKWARD_BLOCKS * block
    else:
        # Out of backward the tower's blocks keep nothing beyond its own forward. A model that reads a middle block's
        # features (LLaVA) holds every block's output: through its forward, or through the pass where the ends are
        # kept for a trained projector (traced).
        outputs = tower.num_layers * stream if tower.keeps_block_outputs else 0.0
        kept += outputs if ends_kept else 0.0
        tower_phase = block + (0.0 if ends_kept else outputs)
    return kept + max(0.0, tower_phase - language_pass)


def vision_components(s: _Setup, tower: VisionTower, language_pass: float) -> dict[str, float]:
    """Bytes of a vision-language model's vision tower and projector, beside the language model's terms (whose
    sequence of maxSeqLength tokens holds the image tokens already; `language_pass`: its activations and loss)."""
    trainable = vision_trainable_parameters(s, tower)
    each = _trainable_bytes_each(s)
    eight_bit = s.optimizer in ("adamw_8bit", "paged_adamw_8bit")
    optimizer = 0.0 if s.optimizer == "sgd" else trainable * (ADAM_8BIT_BYTES if eight_bit else ADAM_STATES * each)
    return {
        "visionWeights": _vision_weights_bytes(s, tower) + (0.0 if s.method == "full" else trainable * ADAPTER_BYTES),
        "visionTrainable": trainable * each + optimizer,
        "visionActivations": _vision_activation_bytes(s, tower, language_pass) if s.images else 0.0,
    }


def _vision_assumptions(spec: FineTuneJobSpec, s: _Setup, tower: VisionTower) -> list[str]:
    settings = spec.vision_settings
    tokens = tower.image_tokens(settings.max_pixels)
    trained = ", ".join(sorted(s.vision_trained)) or "nothing (frozen)"
    notes = [f"vision tower {tower.tower_parameters:,} and projector {tower.projector_parameters:,} parameters "
             f"(trained: {trained}); up to {tokens:,} image tokens per image ({tower.rule}: "
             f"{tower.patches_per_image(settings.max_pixels):,} patches at maxPixels {settings.max_pixels:,}), "
             f"{settings.images_per_row} image(s) per row"]
    if s.images and tokens * settings.images_per_row > spec.training.max_seq_length:
        notes.append(f"image tokens ({tokens * settings.images_per_row:,} per row) exceed maxSeqLength "
                     f"({spec.training.max_seq_length}): TRL would cut image tokens and the run fails; raise "
                     "spec.training.maxSeqLength or lower spec.vision.maxPixels")
    if s.images and s.bits is not None:
        notes.append("qlora: the vision tower's activations are counted in the float32 residual dtype, an upper "
                     "bound (not traced)")
    return notes


def _peak_bytes(components: dict[str, float]) -> float:
    return sum(components.values())


def storage_dtype(spec: FineTuneJobSpec) -> str:
    """The dtype the weights are kept in: a full fine-tune in float16 keeps float32 master weights
    (the fp16 gradient scaler cannot unscale float16 parameters; the trainer loads float32)."""
    return "float32" if spec.method.type == "full" and spec.model.dtype == "float16" else spec.model.dtype


def compute_dtype_of(spec: FineTuneJobSpec) -> str:
    """The dtype the matmuls run in: qlora's computeDtype, else the model dtype."""
    quantization = spec.method.quantization
    return quantization.effective_compute_dtype(spec.model.dtype) if quantization else spec.model.dtype


def _setup(spec: FineTuneJobSpec, architecture: ModelArchitecture, loss: LossPath) -> _Setup:
    method, training, model = spec.method, spec.training, spec.model
    quantization = method.quantization if method.type == "qlora" else None
    adapter = method.adapter
    roles, lm_head, _ = target_roles(adapter.target_modules, architecture)
    compute_dtype = compute_dtype_of(spec)
    # The kubetune trainer runs peft's prepare_model_for_kbit_training on every qlora model.
    upcast = quantization is not None
    return _Setup(
        architecture=architecture,
        method=method.type,
        dtype_bytes=DTYPE_BYTES[storage_dtype(spec)],
        compute_dtype=compute_dtype,
        bits=quantization.bits if quantization else None,
        double_quant=bool(quantization and quantization.double_quant),
        roles=roles if method.type != "full" else set(),
        lm_head_adapted=lm_head and method.type != "full",
        rank=adapter.rank,
        dropout=adapter.dropout > 0,
        dora=adapter.use_dora,
        tokens=training.batch_size * training.max_seq_length,
        seq_length=training.max_seq_length,
        liger=training.kernels == "liger" and spec.resources.gpus > 0,
        checkpointing=training.gradient_checkpointing,
        # auto falls back to eager for a model without sdpa (the trainer does the same).
        eager_attention=model.attention == "eager" or (
            model.attention != "flash_attention_2" and _soft_caps_attention(architecture)),
        flash_attention=model.attention == "flash_attention_2",
        optimizer=training.optimizer,
        world=max(1, spec.resources.gpus * spec.resources.nodes),
        unquantized_bytes=FP32_BYTES if upcast else DTYPE_BYTES[compute_dtype],
        residual_bytes=FP32_BYTES if upcast else DTYPE_BYTES[compute_dtype],
        loss=loss,
        vision_trained=frozenset(spec.vision_settings.train),
        images=training.batch_size * spec.vision_settings.images_per_row if spec.has_image_data else 0,
        max_pixels=spec.vision_settings.max_pixels,
    )


def reference_gpu_gib(spec: FineTuneJobSpec) -> tuple[float, str]:
    """The GPU size `auto` decides against without a cluster, and where it comes from."""
    resources = spec.resources
    if resources.min_gpu_memory_gib is not None:
        return resources.min_gpu_memory_gib, "spec.resources.minGpuMemoryGiB"
    if resources.gpu_product is not None:
        memory = product_memory_gib(resources.gpu_product)
        if memory is not None:
            return memory, f"spec.resources.gpuProduct {resources.gpu_product}"
    return DEFAULT_GPU_MEMORY_GIB, "the default GPU size (no gpuProduct or minGpuMemoryGiB given)"


def _strategy(spec: FineTuneJobSpec, architecture: ModelArchitecture, loss: LossPath, notes: list[str]) -> str:
    if spec.resources.gpus == 0:
        return "cpu"
    if spec.resources.gpus * spec.resources.nodes == 1:
        return "single"
    chosen = spec.training.strategy
    if chosen != "auto":
        return chosen
    if spec.method.type == "qlora":
        notes.append("strategy auto chose ddp: the kubetune trainer cannot shard qlora's quantized weights")
        return "ddp"
    gpu_gib, source = reference_gpu_gib(spec)
    usable = gpu_gib * (1 - DEFAULT_SAFETY_MARGIN)
    replica_bytes = _peak_bytes(_per_gpu_components(_setup(spec, architecture, loss), "ddp"))
    replica = replica_bytes / GIB + _overhead_gib(replica_bytes, spec.training.gradient_checkpointing, gpu=True)
    if replica <= usable:
        notes.append(f"strategy auto chose ddp: a full replica ({replica:.1f} GiB) fits {gpu_gib:g} GiB "
                     f"with the safety margin ({source})")
        return "ddp"
    notes.append(f"strategy auto chose fsdp: a replica ({replica:.1f} GiB) does not fit {gpu_gib:g} GiB "
                 f"with the safety margin ({source})")
    return "fsdp"


def _overhead_gib(peak_bytes: float, checkpointing: bool, gpu: bool, bits: int | None = None) -> float:
    """Allocator fragmentation (GPU and CPU allocators alike) and, on a GPU, the CUDA context."""
    fraction = FRAGMENTATION_WITH_CHECKPOINTING if checkpointing else FRAGMENTATION
    if bits == 8:
        fraction = max(fraction, FRAGMENTATION_EIGHT_BIT)
    return peak_bytes * fraction / GIB + (CUDA_CONTEXT_GIB if gpu else 0.0)


def _bound_bytes(s: _Setup, strategy: str) -> tuple[float, list[str]]:
    """What the estimate adds where its counted terms are known to fall short, and why (the `bound` term)."""
    extra, notes = 0.0, []
    if s.bits == 8:
        extra += s.architecture.block_linear_parameters * EIGHT_BIT_UNEXPLAINED_BYTES
        notes.append(f"qlora 8-bit: an upper bound; a measured run allocated {EIGHT_BIT_UNEXPLAINED_BYTES:g} "
                     "bytes per quantized weight beyond what is counted and its allocator reserved "
                     f"{FRAGMENTATION_EIGHT_BIT:.0%} more (docs/estimator.md, conservative bounds); "
                     "4-bit is measured and cheaper")
    if strategy in ("ddp", "fsdp") and s.world > 1:
        extra += NCCL_BUFFERS_GIB * GIB
        notes.append(f"{s.world} GPUs: {NCCL_BUFFERS_GIB:g} GiB per GPU for NCCL's buffers, a bound "
                     "(not measured here)")
    return extra, notes


def _assumptions(spec: FineTuneJobSpec, s: _Setup, unknown_targets: list[str]) -> list[str]:
    training = spec.training
    notes = [
        f"model {s.architecture.name or 'from spec'}: {s.architecture.parameters:,} parameters, "
        f"{s.architecture.num_layers} layers, vocabulary {s.architecture.vocab_size:,}",
        f"every sequence is padded or packed to maxSeqLength ({training.max_seq_length} tokens), "
        f"{training.batch_size} per GPU per pass",
    ]
    if s.liger:
        notes.append("kernels liger: Liger's RMSNorm and SwiGLU keep less per token (counted); with kernels "
                     "auto the estimate counts the plain layers, since Liger runs only where the image and GPU allow")
    if s.loss == "fused":
        notes.append("loss: TRL's fused LM head (the kubetune trainer) scores tokens in tiles; "
                     "the full logits are never materialised")
    if s.eager_attention and spec.model.attention != "eager":
        notes.append(f"attention: eager (transformers has no sdpa for {s.architecture.name or 'this model'}, "
                     "soft-capping): the heads x sequence x sequence scores are kept and counted")
    elif spec.model.attention in ("auto", "sdpa", "flash_attention_2"):
        notes.append("attention does not store the score matrix (sdpa or flash_attention_2)")
    if s.unquantized_bytes == FP32_BYTES and s.bits is not None:
        notes.append("qlora: peft's prepare_model_for_kbit_training (the trainer applies it) keeps the "
                     "unquantized parameters and the residual stream in float32")
    if storage_dtype(spec) != spec.model.dtype:
        notes.append("full fine-tuning in float16 keeps float32 master weights, gradients and optimizer states")
    if training.optimizer == "paged_adamw_8bit":
        notes.append("paged optimizer states counted on the GPU (paging only helps on spikes)")
    if unknown_targets:
        notes.append(f"targetModules {', '.join(unknown_targets)} not recognised: counted no adapters for them")
    if s.architecture.vision is not None:
        notes += _vision_assumptions(spec, s, s.architecture.vision)
    return notes


def estimate(spec: FineTuneJobSpec, architecture: ModelArchitecture | None = None, *,
             loss: LossPath = "fused") -> VramEstimate:
    """Peak GPU memory per GPU of a FineTuneJob (presets applied here; idempotent).

    `loss` is the kubetune trainer's fused LM head by default; "materialized" estimates a trainer that
    computes transformers' own loss over the full logits (used to compare with published figures).
    """
    spec = effective_spec(spec)
    architecture = architecture or resolve_architecture(spec)
    notes: list[str] = []
    strategy = _strategy(spec, architecture, loss, notes)
    s = _setup(spec, architecture, loss)
    _, _, unknown_targets = target_roles(spec.method.adapter.target_modules, architecture)
    notes = _assumptions(spec, s, unknown_targets) + notes
    components = _per_gpu_components(s, strategy)
    bound, bound_notes = _bound_bytes(s, strategy)
    if bound:
        components["bound"] = bound
        notes += bound_notes
    on_gpu = strategy != "cpu"
    peak = _peak_bytes(components)
    breakdown = {name: value / GIB for name, value in components.items()}
    breakdown["overhead"] = _overhead_gib(peak, s.checkpointing, on_gpu, s.bits)
    per_gpu = peak / GIB + breakdown["overhead"]
    tower = architecture.vision
    trainable = _trainable(s) + (vision_trainable_parameters(s, tower) if tower is not None else 0)
    total = architecture.parameters + (tower.tower_parameters + tower.projector_parameters if tower else 0)
    return VramEstimate(
        per_gpu_gib=round(per_gpu, 3),
        total_gib=round(per_gpu * s.world, 3),
        strategy=strategy,
        breakdown={name: round(value, 3) for name, value in breakdown.items()},
        trainable_parameters=trainable,
        total_parameters=total + (0 if s.method == "full" else trainable),
        assumptions=tuple(notes),
        architecture_key=architecture.key,
    )

