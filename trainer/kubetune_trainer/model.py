"""The model and tokenizer: precision, attention, quantization and the LoRA adapter, from the spec."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Literal, cast

from kubetune.api import DType, FineTuneJobSpec
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


def lora_config(spec: FineTuneJobSpec) -> Any:
    from peft import LoraConfig, TaskType

    lora = spec.method.adapter
    targets = lora.target_modules
    return LoraConfig(
        r=lora.rank,
        lora_alpha=cast(int, lora.effective_alpha),  # peft annotates int; it divides by r, so a float works
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
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


def _load_error(spec: FineTuneJobSpec, what: str, exc: Exception) -> ModelLoadError:
    source, field = model_source(spec)
    hint = "check the id, the revision and that HF_TOKEN can read it" if field == "spec.model.name" else (
        "check that the directory holds config.json and the weights"
    )
    return ModelLoadError(f"{field}: cannot load the {what} of {source!r}: {exc}; {hint}")


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
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


# transformers' refusal of an attention implementation a model class does not have (Gemma 2: no sdpa).
UNSUPPORTED_ATTENTION = "does not support an attention implementation"
# What `attention: auto` falls back to for such a model: every architecture has it.
FALLBACK_ATTENTION = "eager"


def load_model(
    spec: FineTuneJobSpec, precision: Precision, attention: str, token: str | None, device_index: int | None
) -> Any:
    """The base model, quantized for qlora; weights on the GPU of this rank when there is one.

    With `attention: auto`, a model whose class lacks the chosen implementation (Gemma 2 has neither
    flash attention nor sdpa) loads with eager attention instead, and says so.
    """
    try:
        return _load_model(spec, precision, attention, token, device_index)
    except ModelLoadError as exc:
        if spec.model.attention != "auto" or UNSUPPORTED_ATTENTION not in exc.message:
            raise
    log.warning("attention: %s is not supported by this model; using %s (attention: auto)",
                attention, FALLBACK_ATTENTION)
    return _load_model(spec, precision, FALLBACK_ATTENTION, token, device_index)


def _load_model(
    spec: FineTuneJobSpec, precision: Precision, attention: str, token: str | None, device_index: int | None
) -> Any:
    from transformers import AutoModelForCausalLM

    source, _ = model_source(spec)
    quantization = quantization_config(spec)
    kwargs: dict[str, Any] = {}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # bitsandbytes quantizes while loading: the weights must land on this rank's device at once.
        kwargs["device_map"] = {"": device_index if device_index is not None else "cpu"}
    try:
        return AutoModelForCausalLM.from_pretrained(
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
    """LoRA (on k-bit prepared weights for qlora); the model unchanged for full fine-tuning."""
    if spec.method.type == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if spec.method.type == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return get_peft_model(model, lora_config(spec))


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
