"""GPU products and GPU nodes: what a Node object says about the GPUs on it.

The device plugin advertises `nvidia.com/gpu` (whole GPUs, or MIG slices under the `single` MIG
strategy) and `nvidia.com/mig-<profile>` (the `mixed` strategy); the planner counts allocatable
`nvidia.com/gpu`, which is what the scheduler hands out. Which GPU a node has, and its memory, is read
from the first of these that tells (docs/planning.md has the sources):

1. the annotation `kubetune.io/gpu-memory-gib` an administrator put on the node;
2. NVIDIA GPU Feature Discovery (GFD): `nvidia.com/gpu.memory` (MiB per GPU) and `nvidia.com/gpu.product`;
3. the operator's label -> product setting (chart value `gpuDiscovery.labelProducts`);
4. GKE: `cloud.google.com/gke-accelerator` (and `cloud.google.com/gke-gpu-partition-size` for MIG);
5. EKS/Karpenter: `karpenter.k8s.aws/instance-gpu-memory` (MiB per GPU) and `-gpu-name`;
6. `node.kubernetes.io/instance-type` in the instance table below (AWS, GCP and Azure GPU families;
   AKS labels GPU nodes only `kubernetes.azure.com/accelerator=nvidia`, so AKS needs this table).

A node none of these tells about has unknown GPU memory (None): the planner names it and the fix,
and never guesses a size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
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


# ------------------------------------------------------------------------------ node labels

ANNOTATION_MEMORY_GIB = "kubetune.io/gpu-memory-gib"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GKE_PARTITION_SIZE = "cloud.google.com/gke-gpu-partition-size"
KARPENTER_GPU_NAME = "karpenter.k8s.aws/instance-gpu-name"
KARPENTER_GPU_MEMORY_MIB = "karpenter.k8s.aws/instance-gpu-memory"
KARPENTER_GPU_COUNT = "karpenter.k8s.aws/instance-gpu-count"
AKS_ACCELERATOR = "kubernetes.azure.com/accelerator"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
# An annotated GPU memory above this is a typo (the largest GPU sold today has under 200 GiB).
MAX_ANNOTATED_GPU_GIB = 1024.0

# GKE's accelerator names (the `--accelerator type=` of `gcloud container node-pools create`, written
# by GKE as the node label) -> the product GFD would write. Source: cloud.google.com/compute/docs/gpus
# (GPU models and their memory) and cloud.google.com/kubernetes-engine/docs/how-to/gpus.
GKE_ACCELERATORS: Mapping[str, str] = {
    "nvidia-tesla-t4": "Tesla-T4",
    "nvidia-tesla-v100": "Tesla-V100-SXM2-16GB",
    "nvidia-l4": "NVIDIA-L4",
    "nvidia-tesla-a100": "NVIDIA-A100-SXM4-40GB",
    "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h100-mega-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h200-141gb": "NVIDIA-H200",
    "nvidia-b200": "NVIDIA-B200",
}
# Karpenter's `instance-gpu-name` (EC2 DescribeInstanceTypes GpuInfo name, lower-cased) -> products,
# told apart by `instance-gpu-memory` where one name covers several. Source: karpenter.sh
# docs/reference/instance-types and aws.amazon.com/ec2/instance-types/ (accelerated computing).
KARPENTER_GPU_NAMES: Mapping[str, tuple[str, ...]] = {
    "t4": ("Tesla-T4",),
    "v100": ("Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB"),
    "a10g": ("NVIDIA-A10G",),
    "l4": ("NVIDIA-L4",),
    "l40s": ("NVIDIA-L40S",),
    "a100": ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB"),
    "h100": ("NVIDIA-H100-80GB-HBM3",),
    "h200": ("NVIDIA-H200",),
    "b200": ("NVIDIA-B200",),
}
KARPENTER_NAME_OF_PRODUCT = {product: name for name, products in KARPENTER_GPU_NAMES.items() for product in products}


def _aws(family: str, product: str, sizes: Mapping[str, int]) -> dict[str, tuple[str, int]]:
    return {f"{family}.{size}": (product, gpus) for size, gpus in sizes.items()}


# g4dn/g5/g6/g6e share one shape: one GPU up to 16xlarge, four at 12xlarge and 24xlarge, eight at 48xlarge.
_G_SIZES = {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4, "24xlarge": 4,
            "48xlarge": 8}
# Instance type -> (GPU product, GPUs per instance). Sources: aws.amazon.com/ec2/instance-types/ (P3, P4,
# P5, G4dn, G5, G6, G6e); cloud.google.com/compute/docs/gpus and .../accelerator-optimized-machines (A2,
# A3, A4, G2); learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated (NCv3, NCasT4_v3,
# NC A100 v4, NC H100 v5, ND A100 v4, ND H100 v5, ND H200 v5). Keys are matched case-insensitively.
INSTANCE_TYPES: Mapping[str, tuple[str, int]] = {
    # AWS
    **_aws("g4dn", "Tesla-T4", {**_G_SIZES, "48xlarge": 0, "metal": 8}),
    **_aws("g5", "NVIDIA-A10G", _G_SIZES),
    **_aws("g6", "NVIDIA-L4", _G_SIZES),
    **_aws("g6e", "NVIDIA-L40S", _G_SIZES),
    **_aws("p3", "Tesla-V100-SXM2-16GB", {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8}),
    "p3dn.24xlarge": ("Tesla-V100-SXM2-32GB", 8),
    "p4d.24xlarge": ("NVIDIA-A100-SXM4-40GB", 8),
    "p4de.24xlarge": ("NVIDIA-A100-SXM4-80GB", 8),
    "p5.4xlarge": ("NVIDIA-H100-80GB-HBM3", 1),
    "p5.48xlarge": ("NVIDIA-H100-80GB-HBM3", 8),
    "p5e.48xlarge": ("NVIDIA-H200", 8),
    "p5en.48xlarge": ("NVIDIA-H200", 8),
    # GCP
    **{f"a2-highgpu-{n}g": ("NVIDIA-A100-SXM4-40GB", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("NVIDIA-A100-SXM4-40GB", 16),
    **{f"a2-ultragpu-{n}g": ("NVIDIA-A100-SXM4-80GB", n) for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": ("NVIDIA-H100-80GB-HBM3", n) for n in (1, 2, 4, 8)},
    "a3-megagpu-8g": ("NVIDIA-H100-80GB-HBM3", 8),
    "a3-edgegpu-8g": ("NVIDIA-H100-80GB-HBM3", 8),
    "a3-ultragpu-8g": ("NVIDIA-H200", 8),
    "a4-highgpu-8g": ("NVIDIA-B200", 8),
    **{f"g2-standard-{vcpus}": ("NVIDIA-L4", gpus)
       for vcpus, gpus in {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}.items()},
    # Azure
    **{f"standard_nc{vcpus}s_v3": ("Tesla-V100-PCIE-16GB", gpus) for vcpus, gpus in {6: 1, 12: 2, 24: 4}.items()},
    "standard_nc24rs_v3": ("Tesla-V100-PCIE-16GB", 4),
    **{f"standard_nc{vcpus}as_t4_v3": ("Tesla-T4", gpus) for vcpus, gpus in {4: 1, 8: 1, 16: 1, 64: 4}.items()},
    **{f"standard_nc{vcpus}ads_a100_v4": ("NVIDIA-A100-80GB-PCIe", gpus)
       for vcpus, gpus in {24: 1, 48: 2, 96: 4}.items()},
    "standard_nc40ads_h100_v5": ("NVIDIA-H100-NVL", 1),
    "standard_nc80adis_h100_v5": ("NVIDIA-H100-NVL", 2),
    "standard_nd96asr_v4": ("NVIDIA-A100-SXM4-40GB", 8),
    "standard_nd96amsr_a100_v4": ("NVIDIA-A100-SXM4-80GB", 8),
    "standard_nd96isr_h100_v5": ("NVIDIA-H100-80GB-HBM3", 8),
    "standard_nd96isr_h200_v5": ("NVIDIA-H200", 8),
}


def expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A node selector requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt) against labels."""
    key, operator = expression.get("key", ""), expression.get("operator")
    values = expression.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            actual, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    return False


