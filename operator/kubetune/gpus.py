"""GPU products and GPU nodes: what a Node object says about the GPUs on it.

GPU Feature Discovery (GFD, part of the NVIDIA GPU operator) labels nodes with
`nvidia.com/gpu.product`, `nvidia.com/gpu.memory` (MiB per GPU) and `nvidia.com/gpu.count` (the
planner counts allocatable `nvidia.com/gpu` instead: that is what the scheduler hands out); the
device plugin advertises `nvidia.com/gpu` (whole GPUs, or MIG slices under the `single` MIG
strategy) and `nvidia.com/mig-<profile>` (the `mixed` strategy). Where the memory label is missing
the product table below gives the memory; an unknown product is assumed to be small.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.contract import GPU_RESOURCE

LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY_MIB = "nvidia.com/gpu.memory"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
HOSTNAME_LABEL = "kubernetes.io/hostname"

# Fraction of a GPU's memory kept free between the estimate and the GPU: the estimate's own error
# (docs/estimator.md: median 4%, worst 23% over 41 rows) and spikes the estimate does not model.
DEFAULT_SAFETY_MARGIN = 0.10
# The GPU `strategy: auto` decides against when the spec names none: 80 GB A100/H100, the GPUs
# most fine-tuning clusters have.
DEFAULT_GPU_MEMORY_GIB = 80.0
# A GPU whose product and memory are both unknown is assumed this small (a 16 GB T4/V100, the
# smallest data-centre GPU in common use), so that kubetune never places a job that cannot fit.
UNKNOWN_GPU_MEMORY_GIB = 15.0
# bfloat16 tensor cores and flash-attention 2 arrived with Ampere (compute capability 8.x).
BFLOAT16_MIN_MAJOR = 8


@dataclass(frozen=True)
class GpuProduct:
    label: str  # nvidia.com/gpu.product as GFD writes it
    memory_mib: int  # nvidia.com/gpu.memory as GFD writes it (what the driver reports)
    compute_capability: str

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024

    @property
    def has_bfloat16(self) -> bool:
        """bfloat16 math (and flash-attention 2) needs Ampere, compute capability 8.0, or newer."""
        major, _ = self.compute_capability.split(".")
        return int(major) >= BFLOAT16_MIN_MAJOR


PRODUCTS: tuple[GpuProduct, ...] = (
    GpuProduct("NVIDIA-B200", 183359, "10.0"),
    GpuProduct("NVIDIA-H200", 143771, "9.0"),
    GpuProduct("NVIDIA-H200-NVL", 143771, "9.0"),
    GpuProduct("NVIDIA-GH200-480GB", 97871, "9.0"),
    GpuProduct("NVIDIA-H100-80GB-HBM3", 81559, "9.0"),
    GpuProduct("NVIDIA-H100-SXM5-80GB", 81559, "9.0"),
    GpuProduct("NVIDIA-H100-PCIe", 81559, "9.0"),
    GpuProduct("NVIDIA-H100-NVL", 95830, "9.0"),
    GpuProduct("NVIDIA-A100-SXM4-80GB", 81920, "8.0"),
    GpuProduct("NVIDIA-A100-80GB-PCIe", 81920, "8.0"),
    GpuProduct("NVIDIA-A100-SXM4-40GB", 40960, "8.0"),
    GpuProduct("NVIDIA-A100-PCIE-40GB", 40960, "8.0"),
    GpuProduct("NVIDIA-L40S", 46068, "8.9"),
    GpuProduct("NVIDIA-L40", 46068, "8.9"),
    GpuProduct("NVIDIA-L4", 23034, "8.9"),
    GpuProduct("NVIDIA-A40", 46068, "8.6"),
    GpuProduct("NVIDIA-A10G", 23028, "8.6"),
    GpuProduct("NVIDIA-A10", 23028, "8.6"),
    GpuProduct("NVIDIA-RTX-A6000", 49140, "8.6"),
    GpuProduct("NVIDIA-RTX-6000-Ada-Generation", 49140, "8.9"),
    GpuProduct("NVIDIA-GeForce-RTX-4090", 24564, "8.9"),
    GpuProduct("NVIDIA-GeForce-RTX-3090", 24576, "8.6"),
    GpuProduct("Tesla-T4", 15360, "7.5"),
    GpuProduct("Tesla-V100-SXM2-16GB", 16384, "7.0"),
    GpuProduct("Tesla-V100-PCIE-16GB", 16384, "7.0"),
    GpuProduct("Tesla-V100-SXM2-32GB", 32768, "7.0"),
    GpuProduct("Tesla-V100-PCIE-32GB", 32768, "7.0"),
)
PRODUCTS_BY_KEY = {product.label.lower(): product for product in PRODUCTS}
# MIG products look like NVIDIA-A100-SXM4-40GB-MIG-1g.5gb: the slice has <n>gb of memory.
MIG_PRODUCT = re.compile(r"-MIG-(\d+)g\.(\d+)gb$", re.IGNORECASE)
MIG_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb")
# Spellings people write in gpuProduct that GFD writes differently.
PRODUCT_PREFIXES = ("nvidia-", "tesla-", "geforce-")


def _normalise(product: str) -> str:
    key = product.lower().replace(" ", "-")
    for prefix in PRODUCT_PREFIXES:
        key = key.removeprefix(prefix)
    return key


NORMALISED_PRODUCTS = {_normalise(product.label): product for product in PRODUCTS}


def find_product(label: str) -> GpuProduct | None:
    """The product for a GFD product label (case and NVIDIA-/Tesla- prefixes do not matter)."""
    return PRODUCTS_BY_KEY.get(label.lower()) or NORMALISED_PRODUCTS.get(_normalise(label))


def mig_slice_gib(product_or_profile: str) -> float | None:
    """Memory of a MIG slice from its product label or profile (`...-MIG-1g.10gb`, `1g.10gb`)."""
    match = MIG_PRODUCT.search(product_or_profile) or MIG_PROFILE.match(product_or_profile)
    return float(match.group(2)) * 1e9 / (1 << 30) if match else None


def product_memory_gib(label: str) -> float | None:
    """GiB per GPU of a product label, from MIG slice size or the table; None when unknown."""
    slice_gib = mig_slice_gib(label)
    if slice_gib is not None:
        return slice_gib
    product = find_product(label)
    return product.memory_gib if product else None


MemorySource = Literal["label", "product table", "assumed"]


@dataclass(frozen=True)
class GpuNode:
    """What the planner needs to know about one node."""

    name: str
    labels: Mapping[str, str]
    gpus: int  # allocatable nvidia.com/gpu
    product: str | None
    memory_gib: float
    memory_source: MemorySource
    ready: bool
    unschedulable: bool
    taints: tuple[Mapping[str, Any], ...]
    mig_slices: Mapping[str, int]  # nvidia.com/mig-<profile> -> allocatable (mixed strategy)


def _quantity_int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _ready(status: Mapping[str, Any]) -> bool:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def gpu_memory(labels: Mapping[str, str], product: str | None) -> tuple[float, MemorySource]:
    """GiB per GPU of a node: the GFD label, else the product table, else the conservative guess."""
    label = labels.get(LABEL_MEMORY_MIB)
    if label is not None and label.isdigit() and int(label) > 0:
        return int(label) / 1024, "label"
    known = product_memory_gib(product) if product else None
    if known is not None:
        return known, "product table"
    return UNKNOWN_GPU_MEMORY_GIB, "assumed"


def gpu_node(node: Mapping[str, Any]) -> GpuNode:
    """A GpuNode from a Node object as the API returns it (camelCase keys)."""
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels = metadata.get("labels") or {}
    allocatable = status.get("allocatable") or {}
    product = labels.get(LABEL_PRODUCT)
    memory, source = gpu_memory(labels, product)
    mig = {
        key.removeprefix(MIG_RESOURCE_PREFIX): _quantity_int(value)
        for key, value in allocatable.items()
        if key.startswith(MIG_RESOURCE_PREFIX)
    }
    return GpuNode(
        name=metadata.get("name", ""),
        labels=labels,
        gpus=_quantity_int(allocatable.get(GPU_RESOURCE, 0)),
        product=product,
        memory_gib=memory,
        memory_source=source,
        ready=_ready(status),
        unschedulable=bool(spec.get("unschedulable")),
        taints=tuple(spec.get("taints") or ()),
        mig_slices={profile: count for profile, count in mig.items() if count > 0},
    )
