"""On a CUDA GPU: bf16, real bitsandbytes QLoRA (4- and 8-bit) and the 8-bit paged optimizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer import train

from .conftest import ContextFactory, merged

pytestmark = pytest.mark.gpu

GPU_SPEC = {"model": {"dtype": "bfloat16"}, "resources": {"gpus": 1}, "training": {"maxSteps": 20}}


@pytest.mark.parametrize(
    "changes",
    [
        {"method": {"type": "qlora", "quantization": {"bits": 4, "type": "nf4"}}},
        {"method": {"type": "qlora", "quantization": {"bits": 4, "type": "fp4", "doubleQuant": False}}},
        {"method": {"type": "qlora", "quantization": {"bits": 8}}},
        {"method": {"type": "lora"}, "training": {"optimizer": "paged_adamw_8bit", "gradientCheckpointing": True}},
    ],
    ids=[
        "qlora nf4 with double quantization trains on the GPU and saves an adapter",
        "qlora fp4 trains on the GPU",
        "qlora 8-bit trains on the GPU",
        "lora with the paged 8-bit optimizer and checkpointing trains on the GPU",
    ],
)
def test_gpu_methods_train_and_report_memory(make_context: ContextFactory, changes: dict[str, Any]) -> None:
    report = train.run(make_context(merged(GPU_SPEC, changes)))

    assert report["steps"] == 20
    assert report["final_loss"] < report["first_loss"]
    assert report["peak_gpu_memory_gib"] is not None and report["peak_gpu_memory_gib"] > 0
    final = Path(report["output_path"])
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 8
