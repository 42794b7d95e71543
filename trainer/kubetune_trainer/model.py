"""The model and tokenizer: precision, attention, quantization and the LoRA adapter, from the spec."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from kubetune.api import DType, FineTuneJobSpec
from kubetune_trainer import vision
from kubetune_trainer.errors import ModelLoadError

log = logging.getLogger(__name__)

Device = Literal["cuda", "cpu"]
# FlashAttention 2 runs on Ampere (compute capability 8.0) and newer.
FLASH_ATTENTION_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Precision:
    """The dtype weights are loaded in, and the mixed-precision mode of training."""

    load_dtype: DType
    bf16: bool = False
    fp16: bool = False
    note: str | None = None


def choose_precision(requested: DType, method: str, device: Device, bf16_supported: bool) -> Precision:
    """bf16 where the GPU supports it, else fp16 with a warning; float32 on a CPU."""
    if device == "cpu":
        note = None if requested == "float32" else f"no GPU: training in float32 instead of {requested}"
        return Precision("float32", note=note)
    if requested == "float32":
        return Precision("float32")
    note = None
    if requested == "bfloat16" and not bf16_supported:
        requested, note = "float16", "this GPU has no bfloat16: training in float16 (watch for overflow)"
    if requested == "bfloat16":
        return Precision("bfloat16", bf16=True)
    # fp16 gradient scaling cannot unscale fp16 parameters: full fine-tuning keeps float32 master weights.
    return Precision("float32" if method == "full" else "float16", fp16=True, note=note)


def choose_attention(
    requested: str, device: Device, dtype: DType, flash_installed: bool, capability: tuple[int, int] | None
) -> tuple[str, str | None]:
    """The attention implementation, and a note when the one asked for cannot be used."""
    flash_possible = (
        flash_installed
        and device == "cuda"
        and dtype != "float32"
        and capability is not None
        and capability >= FLASH_ATTENTION_MIN_CAPABILITY
    )
    if requested == "auto":
        return ("flash_attention_2" if flash_possible else "sdpa"), None
    if requested == "flash_attention_2" and not flash_possible:
        return "sdpa", "flash_attention_2 is not installed or not supported here: using sdpa"
    return requested, None


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def lora_targets(spec: FineTuneJobSpec, model: Any) -> str | list[str]:
    """peft's target_modules: the spec's, or for a vision-language model the full names of the linear layers of
    its trained parts (the language model, and what spec.vision.train adds)."""
    targets = spec.method.adapter.target_modules
    if vision.is_vision_language(model.config):
        chosen = vision.lora_targets(*vision.linear_layer_names(model), spec)
        if not chosen:
            raise ModelLoadError(f"spec.method.lora.targetModules: {targets} matches no linear layer of the trained "
                                 "parts of this vision-language model; name layers such as q_proj, v_proj")
        return chosen
    return "all-linear" if targets == ["all-linear"] else list(targets)


def lora_config(spec: FineTuneJobSpec, model: Any) -> Any:
    from peft import LoraConfig, TaskType

    lora = spec.method.adapter
    return LoraConfig(
        r=lora.rank,
        lora_alpha=cast(int, lora.effective_alpha),  # peft annotates int; it divides by r, so a float works
        lora_dropout=lora.dropout,
        target_modules=lora_targets(spec, model),
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        task_type=TaskType.CAUSAL_LM,
    )


def quantization_config(spec: FineTuneJobSpec) -> Any:
    quantization = spec.method.quantization
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.effective_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=quantization.effective_compute_dtype(spec.model.dtype),
    )


def model_source(spec: FineTuneJobSpec) -> tuple[str, str]:
    """What from_pretrained loads, and the field that names it (for error messages)."""
    if spec.model.path is not None:
        return spec.model.path, "spec.model.path"
    return str(spec.model.name), "spec.model.name"


def check_model_directory(spec: FineTuneJobSpec, local_mounts: Mapping[str, Path]) -> None:
    """spec.model.path is a directory here, or ModelLoadError naming it (and, in a local run, the --mount
    that maps it): otherwise transformers would read the path as a hub id and answer about repo ids."""
    path = spec.model.path
    if path is None or Path(path).is_dir():
        return
    for mount_path, directory in local_mounts.items():
        local = str(directory.resolve())
        if path == local or path.startswith(local + "/"):
            written = mount_path.rstrip("/") + path[len(local):]
            raise ModelLoadError(
                f"spec.model.path: {written} is not a directory: --mount {mount_path}={directory} reads it from "
                f"{path}, which does not exist; check spec.model.path and the --mount")
    raise ModelLoadError(f"spec.model.path: {path} is not a directory; check the path and that spec.volumes "
                         "mounts the PVC that holds it")


# transformers' refusal to run a model's own code (an auto_map in its config files) without trust_remote_code.
REMOTE_CODE_REFUSED = "trust_remote_code=True"


def _load_error(spec: FineTuneJobSpec, what: str, exc: Exception) -> ModelLoadError:
    source, field = model_source(spec)
    if REMOTE_CODE_REFUSED in str(exc) and not spec.model.trust_remote_code:
        return ModelLoadError(f"{field}: the {what} of {source!r} is code of the model's own (auto_map in its config "
                              "files), which runs only with spec.model.trustRemoteCode: true; set it if you trust "
                              "that code")
    hint = "check the id, the revision and that HF_TOKEN can read it" if field == "spec.model.name" else (
        "check that the directory holds config.json and the weights"
    )
    return ModelLoadError(f"{field}: cannot load the {what} of {source!r}: {exc}; {hint}")


def load_config(spec: FineTuneJobSpec, token: str | None) -> Any:
    """The model's config (config.json): what kind of model it is, before anything large is loaded."""
    from transformers import AutoConfig

    source, _ = model_source(spec)
    try:
        return AutoConfig.from_pretrained(
            source, revision=spec.model.revision, token=token, trust_remote_code=spec.model.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(spec, "config", exc) from None


def load_processing_class(spec: FineTuneJobSpec, token: str | None, vision_language: bool) -> Any:
    """The tokenizer, or for a vision-language model its processor (image processor and tokenizer)."""
    return load_processor(spec, token) if vision_language else load_tokenizer(spec, token)


def tokenizer_of(processing_class: Any) -> Any:
    """The tokenizer inside a processor, or the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)


def _pad_right(tokenizer: Any) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"


def load_processor(spec: FineTuneJobSpec, token: str | None) -> Any:
    """A vision-language model's processor; its tokenizer padded as load_tokenizer's, its images bounded by
    spec.vision.maxPixels where the image processor scales them on its own (bound_image_processor)."""
    from transformers import AutoProcessor

    source, _ = model_source(spec)
    try:
        processor = AutoProcessor.from_pretrained(
            source, revision=spec.model.revision, token=token, trust_remote_code=spec.model.trust_remote_code
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise _load_error(spec, "processor", exc) from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ModelLoadError(f"{model_source(spec)[1]}: the model's config describes a vision-language model, but "
                             f"its processor ({type(processor).__name__}) has no image processor and tokenizer")
    _pad_right(processor.tokenizer)
    bound_image_processor(processor.image_processor, spec.vision_settings.max_pixels)
    return processor


# Qwen2-VL's family scales an image smaller than min_pixels up to it, rounding each side up to whole units (28 x 28
# pixels); with min_pixels at most a quarter of maxPixels that rounding stays within maxPixels' image tokens.
MIN_PIXELS_DIVISOR = 4


def bound_image_processor(image_processor: Any, max_pixels: int) -> None:
    """Processors that scale images up on their own get spec.vision.maxPixels as their bound, so that a row's tiles,
    tokens and memory follow maxPixels as the estimator counts them: Qwen2-VL's family (its size in pixels) at most
    maxPixels, its min_pixels at most a quarter of that; Idefics3's (SmolVLM) longest edge in whole tiles (at least
    one); a processor that keeps a max_pixels attribute (Emu3), that."""
    if getattr(image_processor, "max_pixels", None) is not None:
        image_processor.max_pixels = min(image_processor.max_pixels, max_pixels)
    size, tile = getattr(image_processor, "size", None), getattr(image_processor, "max_image_size", None)
    longest, shortest = _edge(size, "longest_edge"), _edge(size, "shortest_edge")
    # Qwen2-VL's family (and the processors that copied it) return image_grid_thw; their size's shortest_edge and
    # longest_edge are pixel counts (min_pixels, max_pixels), not edge lengths.
    if "image_grid_thw" in getattr(image_processor, "model_input_names", ()) and longest and shortest:
        image_processor.size = _with_edges(size, longest_edge=min(longest, max_pixels),
                                           shortest_edge=min(shortest, max_pixels // MIN_PIXELS_DIVISOR))
        return
    tile_edge = _edge(tile, "longest_edge")
    if longest is not None and tile_edge is not None:
        tiles_per_side = max(1, min(longest // tile_edge, math.isqrt(max_pixels) // tile_edge))
        image_processor.size = _with_edges(size, longest_edge=tiles_per_side * tile_edge)


def _with_edges(size: Any, **edges: int) -> Any:
    """The size with other edges: a dict, or a copy of transformers' SizeDict (a dataclass)."""
    if isinstance(size, Mapping):
        return {**size, **edges}
    return dataclasses.replace(size, **edges)


