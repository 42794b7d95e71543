"""Precision, attention and adapter settings follow the spec and the hardware."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kubetune.api import DType
from kubetune_trainer import model
from kubetune_trainer.model import Precision

from .conftest import SpecFactory


@pytest.mark.parametrize(
    ("requested", "method", "device", "bf16_supported", "expected"),
    [
        ("bfloat16", "lora", "cuda", True, Precision("bfloat16", bf16=True)),
        ("bfloat16", "lora", "cuda", False, Precision("float16", fp16=True, note="x")),
        ("float16", "full", "cuda", True, Precision("float32", fp16=True)),
        ("float32", "lora", "cuda", True, Precision("float32")),
        ("bfloat16", "lora", "cpu", False, Precision("float32", note="x")),
    ],
    ids=[
        "bf16 where the GPU supports it",
        "fp16 with a warning on a GPU without bf16",
        "full fine-tuning in fp16 keeps float32 master weights",
        "float32 stays float32",
        "a CPU trains in float32 and says so",
    ],
)
def test_precision(requested: DType, method: str, device: model.Device, bf16_supported: bool,
                   expected: Precision) -> None:
    chosen = model.choose_precision(requested, method, device, bf16_supported)

    assert (chosen.load_dtype, chosen.bf16, chosen.fp16) == (expected.load_dtype, expected.bf16, expected.fp16)
    assert (chosen.note is not None) == (expected.note is not None)


@pytest.mark.parametrize(
    ("requested", "device", "installed", "capability", "expected", "noted"),
    [
        ("auto", "cuda", True, (9, 0), "flash_attention_2", False),
        ("auto", "cuda", False, (9, 0), "sdpa", False),
        ("auto", "cuda", True, (7, 5), "sdpa", False),
        ("flash_attention_2", "cuda", False, (9, 0), "sdpa", True),
        ("eager", "cpu", False, None, "eager", False),
    ],
    ids=[
        "auto picks flash attention 2 when installed on an Ampere or newer GPU",
        "auto falls back to sdpa without flash-attn",
        "auto falls back to sdpa on a Turing GPU",
        "flash attention 2 asked for but missing falls back to sdpa with a note",
        "an explicit eager is kept",
    ],
)
def test_attention(requested: str, device: model.Device, *, installed: bool, capability: tuple[int, int] | None,
                   expected: str, noted: bool) -> None:
    chosen, note = model.choose_attention(requested, device, "bfloat16", installed, capability)

    assert chosen == expected
    assert (note is not None) == noted


@pytest.mark.parametrize(
    ("lora", "expected"),
    [
        ({}, {"r": 8, "lora_alpha": 16.0, "target_modules": "all-linear", "use_rslora": False, "use_dora": False}),
        ({"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"], "useRslora": True, "useDora": True},
         {"r": 4, "lora_alpha": 8.0, "target_modules": {"q_proj", "v_proj"}, "use_rslora": True, "use_dora": True}),
    ],
    ids=["defaults: all linear layers, alpha twice the rank", "explicit targets, rsLoRA and DoRA pass through"],
)
def test_lora_config_follows_the_spec(make_spec: SpecFactory, lora: dict[str, Any], expected: dict[str, Any]) -> None:
    text_model = SimpleNamespace(config=SimpleNamespace(model_type="llama"))
    config = model.lora_config(make_spec({"method": {"lora": {"rank": 8, **lora}}}), text_model)

    assert {key: getattr(config, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("quantization", "expected"),
    [
        ({"bits": 4}, {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}),
        ({"bits": 4, "type": "fp4", "doubleQuant": False},
         {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False}),
        ({"bits": 8}, {"load_in_8bit": True, "load_in_4bit": False}),
    ],
    ids=["4-bit defaults to nf4 with double quantization", "fp4 without double quantization", "8-bit LLM.int8"],
)
def test_quantization_config_follows_the_spec(make_spec: SpecFactory, quantization: dict[str, Any],
                                              expected: dict[str, Any]) -> None:
    spec = make_spec({"method": {"type": "qlora", "quantization": quantization}, "resources": {"gpus": 1}})

    config = model.quantization_config(spec)

    assert {key: getattr(config, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("attention", "loaded"),
    [("auto", "eager"), ("eager", "eager")],
    ids=["auto loads a model without sdpa (Gemma 2) with eager attention",
         "an explicit eager is what it asks for"],
)
def test_a_model_without_sdpa_loads_with_eager_attention(
    make_spec: SpecFactory, data_root: Any, attention: str, loaded: str
) -> None:
    from transformers import AutoModelForCausalLM, Gemma2Config

    folder = data_root / "gemma2"
    if not (folder / "config.json").exists():
        config = Gemma2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    spec = make_spec({"model": {"path": "/data/gemma2", "attention": attention}})
    chosen, _ = model.choose_attention(attention, "cpu", "float32", False, None)
    loaded_model = model.load_model(spec, Precision("float32"), chosen, None, None)
    assert loaded_model.config._attn_implementation == loaded


def test_sdpa_asked_for_on_a_model_without_it_is_a_model_load_error(make_spec: SpecFactory, data_root: Any) -> None:
    from kubetune_trainer.errors import ModelLoadError

    test_a_model_without_sdpa_loads_with_eager_attention(make_spec, data_root, "eager", "eager")  # builds it
    spec = make_spec({"model": {"path": "/data/gemma2", "attention": "sdpa"}})
    with pytest.raises(ModelLoadError, match=r"spec\.model"):
        model.load_model(spec, Precision("float32"), "sdpa", None, None)