def instance_type(name: str) -> tuple[str, int] | None:
    """(GPU product, GPUs) of a cloud instance type in the table, or None; 0-GPU sizes are not GPU types."""
    found = INSTANCE_TYPES.get(name.lower())
    return found if found and found[1] > 0 else None


@dataclass(frozen=True)
class LabelProduct:
    """An operator setting: nodes with this label have this GPU product, or this much memory per GPU."""

    key: str
    value: str
    product: str | None = None
    memory_gib: float | None = None


class DiscoveryError(ValueError):
    """A label -> product mapping kubetune cannot use; the message names the field."""


def _label_product(item: object, where: str) -> LabelProduct:
    if not isinstance(item, Mapping) or not isinstance(item.get("label"), str) or "=" not in item["label"]:
        raise DiscoveryError(f"{where}.label: must be a node label written key=value")
    key, value = item["label"].split("=", 1)
    product, memory = item.get("product"), item.get("memoryGiB")
    known = find_product(product) if isinstance(product, str) else None
    if product is not None and known is None:
        raise DiscoveryError(f"{where}.product: {product!r} is not a GPU product kubetune knows; "
                             "give memoryGiB instead")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int | float)
                               or not 0 < memory <= MAX_ANNOTATED_GPU_GIB):
        raise DiscoveryError(f"{where}.memoryGiB: must be a number of GiB per GPU above 0 and at most "
                             f"{MAX_ANNOTATED_GPU_GIB:g}")
    if known is None and memory is None:
        raise DiscoveryError(f"{where}: give product or memoryGiB")
    return LabelProduct(key.strip(), value.strip(), known.label if known else None,
                        None if memory is None else float(memory))


