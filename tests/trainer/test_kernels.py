"""The fast paths a run takes (Liger, the packing layout, fused AdamW): chosen from the spec and the machine's
facts, refused with a reason when required and impossible, and handed to the Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import Kernels
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.kernels import KernelChoice, KernelFacts, choose_kernels, kernel_facts
from kubetune_trainer.model import Precision
from kubetune_trainer.train import Environment, training_arguments

from .conftest import SpecFactory

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
                                   "optimizer": "adamw_torch_fused"}
