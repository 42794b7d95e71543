"""The fast paths a run takes (Liger, the packing layout, fused AdamW): chosen from the spec and the machine's
facts, refused with a reason when required and impossible, and handed to the Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from kubetune.api import Kernels
from kubetune_trainer import model as models
from kubetune_trainer import tiny, train
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.kernels import (
    KernelChoice,
    KernelFacts,
    adapters_under_autocast,
    choose_kernels,
    kernel_facts,
)
from kubetune_trainer.model import Precision
from kubetune_trainer.progress import ProgressTracker
from kubetune_trainer.train import Environment, adapter_inputs_left_to_autocast, training_arguments

from .conftest import ContextFactory, SpecFactory

LIGER_TYPES = frozenset({"llama", "qwen2", "mistral"})
H200 = KernelFacts(device="cuda", capability=(9, 0), triton_installed=True, liger_model_types=LIGER_TYPES,
                   model_type="llama")
CPU = KernelFacts(device="cpu", capability=None, triton_installed=False, liger_model_types=None, model_type="llama")
T4 = KernelFacts(device="cuda", capability=(7, 5), triton_installed=True, liger_model_types=LIGER_TYPES,
                 model_type="llama")
NO_LIGER = KernelFacts(device="cuda", capability=(9, 0), triton_installed=True, liger_model_types=None,
                       model_type="llama")
NO_TRITON = KernelFacts(device="cuda", capability=(9, 0), triton_installed=False, liger_model_types=LIGER_TYPES,
                        model_type="llama")
UNSUPPORTED_MODEL = KernelFacts(device="cuda", capability=(9, 0), triton_installed=True,
                                liger_model_types=LIGER_TYPES, model_type="gpt_bigcode")


@pytest.mark.parametrize(
    ("asked", "facts", "expected", "reason"),
    [
        (("auto", False, "adamw_torch"), H200, (True, "off", "adamw_torch_fused"), "model type 'llama'"),
        (("liger", True, "adamw_torch"), H200, (True, "rows", "adamw_torch_fused"), "requested (liger)"),
        (("none", False, "adamw_torch"), H200, (False, "off", "adamw_torch_fused"), "kernels is none"),
        (("auto", True, "adamw_torch"), CPU, (False, "rows", "adamw_torch"), "no CUDA GPU"),
        (("none", False, "adamw_torch"), CPU, (False, "off", "adamw_torch"), "kernels is none"),
        (("auto", False, "adamw_torch"), T4, (False, "off", "adamw_torch_fused"), "below (8, 0)"),
        (("auto", False, "adamw_torch"), NO_LIGER, (False, "off", "adamw_torch_fused"), "pip install 'kubetune[gpu]'"),
        (("auto", False, "adamw_torch"), NO_TRITON, (False, "off", "adamw_torch_fused"), "Triton is not installed"),
        (("auto", False, "adamw_torch"), UNSUPPORTED_MODEL, (False, "off", "adamw_torch_fused"),
         "no kernels for model type 'gpt_bigcode'"),
        (("auto", False, "paged_adamw_8bit"), H200, (True, "off", "paged_adamw_8bit"), "model type 'llama'"),
        (("auto", False, "adamw_bnb_8bit"), H200, (True, "off", "adamw_bnb_8bit"), "model type 'llama'"),
    ],
    ids=[
        "auto on an H200 with a Llama turns Liger on and fuses AdamW",
        "liger with packing and sdpa on an H200 turns Liger on and packs into rows",
        "none on an H200 keeps Liger off but still fuses AdamW",
        "auto on a CPU keeps Liger off and AdamW unfused; packing with sdpa packs into rows",
        "none on a CPU changes nothing",
        "auto on a pre-Ampere GPU keeps Liger off and says why",
        "auto without liger-kernel installed keeps Liger off and names the extra to install",
        "auto without Triton keeps Liger off and says so",
        "auto on a model type liger-kernel does not know keeps Liger off and names the type",
        "a paged 8-bit optimizer is kept as asked: it has no fused twin",
        "an 8-bit optimizer is kept as asked on a GPU",
    ],
)
def test_the_fast_paths_chosen(asked: tuple[Kernels, bool, str], facts: KernelFacts,
                               expected: tuple[bool, str, str], reason: str) -> None:
    """asked: (spec.training.kernels, packing, optimizer), with sdpa; expected: (Liger, packing layout, optimizer)."""
    requested, packing, optimizer = asked
    choice = choose_kernels(requested, packing=packing, attention="sdpa", optimizer=optimizer, facts=facts)

    assert (choice.liger, choice.packing, choice.optimizer) == expected
    assert reason in choice.reason
    assert reason in choice.describe()


@pytest.mark.parametrize(
    ("packing", "attention", "layout"),
    [(True, "flash_attention_2", "padding-free"), (True, "sdpa", "rows"), (True, "eager", "rows"),
     (False, "flash_attention_2", "off"), (False, "sdpa", "off")],
    ids=[
        "flash attention takes the document boundaries, so a packed micro-batch is one padding-free row",
        "sdpa needs a mask, so packed documents stay in rows with a mask each",
        "eager needs a mask too, so packed documents stay in rows",
        "without packing nothing is flattened, even with flash attention",
        "without packing sdpa rows are plain padded rows",
    ],
)
def test_the_packing_layout_follows_the_attention_kernel(packing: bool, attention: str, layout: str) -> None:
    choice = choose_kernels("auto", packing=packing, attention=attention, optimizer="adamw_torch", facts=CPU)

    assert choice.packing == layout
    assert choice.padding_free == (layout == "padding-free")
    assert f"packing {layout}" in choice.describe()


@pytest.mark.parametrize(
    ("facts", "why"),
    [(CPU, "no CUDA GPU"), (T4, "compute capability"), (NO_LIGER, "liger-kernel is not installed"),
     (NO_TRITON, "Triton"), (UNSUPPORTED_MODEL, "gpt_bigcode")],
    ids=[
        "liger on a CPU is refused",
        "liger on a pre-Ampere GPU is refused",
        "liger without liger-kernel installed is refused",
        "liger without Triton is refused",
        "liger on a model type liger-kernel does not know is refused",
    ],
)
def test_liger_is_a_hard_request(facts: KernelFacts, why: str) -> None:
    with pytest.raises(ConfigError, match=f"spec.training.kernels: liger cannot run here: .*{why}.*auto or none"):
        choose_kernels("liger", packing=False, attention="sdpa", optimizer="adamw_torch", facts=facts)


def test_a_cpu_never_looks_for_liger_or_triton() -> None:
    class Config:
        model_type = "llama"

    class Model:
        config = Config()

    assert kernel_facts("cpu", None, Model()) == CPU


def test_the_trainer_gets_the_chosen_paths(make_spec: SpecFactory, tmp_path: Path) -> None:
    choice = KernelChoice(liger=True, reason="test", packing="padding-free", optimizer="adamw_torch_fused")
    arguments = training_arguments(
        make_spec({"training": {"packing": True}}), tmp_path, precision=Precision("float32"),
        environment=Environment("cpu", None, False, None, 1), has_eval=False, interactive=False, strategy=None,
        kernel_choice=choice,
    )

    assert (arguments.use_liger_kernel, arguments.padding_free, arguments.optim) == (True, True, "adamw_torch_fused")
    assert choice.as_summary() == {"liger": True, "reason": "test", "packing": "padding-free",
                                   "optimizer": "adamw_torch_fused", "loraInputs": "peft default"}


@pytest.mark.parametrize(
    ("method", "dora", "mixed_precision", "fsdp", "expected"),
    [
        ("lora", False, True, False, True),
        ("qlora", False, True, False, True),
        ("lora", True, True, False, False),
        ("lora", False, False, False, False),
        ("lora", False, True, True, False),
        ("full", False, True, False, False),
    ],
    ids=[
        "LoRA in bf16 or fp16 leaves its inputs to autocast",
        "QLoRA in bf16 does the same",
        "DoRA keeps peft's cast: its weight norm has its own arithmetic",
        "float32 training has no autocast to leave them to",
        "FSDP casts parameters itself, so peft's cast stays",
        "a full fine-tune has no adapters",
    ],
)
def test_lora_inputs_are_left_to_autocast_only_where_autocast_computes_them(
        method: str, dora: bool, mixed_precision: bool, fsdp: bool, expected: bool) -> None:
    assert adapters_under_autocast(method, dora, mixed_precision, fsdp) is expected


@pytest.fixture(scope="module")
def bf16_lora_model() -> Any:
    """A bf16 base model with peft's float32 adapters (its default for a half-precision base)."""
    from peft import LoraConfig, get_peft_model

    model = tiny.build_model(tiny.build_tokenizer()).to(torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                  init_lora_weights=False))
    assert {p.dtype for n, p in peft_model.named_parameters() if "lora_" in n} == {torch.float32}
    return peft_model