def label_products(items: Any, where: str) -> tuple[LabelProduct, ...]:
    """The label -> product mappings of the chart's gpuDiscovery.labelProducts:
    a list of {label: key=value, product | memoryGiB}."""
    if not isinstance(items, list):
        raise DiscoveryError(f"{where}: must be a list of {{label: key=value, product | memoryGiB}}")
    return tuple(_label_product(item, f"{where}[{index}]") for index, item in enumerate(items))


MemorySource = Literal["annotation", "label", "setting", "product table", "instance type", "unknown"]


@dataclass(frozen=True)
class GpuIdentity:
    """Which GPU a node (or a node type that can be provisioned) has, and how kubetune knows."""

    product: str | None  # as GFD writes it, where the product is known
    memory_gib: float | None  # None: unknown (never guessed)
    memory_source: MemorySource
    discovered_by: str  # the label or setting that told, for messages
    memory_label: str | None = None  # a label holding MiB per GPU on such nodes (node affinity can use Gt on it)
    product_label: tuple[str, str] | None = None  # a label (key, value) that marks such nodes


def _annotated_gib(annotations: Mapping[str, str]) -> float | None:
    raw = annotations.get(ANNOTATION_MEMORY_GIB)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 < value <= MAX_ANNOTATED_GPU_GIB else None


