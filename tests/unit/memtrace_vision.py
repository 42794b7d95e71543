"""Peak memory of one training step of a vision-language model, traced on the CPU as memtrace.py traces a text model.

The model is the real transformers class (AutoModelForImageTextToText, the trainer's loading path) built from the
model's published config.json at its real widths, with LoRA (or full fine-tuning's frozen parts) from the trainer's
own `add_adapter`, which picks the vision tower's and projector's layers by spec.vision.train
(`kubetune_trainer.vision`); TRL's fused head, bf16 autocast, checkpointing as SFTTrainer sets it, a foreach AdamW
step, all as memtrace.py does. The batch is what the processor would emit for images at the spec.vision.maxPixels
bound (built here as tensors: Qwen2-VL's processor needs torchvision): input_ids with the image tokens, labels that
ignore them (TRL's vision collator), an attention mask, pixel_values in float32, and for Qwen2-VL's family the
flattened patches with image_grid_thw and mm_token_type_ids.

Two stacks, extrapolated apart. Tracing both at their real depth is too slow, so each trace is 2 or 3 layers deep in
one stack: (decoder, tower) = (2, 2), (3, 2), (2, 3). Every tensor alive at a peak belongs to one layer of one stack
or to neither, so each category is linear in each depth and the two add up (memtrace.Peak.extrapolate). That holds
only where the peak falls at the same point in every trace, so the points where it can fall are traced apart
(`Phases`; MemTracker names the modules running at every allocation, memtrace.trace_step keeps a peak per phase):
- the tower: while the vision tower or projector runs (its forward, and its recomputation and backward where it
  takes part in backward);
- before the decoder: the embeddings and the image features put into them (a tower that returns every block's
  output holds them here);
- the decoder: its layers and the loss, forward and backward (and the tower's saved activations, kept through it).
Each phase is extrapolated on its own; the pass peaks at the highest. At 2 or 3 layers the decoder's phase can be
lower than before it, at the real depth not: tracing them apart keeps each one's slope its own.

What the images add: the same model traced on the same tokens without images (image tokens replaced by text tokens,
the same labels, the input embeddings requiring grad when the image run's do, so that the decoder's first layer
keeps the same) peaks lower by what the tower and the image tokens' extra tensors cost; that difference (in the
pass's activations and temporaries: the persistent state is the same model's) is what the estimate's
visionActivations counts. The tower's and projector's weights, and the gradients and AdamW states of what trains
there, are the model's own tensors, read by part (kubetune_trainer.vision.part_of), per traced depth.

What the trace cannot see is what memtrace.py says (CUDA kernels, the caching allocator), and:
- Qwen2.5-VL's tower attends within 112-pixel windows except in 4 of its 32 blocks; the traced blocks are windowed
  ones. sdpa runs per window (or per image) without a mask, and keeps the same q, k, v, output and statistics
  whatever the window, so a full-attention block keeps what a windowed one keeps.
- FakeTensorMode cannot read tensor values; the image layout (where the image tokens are, image_grid_thw) is data
  the model's code reads (`tolist`, a mask check), so those small tensors are made as fake-tensor constants
  (`known_layout`), and Qwen's 3-D rotary positions are computed by the model's own get_rope_index beforehand, on
  real tensors, as the model would from the same inputs.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tests.unit.memtrace import TRACED_LAYERS, Peak, Run, prepare_for_training, trace_step

from kubetune.api import FineTuneJobSpec
from kubetune.catalog import ModelArchitecture, lookup
from kubetune_trainer.vision import part_of

# The phases of a pass, each with its own peak (see the module doc).
TOWER, BEFORE_DECODER, DECODER = "tower", "before the decoder", "decoder"
# The decoder's module name in the multimodal models (Qwen2VLModel.language_model, LlavaModel.language_model).
DECODER_MODULE = "language_model"
# Token ids of the text around the images: below every family's special tokens (LLaVA's image token is 32000).
TEXT_IDS = 30000
# Text tokens before the first image of a row, and between two images (a prompt, the image's placeholder text).
TEXT_BEFORE_IMAGE = 16
# LLaVA's pixel_values: an RGB image (Qwen's patches carry their channels and frames in config.vision_config).
COLOUR_CHANNELS = 3
# The depths traced, (decoder layers, tower blocks): a base and one layer more in each stack.
BASE = (TRACED_LAYERS[0], TRACED_LAYERS[0])
DEEPER_DECODER = (TRACED_LAYERS[1], TRACED_LAYERS[0])
DEEPER_TOWER = (TRACED_LAYERS[0], TRACED_LAYERS[1])
DYNAMIC_RESOLUTION = ("qwen2_vl", "qwen2_5_vl")


@dataclass(frozen=True)
class VisionModel:
    """A vision-language model: its hub id (the estimator reads its catalog record by it, as the operator does) and
    the values of its published config.json that set its dimensions (the trace builds the model from them)."""

    hub_id: str
    config: dict[str, Any]

    def transformers_config(self, layers: int | None = None, blocks: int | None = None) -> Any:
        """The config at the real depths, or with `layers` decoder layers and `blocks` tower blocks."""
        from transformers import AutoConfig

        values = copy.deepcopy(self.config)
        text = values.get("text_config", values)
        vision = values["vision_config"]
        if layers is not None:
            text["num_hidden_layers"] = layers
        if blocks is not None:
            vision["depth" if "depth" in vision else "num_hidden_layers"] = blocks
        return AutoConfig.for_model(**values, attn_implementation="sdpa", use_cache=False)

    @property
    def depths(self) -> tuple[int, int]:
        """(decoder layers, tower blocks) of the real model."""
        config = self.transformers_config()
        return config.get_text_config().num_hidden_layers, config.vision_config.num_hidden_layers

    def architecture(self) -> ModelArchitecture:
        record = lookup(self.hub_id)
        if record is None or record.vision is None:
            raise LookupError(f"{self.hub_id}: not a vision-language model of the catalog")
        return record


@dataclass(frozen=True)
class VisionRun:
    """What one micro-batch trains: the text run, its images and the vision parts that train."""

    run: Run
    images: int  # per row: spec.vision.maxImages
    max_pixels: int  # spec.vision.maxPixels: every image is at this bound
    train: tuple[str, ...] = ()  # spec.vision.train

    def spec(self, model: VisionModel) -> FineTuneJobSpec:
        return self.run.spec_of(
            {"name": model.hub_id, "dtype": "bfloat16", "attention": "sdpa"},
            dataset={"name": "trace/images", "format": "vision"},
            vision={"train": list(self.train), "maxPixels": self.max_pixels, "maxImages": self.images},
        )


@dataclass(frozen=True)
class ImageLayout:
    """What a processor emits for one image at the maxPixels bound."""

    tokens: int  # image tokens in the sequence
    pixel_shape: tuple[int, ...]  # its share of pixel_values
    grid: tuple[int, int, int] | None = None  # image_grid_thw (dynamic resolution), in patches


def image_layout(config: Any, max_pixels: int) -> ImageLayout:
    """Qwen2-VL's family: the image resized to whole merged patches within max_pixels (its processor's
    smart_resize), near-square: rows x columns tokens with rows = isqrt(tokens) and as many columns as fit; each
    token is merge x merge patches. LLaVA: a fixed image_size, image_seq_length tokens."""
    vision = config.vision_config
    if config.model_type in DYNAMIC_RESOLUTION:
        merge, patch = vision.spatial_merge_size, vision.patch_size
        bound = max_pixels // (patch * merge) ** 2
        rows = math.isqrt(bound)
        columns = bound // rows
        patch_values = vision.in_channels * vision.temporal_patch_size * patch * patch
        return ImageLayout(rows * columns, (rows * columns * merge * merge, patch_values),
                           (1, rows * merge, columns * merge))
    side = vision.image_size
    return ImageLayout(config.image_seq_length, (1, COLOUR_CHANNELS, side, side))


@contextlib.contextmanager
def known_layout(numel: int) -> Iterator[None]:
    """Small integer tensors made from real values stay readable under FakeTensorMode (fake-tensor constants:
    torch keeps them up to CONSTANT_NUMEL_LIMIT elements, 1 by default), so the model's code can read the image
    layout (token positions, image_grid_thw) as it does on real inputs. Ops on constants run for real; the
    activations derive from fake weights and stay fake."""
    from torch._subclasses import fake_tensor

    saved = fake_tensor.CONSTANT_NUMEL_LIMIT
    fake_tensor.CONSTANT_NUMEL_LIMIT = max(saved, numel)
    try:
        yield
    finally:
        fake_tensor.CONSTANT_NUMEL_LIMIT = saved


def _multimodal_model_of(model: Any) -> Any:
    """The transformers multimodal model (Qwen2VLModel, LlavaModel) under PEFT's wrapper and the head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def _dynamic_resolution_layout(model: Any, ids: torch.Tensor, image: torch.Tensor,
                               grid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Qwen2-VL's family: image_grid_thw and mm_token_type_ids (the processor's), the 3-D rotary positions of the
    tokens (the model's get_rope_index), and for Qwen2.5-VL the tower's window layout (transformers' own
    precomputation for tracing, passed as image_* keyword arguments): the values the model reads from data."""
    from transformers.vision_utils import get_vision_window_index

    token_types = image.int()
    positions, _ = _multimodal_model_of(model).get_rope_index(ids, token_types, grid)
    layout = {"image_grid_thw": grid, "mm_token_type_ids": token_types, "position_ids": positions}
    vision = model.config.vision_config
    if getattr(vision, "window_size", None):
        layout["image_window_index"], layout["image_cu_window_seqlens"] = get_vision_window_index(
            grid, spatial_merge_size=vision.spatial_merge_size, window_size=vision.window_size,
            patch_size=vision.patch_size)
    return layout


def batch(model: Any, run: VisionRun, with_images: bool) -> tuple[Callable[[], dict[str, Any]], int]:
    """The micro-batch the trainer's collator would pass, made inside FakeTensorMode by the returned function; and
    the largest tensor of the layout the model reads (for known_layout). Without images: the same tokens with text
    in place of the image tokens and the same labels (the text-only reference)."""
    config = model.config
    layout = image_layout(config, run.max_pixels)
    rows, seq = run.run.batch, run.run.seq
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TEXT_IDS, (rows, seq), generator=generator)
    if run.images * (TEXT_BEFORE_IMAGE + layout.tokens) > seq:
        raise ValueError(f"{run.images} images of {layout.tokens} tokens do not fit {seq} tokens")
    image = torch.zeros(rows, seq, dtype=torch.bool)
    for index in range(run.images):
        start = TEXT_BEFORE_IMAGE + index * (layout.tokens + TEXT_BEFORE_IMAGE)
        image[:, start:start + layout.tokens] = True
    values: dict[str, torch.Tensor] = {"labels": ids.masked_fill(image, -100)}
    pixel_shape: tuple[int, ...] = ()
    if with_images:
        ids = ids.masked_fill(image, config.image_token_id)
        images = rows * run.images
        pixel_shape = (layout.pixel_shape[0] * images, *layout.pixel_shape[1:])
        if layout.grid is not None:
            values.update(_dynamic_resolution_layout(model, ids, image, torch.tensor([layout.grid] * images)))
    values["input_ids"] = ids

    def make() -> dict[str, Any]:
        inputs: dict[str, Any] = {name: torch.tensor(value.tolist(), dtype=value.dtype)
                                  for name, value in values.items()}
        # Not a constant: as for a padded batch, transformers builds the attention mask the estimate counts.
        inputs["attention_mask"] = torch.ones(rows, seq, dtype=torch.long)
        if pixel_shape:
            inputs["pixel_values"] = torch.empty(pixel_shape)  # float32, as the image processors emit them
        return inputs

    # The largest tensors of the layout: Qwen's 3-D positions of the tokens, and the tower's 2-D ones of the patches.
    patches = pixel_shape[0] if with_images and layout.grid is not None else 0
    return make, max(3 * rows * seq, 2 * patches)


class Phases:
    """Names the phase of one pass from the modules running (their fully qualified names): the tower while a module
    of the vision tower or projector runs (forward, recomputation, backward); before the decoder until the decoder
    first runs (the embeddings, the image features put into them); the decoder from then on (its layers, the loss,
    their backward)."""

    def __init__(self) -> None:
        self.decoder_started = False

    def __call__(self, parents: set[str]) -> str:
        if any(part_of(name) != "languageModel" for name in parents):
            return TOWER
        # The decoder module itself (its embeddings run before the tower, called on their own).
        self.decoder_started = self.decoder_started or any(name.split(".")[-1] == DECODER_MODULE for name in parents)
        return DECODER if self.decoder_started else BEFORE_DECODER


@dataclass(frozen=True)
class VisionState:
    """Bytes of the vision tower's and projector's persistent state."""

    weights: float  # parameters, frozen and trained, adapters included
    trainable: float  # gradients and AdamW's two states of what trains there (each in the parameter's dtype)

    def extrapolate(self, deeper: VisionState, blocks: int) -> VisionState:
        extra = blocks - TRACED_LAYERS[0]
        return VisionState(self.weights + extra * (deeper.weights - self.weights),
                           self.trainable + extra * (deeper.trainable - self.trainable))


# AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype; a gradient is one more copy.
ADAMW_COPIES_WITH_GRADIENT = 3


def vision_state(model: Any) -> VisionState:
    """The tower's and projector's parameters, and what their trained ones keep, read off the prepared model."""
    weights = trainable = 0.0
    for name, parameter in model.named_parameters():
        if part_of(name) == "languageModel":
            continue
        size = parameter.numel() * parameter.element_size()
        weights += size
        if parameter.requires_grad:
            trainable += ADAMW_COPIES_WITH_GRADIENT * size
    return VisionState(weights, trainable)


def build_model(model: VisionModel, run: VisionRun, layers: int, blocks: int) -> Any:
    """The model on the meta device, loaded as the trainer loads a vision-language model, prepared as it trains."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        built = AutoModelForImageTextToText.from_config(model.transformers_config(layers, blocks), dtype=torch.bfloat16)
    return prepare_for_training(built, run.spec(model))


@dataclass(frozen=True)
class Trace:
    """One trace at (layers, blocks): the pass's peak per phase, the optimizer step's, the vision state, and whether
    the decoder's input embeddings required grad."""

    phases: dict[str, Peak]
    step: Peak
    state: VisionState
    embeddings_require_grad: bool


def _require_grad(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
    output.requires_grad_(True)


def trace(model: VisionModel, run: VisionRun, layers: int, blocks: int, *, with_images: bool = True,
          embeddings_require_grad: bool = False) -> Trace:
    """One trace; `embeddings_require_grad` makes the input embeddings require grad (as transformers'
    enable_input_require_grads does), for a text-only reference whose image run's decoder input requires grad
    because the image features do: its first layer then keeps what it keeps with images."""
    prepared = build_model(model, run, layers, blocks)
    make, layout_numel = batch(prepared, run, with_images)
    state = vision_state(prepared)
    decoder_inputs: list[bool] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        decoder_inputs.append(bool(kwargs["inputs_embeds"].requires_grad))

    _multimodal_model_of(prepared).language_model.register_forward_pre_hook(record, with_kwargs=True)
    if embeddings_require_grad:
        prepared.get_input_embeddings().register_forward_hook(_require_grad)
    with known_layout(layout_numel):
        phases, step = trace_step(prepared, make, Phases())
    return Trace(phases, step, state, any(decoder_inputs))


def _higher(phases: dict[str, Peak]) -> Peak:
    return max(phases.values(), key=lambda peak: peak.total)


@dataclass(frozen=True)
class VisionTraced:
    """The peaks of a vision-language model's training step at its real depths."""

    phases: dict[str, Peak]  # the pass's, by phase
    step: Peak  # the optimizer step
    text_only: Peak  # the pass on the same tokens without images
    state: VisionState

    @property
    def passes(self) -> Peak:
        return _higher(self.phases)

    @property
    def total(self) -> float:
        return max(self.passes.total, self.step.total)

    @property
    def images_added(self) -> float:
        """What the images add to the pass's peak (activations and temporaries; the persistent state is the same)."""
        return self.passes.step - self.text_only.step


def traced_vision_peak(model: VisionModel, run: VisionRun) -> VisionTraced:
    """The peaks at the real depths, from traces one layer deeper in each stack (see the module doc)."""
    layers, blocks = model.depths
    base, deeper_decoder, deeper_tower = (trace(model, run, *depths) for depths in (BASE, DEEPER_DECODER, DEEPER_TOWER))
    text_base, text_deeper = (trace(model, run, *depths, with_images=False,
                                    embeddings_require_grad=base.embeddings_require_grad)
                              for depths in (BASE, DEEPER_DECODER))
    text_phases = {phase: peak.extrapolate((text_deeper.phases[phase], layers))
                   for phase, peak in text_base.phases.items()}
    return VisionTraced(
        phases={phase: peak.extrapolate((deeper_decoder.phases[phase], layers), (deeper_tower.phases[phase], blocks))
                for phase, peak in base.phases.items()},
        step=base.step.extrapolate((deeper_decoder.step, layers), (deeper_tower.step, blocks)),
        # Without images the tower does not run: the pass's activations do not depend on its depth.
        text_only=_higher(text_phases),
        state=base.state.extrapolate(deeper_tower.state, blocks),
    )