def _edge(size: Any, key: str) -> int | None:
    """size[key] of a processor's size (a dict, or transformers' SizeDict), when it has one."""
    edge = size.get(key) if hasattr(size, "get") else None
    return edge if isinstance(edge, int) and edge > 0 else None


def load_tokenizer(spec: FineTuneJobSpec, token: str | None) -> Any:
    """The tokenizer, with a pad token (the EOS token when it has none) and right padding."""
    from transformers import AutoTokenizer

    source, _ = model_source(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=spec.model.revision, token=token, trust_remote_code=spec.model.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(spec, "tokenizer", exc) from None
    _pad_right(tokenizer)
    return tokenizer


# transformers' refusal of an attention implementation a model class does not have (Gemma 2: no sdpa).
UNSUPPORTED_ATTENTION = "does not support an attention implementation"
# What `attention: auto` falls back to for such a model: every architecture has it.
FALLBACK_ATTENTION = "eager"


def load_model(
    spec: FineTuneJobSpec, precision: Precision, attention: str, token: str | None, device_index: int | None,
    *, vision_language: bool = False,
) -> Any:
    """The base model, quantized for qlora; weights on the GPU of this rank when there is one.

    With `attention: auto`, a model whose class lacks the chosen implementation (Gemma 2 has neither
    flash attention nor sdpa) loads with eager attention instead, and says so.
    """
    try:
        return _load_model(spec, precision, attention, token, device_index, vision_language=vision_language)
    except ModelLoadError as exc:
        if spec.model.attention != "auto" or UNSUPPORTED_ATTENTION not in exc.message:
            raise
    log.warning("attention: %s is not supported by this model; using %s (attention: auto)",
                attention, FALLBACK_ATTENTION)
    return _load_model(spec, precision, FALLBACK_ATTENTION, token, device_index, vision_language=vision_language)


def _load_model(
    spec: FineTuneJobSpec, precision: Precision, attention: str, token: str | None, device_index: int | None,
    *, vision_language: bool,
) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    model_class = AutoModelForImageTextToText if vision_language else AutoModelForCausalLM

    source, _ = model_source(spec)
    quantization = quantization_config(spec)
    kwargs: dict[str, Any] = {}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # bitsandbytes quantizes while loading: the weights must land on this rank's device at once.
        kwargs["device_map"] = {"": device_index if device_index is not None else "cpu"}
    try:
        return model_class.from_pretrained(
            source,
            revision=spec.model.revision,
            token=token,
            trust_remote_code=spec.model.trust_remote_code,
            dtype=precision.load_dtype,
            attn_implementation=attention,
            **kwargs,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(spec, "model", exc) from None


def add_adapter(model: Any, spec: FineTuneJobSpec, gradient_checkpointing: bool) -> Any:
    """LoRA (on k-bit prepared weights for qlora); for full fine-tuning the model itself, with the parts of a
    vision-language model that spec.vision.train does not list frozen."""
    if spec.method.type == "full":
        if vision.is_vision_language(model.config):
            vision.freeze_untrained_parts(model, spec)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if spec.method.type == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return get_peft_model(model, lora_config(spec, model))


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the values they pack."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        # bitsandbytes packs two 4-bit values per uint8 element.
        if getattr(parameter, "quant_state", None) is not None:
            count *= 2
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