def _positive_int(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isdigit() and int(raw) > 0 else None


def _karpenter_product(name: str, memory_mib: int | None) -> str:
    """The product of a Karpenter GPU name, the closest in memory where the name covers several;
    a name the table lacks is kept as it is (its memory may still come from the memory label)."""
    candidates = [product for label in KARPENTER_GPU_NAMES.get(name.lower(), ()) if (product := find_product(label))]
    if not candidates:
        return name
    if memory_mib is None:
        return candidates[0].label
    return min(candidates, key=lambda product: abs(product.memory_mib - memory_mib)).label


def _product_of(labels: Mapping[str, str], hint: LabelProduct | None) -> tuple[str | None, tuple[str, str] | None, str]:
    """The product, the label that marks it, and which scheme told (first that knows wins)."""
    if LABEL_PRODUCT in labels:
        return labels[LABEL_PRODUCT], (LABEL_PRODUCT, labels[LABEL_PRODUCT]), "GFD"
    if hint is not None and hint.product is not None:
        return hint.product, (hint.key, hint.value), f"setting {hint.key}={hint.value}"
    accelerator = labels.get(GKE_ACCELERATOR, "").lower()
    if accelerator in GKE_ACCELERATORS:
        product = GKE_ACCELERATORS[accelerator]
        partition = labels.get(GKE_PARTITION_SIZE)
        if partition and MIG_PROFILE.match(partition):
            product = f"{product}-MIG-{partition}"
        return product, (GKE_ACCELERATOR, labels[GKE_ACCELERATOR]), "GKE"
    gpu_name = labels.get(KARPENTER_GPU_NAME)
    if gpu_name:
        product = _karpenter_product(gpu_name, _positive_int(labels.get(KARPENTER_GPU_MEMORY_MIB)))
        return product, (KARPENTER_GPU_NAME, gpu_name), "Karpenter"
    known = instance_type(labels.get(INSTANCE_TYPE, ""))
    if known is not None:
        return known[0], (INSTANCE_TYPE, labels[INSTANCE_TYPE]), "instance type"
    if AKS_ACCELERATOR in labels:  # AKS names the maker only; its instance type was not in the table
        return None, None, f"AKS {AKS_ACCELERATOR}={labels[AKS_ACCELERATOR]}"
    return None, None, ""


def _hint_for(labels: Mapping[str, str], hints: tuple[LabelProduct, ...]) -> LabelProduct | None:
    return next((hint for hint in hints if labels.get(hint.key) == hint.value), None)


def identify(labels: Mapping[str, str], annotations: Mapping[str, str] | None = None,
             hints: tuple[LabelProduct, ...] = ()) -> GpuIdentity:
    """The GPU product and memory per GPU a node's labels and annotations tell, in the order of the
    module docstring; memory None when none of them does."""
    hint = _hint_for(labels, hints)
    product, product_label, scheme = _product_of(labels, hint)
    unknown = GpuIdentity(product, None, "unknown", scheme, product_label=product_label)
    annotated = _annotated_gib(annotations or {})
    if annotated is not None:
        return replace(unknown, memory_gib=annotated, memory_source="annotation",
                       discovered_by=f"annotation {ANNOTATION_MEMORY_GIB}")
    for key, name in ((LABEL_MEMORY_MIB, "GFD"), (KARPENTER_GPU_MEMORY_MIB, "Karpenter")):
        mib = _positive_int(labels.get(key))
        if mib is not None:
            return replace(unknown, memory_gib=mib / 1024, memory_source="label", discovered_by=f"{name} {key}",
                           memory_label=key)
    if hint is not None and hint.memory_gib is not None:
        return replace(unknown, memory_gib=hint.memory_gib, memory_source="setting",
                       discovered_by=f"setting {hint.key}={hint.value}")
    known = product_memory_gib(product) if product else None
    if known is None:
        return unknown
    return replace(unknown, memory_gib=known,
                   memory_source="instance type" if scheme == "instance type" else "product table",
                   discovered_by=f"{scheme} {product_label[0]}" if product_label else scheme)


class IdentifiedGpus:
    """Nodes and node types alike: their GPU product and memory, read from what identified them."""

    identity: GpuIdentity

    @property
    def product(self) -> str | None:
        return self.identity.product

    @property
    def memory_gib(self) -> float | None:
        return self.identity.memory_gib


@dataclass(frozen=True)
class GpuNode(IdentifiedGpus):
    """What the planner needs to know about one node."""

    name: str
    labels: Mapping[str, str]
    gpus: int  # allocatable nvidia.com/gpu
    identity: GpuIdentity
    ready: bool
    unschedulable: bool
    taints: tuple[Mapping[str, Any], ...]
    mig_slices: Mapping[str, int]  # nvidia.com/mig-<profile> -> allocatable (mixed strategy)

    @property
    def memory_source(self) -> MemorySource:
        return self.identity.memory_source


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


def gpu_node(node: Mapping[str, Any], hints: tuple[LabelProduct, ...] = ()) -> GpuNode:
    """A GpuNode from a Node object as the API returns it (camelCase keys)."""
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels = metadata.get("labels") or {}
    allocatable = status.get("allocatable") or {}
    mig = {
        key.removeprefix(MIG_RESOURCE_PREFIX): _quantity_int(value)
        for key, value in allocatable.items()
        if key.startswith(MIG_RESOURCE_PREFIX)
    }
    return GpuNode(
        name=metadata.get("name", ""),
        labels=labels,
        gpus=_quantity_int(allocatable.get(GPU_RESOURCE, 0)),
        identity=identify(labels, metadata.get("annotations") or {}, hints),
        ready=_ready(status),
        unschedulable=bool(spec.get("unschedulable")),
        taints=tuple(spec.get("taints") or ()),
        mig_slices={profile: count for profile, count in mig.items() if count > 0},
    )
