"""GPU products and what a Node object says about its GPUs."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.gpus import (
    GKE_ACCELERATORS,
    INSTANCE_TYPES,
    KARPENTER_GPU_NAMES,
    LabelProduct,
    find_product,
    gpu_node,
    identify,
    instance_type,
    product_memory_gib,
)


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


A100_80 = "NVIDIA-A100-SXM4-80GB"


def node_with(labels: dict[str, str], annotations: dict[str, str] | None = None, gpus: int = 8) -> dict[str, Any]:
    return {"metadata": {"name": "n", "labels": labels, "annotations": annotations or {}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


# Node labels as each scheme writes them (GFD, GKE, EKS/Karpenter, AKS, the instance type alone, none):
# labels, annotations -> product, GiB per GPU, memory source, memory label, product label.
SCHEME_CASES: list[tuple[Any, ...]] = [
        ({"nvidia.com/gpu.product": A100_80, "nvidia.com/gpu.memory": "81920", "nvidia.com/gpu.count": "8"}, {},
         A100_80, 80.0, "label", "nvidia.com/gpu.memory", ("nvidia.com/gpu.product", A100_80)),
        ({"nvidia.com/gpu.product": "NVIDIA-L4"}, {},
         "NVIDIA-L4", 22.49, "product table", None, ("nvidia.com/gpu.product", "NVIDIA-L4")),
        ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb", "nvidia.com/gpu.memory": "19968"}, {},
         "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb", 19.5, "label", "nvidia.com/gpu.memory",
         ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb")),
        ({"nvidia.com/gpu.memory": "not-a-number", "nvidia.com/gpu.product": "NVIDIA-L4"}, {},
         "NVIDIA-L4", 22.49, "product table", None, ("nvidia.com/gpu.product", "NVIDIA-L4")),
        ({"nvidia.com/gpu.product": "ACME-GPU-9000"}, {},
         "ACME-GPU-9000", None, "unknown", None, ("nvidia.com/gpu.product", "ACME-GPU-9000")),
        ({"cloud.google.com/gke-accelerator": "nvidia-l4"}, {},
         "NVIDIA-L4", 22.49, "product table", None, ("cloud.google.com/gke-accelerator", "nvidia-l4")),
        ({"cloud.google.com/gke-accelerator": "nvidia-h100-80gb", "node.kubernetes.io/instance-type": "a3-highgpu-8g"},
         {}, "NVIDIA-H100-80GB-HBM3", 79.65, "product table", None,
         ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb")),
        ({"cloud.google.com/gke-accelerator": "nvidia-tesla-a100", "cloud.google.com/gke-gpu-partition-size": "1g.5gb"},
         {}, "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", 4.66, "product table", None,
         ("cloud.google.com/gke-accelerator", "nvidia-tesla-a100")),
        ({"karpenter.k8s.aws/instance-gpu-name": "a100", "karpenter.k8s.aws/instance-gpu-memory": "81920",
          "karpenter.k8s.aws/instance-gpu-count": "8", "node.kubernetes.io/instance-type": "p4de.24xlarge"}, {},
         A100_80, 80.0, "label", "karpenter.k8s.aws/instance-gpu-memory",
         ("karpenter.k8s.aws/instance-gpu-name", "a100")),
        ({"karpenter.k8s.aws/instance-gpu-name": "a100", "karpenter.k8s.aws/instance-gpu-memory": "40960"}, {},
         "NVIDIA-A100-SXM4-40GB", 40.0, "label", "karpenter.k8s.aws/instance-gpu-memory",
         ("karpenter.k8s.aws/instance-gpu-name", "a100")),
        ({"karpenter.k8s.aws/instance-gpu-name": "l4"}, {},
         "NVIDIA-L4", 22.49, "product table", None, ("karpenter.k8s.aws/instance-gpu-name", "l4")),
        ({"kubernetes.azure.com/accelerator": "nvidia", "node.kubernetes.io/instance-type": "Standard_NC24ads_A100_v4"},
         {}, "NVIDIA-A100-80GB-PCIe", 80.0, "instance type", None,
         ("node.kubernetes.io/instance-type", "Standard_NC24ads_A100_v4")),
        ({"kubernetes.azure.com/accelerator": "nvidia", "node.kubernetes.io/instance-type": "Standard_NV36ads_A10_v5"},
         {}, None, None, "unknown", None, None),
        ({"node.kubernetes.io/instance-type": "g6e.12xlarge"}, {},
         "NVIDIA-L40S", 44.99, "instance type", None, ("node.kubernetes.io/instance-type", "g6e.12xlarge")),
        ({"node.kubernetes.io/instance-type": "a3-ultragpu-8g"}, {},
         "NVIDIA-H200", 140.4, "instance type", None, ("node.kubernetes.io/instance-type", "a3-ultragpu-8g")),
        ({"node.kubernetes.io/instance-type": "m5.large"}, {}, None, None, "unknown", None, None),
        ({}, {}, None, None, "unknown", None, None),
        ({}, {"kubetune.io/gpu-memory-gib": "94"}, None, 94.0, "annotation", None, None),
        ({"node.kubernetes.io/instance-type": "g5.xlarge"}, {"kubetune.io/gpu-memory-gib": "20"},
         "NVIDIA-A10G", 20.0, "annotation", None, ("node.kubernetes.io/instance-type", "g5.xlarge")),
        ({}, {"kubetune.io/gpu-memory-gib": "lots"}, None, None, "unknown", None, None),
        ({}, {"kubetune.io/gpu-memory-gib": "80000"}, None, None, "unknown", None, None),
]


@pytest.mark.parametrize(
    ("labels", "annotations", "expected"),
    [(case[0], case[1], case[2:]) for case in SCHEME_CASES],
    ids=[
        "GFD: product and memory labels, memory from the label",
        "GFD without the memory label: the product table",
        "GFD single MIG strategy: the slice's memory",
        "GFD with a broken memory label falls back to the product table",
        "GFD with a product kubetune does not know: unknown, not guessed",
        "GKE accelerator label",
        "GKE accelerator label wins over the instance type",
        "GKE MIG partition size: the slice's memory",
        "Karpenter GPU name and memory labels: memory from the label",
        "Karpenter a100 with 40 GiB is the 40 GB A100",
        "Karpenter GPU name without memory: the product table",
        "AKS accelerator label and an instance type in the table",
        "AKS accelerator label and an instance type not in the table: unknown",
        "AWS instance type alone",
        "GCP instance type alone",
        "a CPU instance type: unknown",
        "no labels at all: unknown, not 15 GiB",
        "the kubetune.io annotation tells the memory",
        "the annotation wins over the instance table",
        "an annotation that is not a number is ignored",
        "an annotation larger than any GPU is ignored",
    ],
)
def test_gpu_identity_in_each_label_scheme(
    labels: dict[str, str], annotations: dict[str, str], expected: tuple[Any, ...]
) -> None:
    identity = gpu_node(node_with(labels, annotations)).identity
    memory = None if identity.memory_gib is None else round(identity.memory_gib, 2)
    assert (identity.product, memory, identity.memory_source, identity.memory_label,
            identity.product_label) == expected


@pytest.mark.parametrize(
    ("hint", "product", "gib", "source"),
    [
        (LabelProduct("pool", "big", product="NVIDIA-H100-80GB-HBM3"), "NVIDIA-H100-80GB-HBM3", 79.65, "product table"),
        (LabelProduct("pool", "big", memory_gib=48.0), None, 48.0, "setting"),
        (LabelProduct("pool", "small", memory_gib=48.0), None, None, "unknown"),
    ],
    ids=["a label mapped to a product", "a label mapped to a memory", "a mapping for another label does not apply"],
)
def test_the_operator_setting_maps_labels_to_products(
    hint: LabelProduct, product: str | None, gib: float | None, source: str
) -> None:
    identity = identify({"pool": "big"}, {}, (hint,))
    memory = None if identity.memory_gib is None else round(identity.memory_gib, 2)
    assert (identity.product, memory, identity.memory_source) == (product, gib, source)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("p4d.24xlarge", ("NVIDIA-A100-SXM4-40GB", 8)), ("P5.48XLARGE", ("NVIDIA-H100-80GB-HBM3", 8)),
     ("g5.12xlarge", ("NVIDIA-A10G", 4)), ("g6.xlarge", ("NVIDIA-L4", 1)), ("a2-ultragpu-4g", (A100_80, 4)),
     ("g2-standard-96", ("NVIDIA-L4", 8)), ("Standard_ND96isr_H200_v5", ("NVIDIA-H200", 8)),
     ("standard_nc80adis_h100_v5", ("NVIDIA-H100-NVL", 2)), ("g4dn.48xlarge", None), ("m7i.large", None)],
    ids=str,
)
def test_instance_table(name: str, expected: tuple[str, int] | None) -> None:
    assert instance_type(name) == expected


def test_every_instance_and_cloud_label_names_a_product_in_the_table() -> None:
    products = {*(p for p, _ in INSTANCE_TYPES.values()), *GKE_ACCELERATORS.values(),
                *(p for names in KARPENTER_GPU_NAMES.values() for p in names)}
    assert [p for p in products if find_product(p) is None] == []


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