def _loss_and_adapter_grads(model: Any, *, cast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    ids = torch.arange(3, 40).reshape(1, -1)
    model.zero_grad()
    with adapter_inputs_left_to_autocast(model, active=not cast), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]


def test_under_autocast_lora_without_peft_cast_computes_the_same_loss_and_gradients(bf16_lora_model: Any) -> None:
    cast_loss, cast_grads = _loss_and_adapter_grads(bf16_lora_model, cast=True)
    loss, grads = _loss_and_adapter_grads(bf16_lora_model, cast=False)

    assert torch.equal(loss, cast_loss)  # bf16 -> float32 -> bf16 is exact: autocast multiplies the same values
    assert all(torch.equal(a, b) for a, b in zip(grads, cast_grads, strict=True))
    assert all(g.dtype == torch.float32 for g in grads)  # the float32 master weights get float32 gradients


def test_peft_cast_is_back_on_after_training_so_generation_outside_autocast_works(bf16_lora_model: Any) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    ids = torch.arange(3, 9).reshape(1, -1)
    with adapter_inputs_left_to_autocast(bf16_lora_model, active=True), pytest.raises(RuntimeError, match="dtype"):
        bf16_lora_model(input_ids=ids)  # outside autocast the float32 adapters cannot take bf16 inputs

    layers = [m for m in bf16_lora_model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)
    assert bf16_lora_model.generate(input_ids=ids, max_new_tokens=2, do_sample=False).shape == (1, 8)


def test_a_bf16_lora_run_trains_with_its_inputs_left_to_the_trainers_autocast(
        make_context: ContextFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer's own autocast (accelerate's, here on the CPU as on a GPU) computes the adapters: without it
    the float32 adapters would refuse the bf16 inputs (previous test)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    monkeypatch.setattr(models, "choose_precision", lambda *args: Precision("bfloat16", bf16=True))
    built = train.build_run(make_context({"training": {"maxSteps": 3}}), ProgressTracker())
    during: list[bool] = []
    layers = [m for m in built.trainer.model.modules() if isinstance(m, BaseTunerLayer)]
    built.trainer.add_callback(type("Look", (TrainerCallback,), {
        "on_step_end": lambda self, *a, **k: during.append(layers[0].cast_input_dtype_enabled)})())

    result = train.train(built)

    assert built.kernels.adapters_autocast and "LoRA inputs left to autocast" in built.kernels.describe()
    assert during == [False, False, False] and all(m.cast_input_dtype_enabled for m in layers)
    assert torch.isfinite(torch.tensor(result.training_loss))
