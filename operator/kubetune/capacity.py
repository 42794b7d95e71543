"""Node types a cluster that grows can provision: from Karpenter NodePools, or from the chart's node groups
(cluster-autoscaler, GKE/EKS/AKS node pools). Pure.

With `capacity.mode: autoscale`, a job that fits no free GPU but fits one of these types gets its Job at
once, pinned to those types: its pending pod is what makes the autoscaler add the node.

Karpenter (karpenter.sh/v1 `NodePool`): the GPU instance types of `gpus.INSTANCE_TYPES` that AWS sells
and the pool's `spec.template.spec.requirements` allow (on the instance type, family, category and
Karpenter's GPU name, count and memory labels; requirements on other keys are not checked), with the
pool's template labels and taints, and `spec.limits["nvidia.com/gpu"]` bounding the nodes it may add.
A node group of the chart names its GPU product (or memory), GPUs per node, the most nodes it may have and
the labels its nodes carry (how the Job is pinned to it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.contract import GPU_RESOURCE
from kubetune.gpus import (
    INSTANCE_TYPE,
    INSTANCE_TYPES,
    KARPENTER_GPU_COUNT,
    KARPENTER_GPU_MEMORY_MIB,
    KARPENTER_GPU_NAME,
    KARPENTER_NAME_OF_PRODUCT,
    MAX_ANNOTATED_GPU_GIB,
    GpuIdentity,
    IdentifiedGpus,
    expression_matches,
    find_product,
    identify,
)

NODEPOOL_LABEL = "karpenter.sh/nodepool"
KARPENTER_INSTANCE_FAMILY = "karpenter.k8s.aws/instance-family"
KARPENTER_INSTANCE_CATEGORY = "karpenter.k8s.aws/instance-category"
# AWS instance type names are <family>.<size>; GCP and Azure names have no dot.
AWS_SEPARATOR = "."
# GPUs one node can have at most (the largest GPU instances have 16).
MAX_GPUS_PER_NODE = 16
# Nodes a node group may be given at most (a typo guard, not a Kubernetes limit).
MAX_GROUP_NODES = 10_000


@dataclass(frozen=True)
class NodeType(IdentifiedGpus):
    """A kind of GPU node the cluster can add."""

    source: str  # "NodePool gpu" or "node group a100-pool"
    identity: GpuIdentity
    gpus_per_node: int
    max_nodes: int | None  # None: no limit kubetune knows of
    pin: tuple[dict[str, Any], ...]  # matchExpressions (ANDed) that select nodes of this type
    labels: Mapping[str, str]  # labels its nodes will carry, where known
    taints: tuple[Mapping[str, Any], ...] = ()

    def describe(self) -> str:
        memory = "unknown" if self.memory_gib is None else f"{self.memory_gib:.0f} GiB"
        limit = "" if self.max_nodes is None else f", at most {self.max_nodes} node(s)"
        return f"{self.source}: {self.gpus_per_node}x {self.product or 'GPU'} ({memory}){limit}"


class CapacityError(ValueError):
    """A node group or NodePool kubetune cannot use; the message names the field."""


# ------------------------------------------------------------------------------------ Karpenter


def _aws_labels(instance: str, product: str, gpus: int) -> dict[str, str]:
    """The labels Karpenter gives a node of this AWS instance type (the ones requirements are checked on;
    GPU memory as the product table has it, which can differ by a few hundred MiB from EC2's figure)."""
    family = instance.split(AWS_SEPARATOR, 1)[0]
    known = find_product(product)
    return {
        INSTANCE_TYPE: instance,
        KARPENTER_INSTANCE_FAMILY: family,
        KARPENTER_INSTANCE_CATEGORY: family[0],
        KARPENTER_GPU_NAME: KARPENTER_NAME_OF_PRODUCT.get(product, ""),
        KARPENTER_GPU_COUNT: str(gpus),
        KARPENTER_GPU_MEMORY_MIB: str(known.memory_mib if known else 0),
    }


AWS_GPU_INSTANCES = tuple(
    _aws_labels(name, product, gpus)
    for name, (product, gpus) in INSTANCE_TYPES.items()
    if AWS_SEPARATOR in name and gpus > 0
)


def _allowed(requirements: Iterable[Mapping[str, Any]], labels: Mapping[str, str]) -> bool:
    """Every requirement on a key these labels have holds (requirements on other keys are not known here)."""
    return all(expression_matches(r, labels) for r in requirements if r.get("key") in labels)


def _gpu_limit(limits: Mapping[str, Any]) -> int | None:
    raw = limits.get(GPU_RESOURCE)
    return int(str(raw)) if raw is not None and str(raw).isdigit() else None


def nodepool_types(nodepool: Mapping[str, Any]) -> list[NodeType]:
    """The GPU node types a karpenter.sh/v1 NodePool can launch on AWS (one per instance type)."""
    name = str((nodepool.get("metadata") or {}).get("name", ""))
    spec = nodepool.get("spec") or {}
    template = spec.get("template") or {}
    template_labels = {str(k): str(v) for k, v in ((template.get("metadata") or {}).get("labels") or {}).items()}
    template_spec = template.get("spec") or {}
    requirements = [r for r in template_spec.get("requirements") or () if isinstance(r, Mapping)]
    taints = tuple(template_spec.get("taints") or ())
    gpu_limit = _gpu_limit(spec.get("limits") or {})
    found = []
    for instance in AWS_GPU_INSTANCES:
        if not _allowed(requirements, instance):
            continue
        gpus = int(instance[KARPENTER_GPU_COUNT])
        labels = {**template_labels, **instance, NODEPOOL_LABEL: name}
        found.append(NodeType(
            source=f"NodePool {name}",
            identity=identify(labels),
            gpus_per_node=gpus,
            max_nodes=None if gpu_limit is None else gpu_limit // gpus,
            pin=({"key": NODEPOOL_LABEL, "operator": "In", "values": [name]},
                 {"key": INSTANCE_TYPE, "operator": "In", "values": [instance[INSTANCE_TYPE]]}),
            labels=labels,
            taints=taints,
        ))
    return found


def nodepools_types(nodepools: Iterable[Mapping[str, Any]]) -> list[NodeType]:
    return [node_type for nodepool in nodepools for node_type in nodepool_types(nodepool)]


# ------------------------------------------------------------------------------------ node groups


def _positive_int(value: Any, where: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise CapacityError(f"{where}: must be a whole number from 1 to {high}")
    return value


def node_group(item: Any, where: str) -> NodeType:
    """A node group of the chart's capacity.nodeGroups:
    {name, gpuProduct | memoryGiB, gpusPerNode, maxNodes?, nodeSelector: {label: value}}."""
    if not isinstance(item, Mapping):
        raise CapacityError(f"{where}: must be an object with name, gpuProduct, gpusPerNode and nodeSelector")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise CapacityError(f"{where}.name: must be a non-empty string")
    selector = item.get("nodeSelector")
    if not isinstance(selector, Mapping) or not selector or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise CapacityError(f"{where}.nodeSelector: give the labels (string -> string) the group's nodes carry; "
                            "the Job is pinned to them")
    product, memory = item.get("gpuProduct"), item.get("memoryGiB")
    if product is not None and (not isinstance(product, str) or find_product(product) is None):
        raise CapacityError(f"{where}.gpuProduct: {product!r} is not a GPU product kubetune knows; give memoryGiB")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int | float)
                               or not 0 < memory <= MAX_ANNOTATED_GPU_GIB):
        raise CapacityError(f"{where}.memoryGiB: must be GiB per GPU above 0 and at most {MAX_ANNOTATED_GPU_GIB:g}")
    if product is None and memory is None:
        raise CapacityError(f"{where}: give gpuProduct or memoryGiB")
    known = find_product(product) if product else None
    identity = GpuIdentity(known.label if known else None, float(memory) if memory is not None else (
        known.memory_gib if known else None), "setting", f"node group {name}")
    max_nodes = item.get("maxNodes")
    return NodeType(
        source=f"node group {name}",
        identity=identity,
        gpus_per_node=_positive_int(item.get("gpusPerNode"), f"{where}.gpusPerNode", MAX_GPUS_PER_NODE),
        max_nodes=None if max_nodes is None else _positive_int(max_nodes, f"{where}.maxNodes", MAX_GROUP_NODES),
        pin=tuple({"key": key, "operator": "In", "values": [value]} for key, value in sorted(selector.items())),
        labels=dict(selector),
    )


def node_groups(items: Any, where: str) -> tuple[NodeType, ...]:
    if not isinstance(items, list):
        raise CapacityError(f"{where}: must be a list of node groups")
    return tuple(node_group(item, f"{where}[{index}]") for index, item in enumerate(items))
