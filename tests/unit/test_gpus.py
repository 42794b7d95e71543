"""GPU products and what a Node object says about its GPUs."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.gpus import UNKNOWN_GPU_MEMORY_GIB, find_product, gpu_memory, gpu_node, product_memory_gib


@pytest.mark.parametrize(
    ("label", "gib"),
    [
        ("NVIDIA-A100-SXM4-80GB", 80.0),
        ("NVIDIA-A100-PCIE-40GB", 40.0),
        ("NVIDIA-H100-80GB-HBM3", 79.65),
        ("NVIDIA-H100-NVL", 93.58),
        ("NVIDIA-H200", 140.4),
        ("NVIDIA-L4", 22.49),
        ("NVIDIA-L40S", 44.99),
        ("NVIDIA-A10G", 22.49),
        ("Tesla-T4", 15.0),
        ("Tesla-V100-SXM2-32GB", 32.0),
        ("NVIDIA-GeForce-RTX-4090", 23.99),
        ("NVIDIA-RTX-A6000", 47.99),
        ("NVIDIA-B200", 179.06),
        ("nvidia-a100-sxm4-80gb", 80.0),
        ("A10G", 22.49),
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", 4.66),
        ("NVIDIA-H100-80GB-HBM3-MIG-3g.40gb", 37.25),
    ],
    ids=str,
)
def test_product_memory(label: str, gib: float) -> None:
    assert product_memory_gib(label) == pytest.approx(gib, abs=0.01)


def test_unknown_products_have_no_table_entry() -> None:
    assert find_product("ACME-GPU-9000") is None
    assert product_memory_gib("ACME-GPU-9000") is None


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"nvidia.com/gpu.memory": "81920"}, (80.0, "label")),
        ({"nvidia.com/gpu.memory": "not-a-number", "nvidia.com/gpu.product": "NVIDIA-L4"}, (22.49, "product table")),
        ({"nvidia.com/gpu.product": "NVIDIA-L4"}, (22.49, "product table")),
        ({"nvidia.com/gpu.product": "ACME-GPU-9000"}, (UNKNOWN_GPU_MEMORY_GIB, "assumed")),
        ({}, (UNKNOWN_GPU_MEMORY_GIB, "assumed")),
    ],
    ids=["the GFD memory label wins", "a broken label falls back to the product table",
         "no memory label: the product table", "an unknown product is assumed small", "no labels at all"],
)
def test_gpu_memory_sources(labels: dict[str, str], expected: tuple[float, str]) -> None:
    memory, source = gpu_memory(labels, labels.get("nvidia.com/gpu.product"))
    assert (round(memory, 2), source) == expected


def test_gpu_node_reads_allocatable_conditions_taints_and_mig() -> None:
    raw: dict[str, Any] = {
        "metadata": {"name": "n1", "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}},
        "spec": {"unschedulable": True, "taints": [{"key": "k", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"nvidia.com/gpu": "4", "nvidia.com/mig-1g.5gb": "7", "nvidia.com/mig-2g.10gb": "0"},
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
        },
    }
    node = gpu_node(raw)
    assert (node.name, node.gpus, node.ready, node.unschedulable) == ("n1", 4, True, True)
    assert node.memory_gib == 40.0 and node.memory_source == "product table"
    assert node.taints == ({"key": "k", "effect": "NoSchedule"},)
    assert node.mig_slices == {"1g.5gb": 7}


def test_a_node_without_status_is_not_ready_and_has_no_gpus() -> None:
    node = gpu_node({"metadata": {"name": "bare"}})
    assert (node.gpus, node.ready, node.product) == (0, False, None)
