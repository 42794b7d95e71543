"""GPU-fit planner: does a FineTuneJob fit the cluster's GPUs, where, and if not, what would fit.

`plan(spec, estimate, nodes, pods)` -> Placement (nodes, GPU, headroom, the node affinity the Job
must carry), Wait (it fits once busy GPUs free up) or NoFit (a reason, needed vs available GiB,
and re-estimated spec changes that do fit a node that exists, least change to the outcome first).
Pods are plain dicts as the API server returns them; nodes are too, or GpuNodes already parsed from
them (the operator's node index keeps parsed ones, so a burst does not parse every node per job). Pure.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetune.api import FineTuneJobSpec, PlacementStatus, Reason, Toleration
from kubetune.capacity import NodeType
from kubetune.contract import GPU_RESOURCE
from kubetune.estimate import VramEstimate, compute_dtype_of, estimate
from kubetune.gpus import (
    ANNOTATION_MEMORY_GIB,
    DEFAULT_SAFETY_MARGIN,
    HOSTNAME_LABEL,
    PRODUCTS,
    GpuNode,
    expression_matches,
    find_product,
    gpu_node,
)
from kubetune.presets import effective_spec
from kubetune.validation import cross_field_problems

__all__ = ["DEFAULT_SAFETY_MARGIN", "NoFit", "Placement", "PlanResult", "Provision", "Suggestion", "Wait", "plan"]

TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
# Taint effects that keep a pod off a node unless tolerated (PreferNoSchedule only discourages).
BLOCKING_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
# The trainer Job tolerates the GPU taint itself (GPU node pools are commonly tainted with it).
IMPLICIT_TOLERATIONS = (Toleration(key=GPU_RESOURCE, operator="Exists"),)
# Messages name at most this many nodes; kubectl describe must stay readable on big clusters.
MAX_NAMED_NODES = 5
# Placement.nodes lists at most this many candidate nodes (status objects stay small).
MAX_PLACEMENT_NODES = 16
# Shortest sequence length a suggestion proposes: shorter cuts most instruction data mid-answer.
MIN_SUGGESTED_SEQ_LENGTH = 256
# GPU counts per node that suggestions try (the sizes GPU nodes come in).
SUGGESTED_GPU_COUNTS = (1, 2, 4, 8, 16)
MIB_PER_GIB = 1024
# The largest GPU kubetune knows: a job that needs more per GPU fits no node of unknown memory either.
LARGEST_GPU_GIB = max(product.memory_gib for product in PRODUCTS)
# Where a NoFit message turns from the situation to the changes that would fit.
SUGGESTIONS_INTRO = " Changes that fit: "


# --------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Placement:
    nodes: tuple[str, ...]
    gpu_product: str | None
    gpu_memory_gib: float | None
    headroom_gib: float  # GPU memory minus the estimate (the safety margin is part of it)
    node_affinity: dict[str, Any]  # core/v1 NodeAffinity the Job must carry ({} for gpus 0)

    def to_status(self) -> PlacementStatus:
        return PlacementStatus(nodes=list(self.nodes), gpu_product=self.gpu_product,
                               gpu_memory_gib=self.gpu_memory_gib)


@dataclass(frozen=True)
class Wait:
    reason: Reason
    message: str


@dataclass(frozen=True)
class Suggestion:
    description: str
    spec_patch: dict[str, Any]  # wire-form merge patch of spec
    estimate: VramEstimate


@dataclass(frozen=True)
class NoFit:
    reason: Reason
    message: str
    needed_gib: float
    best_available_gib: float | None
    suggestions: tuple[Suggestion, ...]


@dataclass(frozen=True)
class Provision:
    """No free GPU fits, but node types the cluster can add do: the Job is created pinned to them."""

    node_types: tuple[NodeType, ...]
    gpu_product: str | None
    gpu_memory_gib: float
    headroom_gib: float
    node_affinity: dict[str, Any]
    message: str

    def to_status(self) -> PlacementStatus:
        return PlacementStatus(gpu_product=self.gpu_product, gpu_memory_gib=round(self.gpu_memory_gib, 2),
                               node_types=[t.describe() for t in self.node_types[:MAX_PLACEMENT_NODES]])


PlanResult = Placement | Wait | NoFit | Provision


# ------------------------------------------------------------------------------------ node checks


def _container_gpus(container: Mapping[str, Any]) -> int:
    resources = container.get("resources")
    if not resources:
        return 0
    value = (resources.get("limits") or {}).get(GPU_RESOURCE) or (resources.get("requests") or {}).get(GPU_RESOURCE)
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """nvidia.com/gpu a pod holds: its containers' sum, or its largest init container if more."""
    spec = pod.get("spec") or {}
    total = 0
    for container in spec.get("containers") or ():
        total += _container_gpus(container)
    init_containers = spec.get("initContainers")
    if init_containers:
        total = max(total, *(_container_gpus(c) for c in init_containers))
    return total


def gpus_in_use(pods: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """node name -> GPUs requested by its non-terminal pods."""
    used: Counter[str] = Counter()
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (pod.get("status") or {}).get("phase") not in TERMINAL_POD_PHASES:
            count = pod_gpus(pod)
            if count:
                used[node] += count
    return used


def tolerated(taint: Mapping[str, Any], tolerations: Iterable[Toleration]) -> bool:
    for toleration in tolerations:
        key_matches = toleration.key is None or toleration.key == taint.get("key")
        value_matches = toleration.operator == "Exists" or (toleration.value or "") == (taint.get("value") or "")
        effect_matches = toleration.effect is None or toleration.effect == taint.get("effect")
        if key_matches and value_matches and effect_matches:
            return True
    return False


def _term_matches(term: Mapping[str, Any], node: GpuNode) -> bool:
    fields = {"metadata.name": node.name}
    return all(expression_matches(e, node.labels) for e in term.get("matchExpressions") or ()) and all(
        expression_matches(e, fields) for e in term.get("matchFields") or ()
    )


def affinity_matches(affinity: Mapping[str, Any] | None, node: GpuNode) -> bool:
    """Whether a node satisfies a core/v1 Affinity's required node affinity (terms are ORed)."""
    required = ((affinity or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    terms = (required or {}).get("nodeSelectorTerms") or []
    return not terms or any(_term_matches(term, node) for term in terms)


def _same_product(wanted: str, actual: str | None) -> bool:
    if actual is None:
        return False
    if wanted.lower() == actual.lower():
        return True
    known_wanted, known_actual = find_product(wanted), find_product(actual)
    return known_wanted is not None and known_wanted == known_actual


def unusable_because(node: GpuNode, spec: FineTuneJobSpec) -> str | None:
    """Why the job's pods could never run on this node whatever its memory; None if they can."""
    resources = spec.resources
    if not node.ready:
        return "NotReady"
    if node.unschedulable:
        return "cordoned"
    tolerations = (*IMPLICIT_TOLERATIONS, *(resources.tolerations or ()))
    for taint in node.taints:
        if taint.get("effect") in BLOCKING_TAINT_EFFECTS and not tolerated(taint, tolerations):
            return f"taint {taint.get('key')}={taint.get('value', '')}:{taint.get('effect')} not tolerated"
    selector = resources.node_selector or {}
    if any(node.labels.get(key) != value for key, value in selector.items()):
        return "spec.resources.nodeSelector does not match"
    if not affinity_matches(resources.affinity, node):
        return "spec.resources.affinity does not match"
    return None


def trains_in_bfloat16(spec: FineTuneJobSpec) -> bool:
    return compute_dtype_of(spec) == "bfloat16"


def lacks_bfloat16(node: GpuNode | NodeType) -> bool:
    """A GPU known to predate bfloat16 (T4, V100): the trainer falls back to float16 there.
    Unknown products are taken to have it."""
    product = find_product(node.product) if node.product else None
    return product is not None and not product.has_bfloat16


def _wrong_product(node: GpuNode, spec: FineTuneJobSpec) -> bool:
    resources = spec.resources
    if resources.gpu_product is not None and not _same_product(resources.gpu_product, node.product):
        return True
    minimum = resources.min_gpu_memory_gib
    return minimum is not None and node.memory_gib is not None and node.memory_gib < minimum


# ------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Cluster:
    """GPU nodes the job's pods may run on (whatever their memory), with their free GPUs."""

    usable: tuple[GpuNode, ...]
    free: Mapping[str, int]
    gpu_node_count: int
    excluded: Counter[str]  # why the other GPU nodes cannot be used -> how many
    products: Counter[str]  # products of usable nodes with gpuProduct left out of the filter
    mig_only: tuple[str, ...]  # nodes that offer only MIG slices (mixed strategy)
    unknown: tuple[GpuNode, ...] = ()  # nodes the pods may run on whose GPU memory nobody told


NodeLike = GpuNode | Mapping[str, Any]  # parsed, or a Node object as the API returns it


def survey(spec: FineTuneJobSpec, nodes: Iterable[NodeLike], pods: Iterable[Mapping[str, Any]]) -> Cluster:
    used = gpus_in_use(pods)
    usable, excluded, products, mig_only, unknown = [], Counter[str](), Counter[str](), [], []
    gpu_nodes = 0
    for raw in nodes:
        node = raw if isinstance(raw, GpuNode) else gpu_node(raw)
        if node.gpus <= 0:
            if node.mig_slices:
                mig_only.append(node.name)
            continue
        gpu_nodes += 1
        problem = unusable_because(node, spec)
        if problem is not None:
            excluded[problem] += 1
            continue
        products[_group_name(node)] += 1
        if _wrong_product(node, spec):
            excluded["other GPU product"] += 1
            continue
        if node.memory_gib is None:
            unknown.append(node)
            continue
        usable.append(node)
    free = {node.name: max(0, node.gpus - used.get(node.name, 0)) for node in usable}
    return Cluster(tuple(usable), free, gpu_nodes, excluded, products, tuple(mig_only), tuple(unknown))


def gib(node: GpuNode) -> float:
    """GPU memory of a node the planner uses (survey keeps nodes of unknown memory apart)."""
    return node.memory_gib or 0.0


UNLABELLED_GROUP = "GPU of"  # groups nodes without a product name; gpuProduct cannot name them


def _group_name(node: GpuNode) -> str:
    if node.product:
        return node.product
    if node.memory_gib is None:
        return f"{UNLABELLED_GROUP} unknown memory"
    return f"{UNLABELLED_GROUP} {gib(node):.0f} GiB"


def _names(nodes: Iterable[str]) -> str:
    listed = sorted(nodes)
    more = f" and {len(listed) - MAX_NAMED_NODES} more" if len(listed) > MAX_NAMED_NODES else ""
    return ", ".join(listed[:MAX_NAMED_NODES]) + more


def required_mib(per_gpu_gib: float, safety_margin: float) -> int:
    """GPU memory, in MiB, a GPU needs for the estimate plus the safety margin."""
    return math.ceil(per_gpu_gib / (1 - safety_margin) * MIB_PER_GIB)


def _node_affinity(group: list[GpuNode], needed_mib: int, by_product: bool) -> dict[str, Any]:
    """The node affinity that keeps the pods on GPUs like the chosen ones: a Gt on the label that holds
    GPU memory (GFD's or Karpenter's) where all of them have the same, the label that marks the product,
    else their host names."""
    expressions: list[dict[str, Any]] = []
    memory_labels = {node.identity.memory_label for node in group}
    memory_label = memory_labels.pop() if len(memory_labels) == 1 else None
    if memory_label is not None:
        expressions.append({"key": memory_label, "operator": "Gt", "values": [str(needed_mib - 1)]})
    product_keys = {node.identity.product_label[0] if node.identity.product_label else None for node in group}
    product_key = product_keys.pop() if len(product_keys) == 1 else None
    if product_key is not None and (by_product or not expressions):
        values = sorted({node.labels[product_key] for node in group})
        expressions.append({"key": product_key, "operator": "In", "values": values})
    if not expressions:
        hostnames = sorted(node.labels.get(HOSTNAME_LABEL, node.name) for node in group)
        expressions.append({"key": HOSTNAME_LABEL, "operator": "In", "values": hostnames})
    terms = [{"matchExpressions": expressions}]
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}


@dataclass(frozen=True)
class _Fit:
    """The outcome of fitting one estimate: a placement, a wait, or why not (with the best there is)."""

    result: Placement | Wait | None
    reason: Reason | None = None
    detail: str = ""
    best_gib: float | None = None


@dataclass(frozen=True)
class Need:
    """GPU memory the job needs per GPU; on GPUs without bfloat16, what its float16 fallback needs."""

    per_gpu_gib: float
    without_bfloat16_gib: float | None = None

    def on(self, node: GpuNode | NodeType) -> float:
        if self.without_bfloat16_gib is not None and lacks_bfloat16(node):
            return self.without_bfloat16_gib
        return self.per_gpu_gib


def need_of(spec: FineTuneJobSpec, vram: VramEstimate, cluster: Cluster) -> Need:
    """The need; re-estimated in float16 only when the job trains in bfloat16 and some GPU lacks it."""
    if not trains_in_bfloat16(spec) or not any(lacks_bfloat16(node) for node in cluster.usable):
        return Need(vram.per_gpu_gib)
    change: dict[str, Any] = {"model": {"dtype": "float16"}}
    if spec.method.quantization is not None:
        change["method"] = {"quantization": {"computeDtype": "float16"}}
    half = _patched(spec, change)
    return Need(vram.per_gpu_gib, estimate(half).per_gpu_gib if half is not None else None)


def _fit(spec: FineTuneJobSpec, need: Need, cluster: Cluster, margin: float) -> _Fit:
    resources = spec.resources
    if resources.gpus == 0:
        return _Fit(Placement((), None, None, 0.0, {}))
    if not cluster.usable:
        return _Fit(None, _no_usable_reason(spec, cluster))
    best = max(cluster.usable, key=gib)
    memory_fits = [n for n in cluster.usable if gib(n) * (1 - margin) >= need.on(n)]
    if not memory_fits:
        return _Fit(None, Reason.INSUFFICIENT_GPU_MEMORY, best_gib=gib(best))
    enough_gpus = [n for n in memory_fits if n.gpus >= resources.gpus]
    if not enough_gpus:
        most = max(n.gpus for n in memory_fits)
        return _Fit(None, Reason.NOT_ENOUGH_GPUS_PER_NODE, f"the nodes whose GPUs fit have at most {most} GPUs",
                    gib(best))
    groups: dict[str, list[GpuNode]] = defaultdict(list)
    for node in enough_gpus:
        groups[_group_name(node)].append(node)
    big_enough = {name: group for name, group in groups.items() if len(group) >= resources.nodes}
    if not big_enough:
        largest = max(len(group) for group in groups.values())
        return _Fit(None, Reason.NOT_ENOUGH_NODES,
                    f"at most {largest} node(s) of one GPU product have {resources.gpus} GPUs that fit",
                    gib(best))

    # Best fit: the smallest GPUs that hold the job, so that larger GPUs stay free for larger jobs.
    for _, group in sorted(big_enough.items(), key=lambda item: (gib(item[1][0]), item[0])):
        free = [n for n in group if cluster.free[n.name] >= resources.gpus]
        if len(free) >= resources.nodes:
            free.sort(key=lambda n: (cluster.free[n.name], n.name))
            return _Fit(Placement(
                nodes=tuple(n.name for n in free[:MAX_PLACEMENT_NODES]),
                gpu_product=group[0].product,
                gpu_memory_gib=round(gib(group[0]), 2),
                headroom_gib=round(gib(group[0]) - need.on(group[0]), 2),
                node_affinity=_node_affinity(group, required_mib(need.on(group[0]), margin),
                                             by_product=resources.nodes > 1
                                             or resources.gpu_product is not None),
            ))
    return _Fit(_wait(spec, big_enough, cluster))


def _wait(spec: FineTuneJobSpec, groups: Mapping[str, list[GpuNode]], cluster: Cluster) -> Wait:
    nodes = [n for group in groups.values() for n in group]
    busy = [(n, n.gpus - cluster.free[n.name]) for n in nodes if cluster.free[n.name] < n.gpus]
    where = _names(f"{n.name} ({count}/{n.gpus} busy)" for n, count in busy)
    ready = sum(1 for n in nodes if cluster.free[n.name] >= spec.resources.gpus)
    return Wait(
        Reason.WAITING_FOR_GPUS,
        f"needs {spec.resources.gpus} free GPU(s) on each of {spec.resources.nodes} node(s); "
        f"{ready} of the {len(nodes)} node(s) that fit have them free now; "
        f"{sum(count for _, count in busy)} of the {sum(n.gpus for n in nodes)} GPUs that fit are in use "
        f"on {len(busy)} node(s): {where}. Waiting for them to free up.",
    )


def _no_usable_reason(spec: FineTuneJobSpec, cluster: Cluster) -> Reason:
    if cluster.gpu_node_count == 0:
        return Reason.NO_GPU_NODES
    wrong_product = cluster.excluded.get("other GPU product", 0)
    if wrong_product and spec.resources.gpu_product is not None:
        return Reason.NO_MATCHING_GPU_PRODUCT
    if wrong_product:
        return Reason.INSUFFICIENT_GPU_MEMORY
    return Reason.NO_GPU_NODES


# ------------------------------------------------------------------------ node types to provision


def type_unusable_because(node_type: NodeType, spec: FineTuneJobSpec) -> str | None:
    """Why the job's pods could never run on a node of this type; None if they can (as far as known:
    spec.resources.affinity is not checked against node types)."""
    resources = spec.resources
    tolerations = (*IMPLICIT_TOLERATIONS, *(resources.tolerations or ()))
    for taint in node_type.taints:
        if taint.get("effect") in BLOCKING_TAINT_EFFECTS and not tolerated(taint, tolerations):
            return f"taint {taint.get('key')}={taint.get('value', '')}:{taint.get('effect')} not tolerated"
    if any(node_type.labels.get(key) != value for key, value in (resources.node_selector or {}).items()):
        return "spec.resources.nodeSelector does not match"
    if resources.gpu_product is not None and not _same_product(resources.gpu_product, node_type.product):
        return "other GPU product"
    minimum = resources.min_gpu_memory_gib
    if minimum is not None and (node_type.memory_gib or 0.0) < minimum:
        return "other GPU product"
    return None


def _type_fits(node_type: NodeType, spec: FineTuneJobSpec, need: Need, margin: float) -> bool:
    resources = spec.resources
    return (type_unusable_because(node_type, spec) is None and node_type.memory_gib is not None
            and node_type.memory_gib * (1 - margin) >= need.on(node_type)
            and node_type.gpus_per_node >= resources.gpus
            and (node_type.max_nodes is None or node_type.max_nodes >= resources.nodes))


def _provision(spec: FineTuneJobSpec, need: Need, node_types: tuple[NodeType, ...], margin: float) -> Provision | None:
    """The node types with the smallest GPUs that hold the job (best fit, as for nodes), pinned all at once
    so that the autoscaler may pick among them; None when none holds it."""
    if spec.resources.gpus == 0:
        return None
    fitting = [t for t in node_types if _type_fits(t, spec, need, margin)]
    if not fitting:
        return None
    smallest = min(t.memory_gib or 0.0 for t in fitting)
    chosen = tuple(t for t in fitting if t.memory_gib == smallest)
    terms = [{"matchExpressions": [dict(expression) for expression in t.pin]} for t in chosen]
    described = "; ".join(t.describe() for t in chosen[:MAX_NAMED_NODES])
    more = f" and {len(chosen) - MAX_NAMED_NODES} more" if len(chosen) > MAX_NAMED_NODES else ""
    return Provision(
        node_types=chosen,
        gpu_product=chosen[0].product,
        gpu_memory_gib=smallest,
        headroom_gib=round(smallest - need.on(chosen[0]), 2),
        node_affinity={"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}},
        message=(f"no free GPU fits it now; node types the cluster can add do: {described}{more}. The Job is "
                 "created pinned to them so that the autoscaler adds a node; waiting for the node to join"),
    )


def _provisionable_note(node_types: tuple[NodeType, ...], spec: FineTuneJobSpec) -> str:
    if not node_types:
        return ""
    listed = "; ".join(t.describe() for t in node_types[:MAX_NAMED_NODES])
    more = f" and {len(node_types) - MAX_NAMED_NODES} more" if len(node_types) > MAX_NAMED_NODES else ""
    return (f" None of the node types the cluster can add holds {spec.resources.gpus} GPU(s) per node of that "
            f"size either: {listed}{more}.")


# ------------------------------------------------------------------------------------ suggestions


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def _patched(spec: FineTuneJobSpec, patch: Mapping[str, Any]) -> FineTuneJobSpec | None:
    """The spec with the patch applied, or None when a field leaves its bound (e.g. more accumulation steps
    than the API allows)."""
    try:
        return FineTuneJobSpec.model_validate(merge_patch(spec.to_wire(), patch))
    except ValidationError:
        return None


def _acceptable(spec: FineTuneJobSpec, patch: Mapping[str, Any]) -> FineTuneJobSpec | None:
    """The patched spec, or None when kubetune would refuse it (a field beyond its bound, or a cross-field
    rule such as qlora with fsdp): such a change is never suggested."""
    variant = _patched(spec, patch)
    return None if variant is None or cross_field_problems(variant) else variant


Variant = tuple[str, dict[str, Any]]
Fits = Callable[[FineTuneJobSpec, VramEstimate], bool]


def _halvings(value: int, floor: int) -> Iterator[int]:
    while value // 2 >= floor:
        value //= 2
        yield value


def _variants(spec: FineTuneJobSpec, max_node_gpus: int) -> Iterator[list[Variant]]:
    """Groups of alternative changes, least change to the training outcome first; a group's first
    fitting alternative is suggested."""
    training, resources, method = spec.training, spec.resources, spec.method
    if not training.gradient_checkpointing:
        yield [("turn on gradient checkpointing (about 30% slower, same result)",
                {"training": {"gradientCheckpointing": True}})]
    if training.optimizer in ("adamw_torch", "adafactor"):
        yield [("use the paged 8-bit AdamW optimizer (same result within noise)",
                {"training": {"optimizer": "paged_adamw_8bit"}})]
    sequences_per_step = training.gradient_accumulation_steps * training.batch_size
    yield [
        (f"lower the batch to {size} and accumulate {sequences_per_step // size} passes (same effective batch, "
         "slower)", {"training": {"batchSize": size, "gradientAccumulationSteps": sequences_per_step // size}})
        for size in _halvings(training.batch_size, 1)
    ]
    world = resources.gpus * resources.nodes
    yield [_gpu_count_variant(gpus, resources.nodes)
           for gpus in SUGGESTED_GPU_COUNTS
           if gpus <= max_node_gpus and (gpus != resources.gpus or (world >= 2 and training.strategy != "fsdp"))]
    if not (method.type == "qlora" and method.quantization is not None and method.quantization.bits == 4):
        yield [("fine-tune with QLoRA 4-bit (quantized base weights; slightly lower quality)",
                {"method": {"type": "qlora", "quantization": {"bits": 4}}})]
    yield [(f"shorten maxSeqLength to {length} (longer examples are truncated)",
            {"training": {"maxSeqLength": length}})
           for length in _halvings(training.max_seq_length, MIN_SUGGESTED_SEQ_LENGTH)]


def _gpu_count_variant(gpus: int, nodes: int) -> Variant:
    if gpus * nodes >= 2:
        return f"shard with fsdp over {gpus} GPU(s) per node", {"resources": {"gpus": gpus},
                                                                "training": {"strategy": "fsdp"}}
    return "train on a single GPU", {"resources": {"gpus": gpus}, "training": {"strategy": "auto"}}


def _first_fit(
    spec: FineTuneJobSpec, base: Mapping[str, Any], alternatives: list[Variant], fits: Fits
) -> tuple[dict[str, Any], VramEstimate] | None:
    """The first alternative that fits, applied on top of the base patch, with its estimate."""
    for _, change in alternatives:
        patch = merge_patch(base, change)
        variant = _acceptable(spec, patch)
        if variant is None:
            continue
        variant_estimate = estimate(variant)
        if fits(variant, variant_estimate):
            return patch, variant_estimate
    return None


def _product_variants(spec: FineTuneJobSpec, cluster: Cluster) -> list[Variant]:
    """Another GPU product the cluster has, for a job pinned to one (it changes nothing about the training);
    the smallest first, so a suggestion leaves the largest GPUs to jobs that need them."""
    pinned = spec.resources.gpu_product
    if pinned is None:
        return []
    named = [name for name in cluster.products
             if not name.startswith(UNLABELLED_GROUP) and not _same_product(pinned, name)]
    by_memory = sorted(named, key=lambda name: (_product_memory_gib(name), name))
    return [(f"set gpuProduct: {name} ({cluster.products[name]} node(s) here)",
             {"resources": {"gpuProduct": name}}) for name in by_memory]


def _product_memory_gib(name: str) -> float:
    product = find_product(name)
    return product.memory_gib if product is not None else 0.0  # unknown products sort first: not known to be big


def _suggest(spec: FineTuneJobSpec, cluster: Cluster, fits: Fits) -> tuple[Suggestion, ...]:
    """Each kind of change that alone makes the job fit; if none does, the cheapest combination that does."""
    max_node_gpus = max((n.gpus for n in cluster.usable), default=0)
    groups = [group for group in (_product_variants(spec, cluster), *_variants(spec, max_node_gpus)) if group]
    found = []
    for group in groups:
        fit = _first_fit(spec, {}, group, fits)
        if fit is not None:
            description = next(d for d, change in group if merge_patch({}, change) == fit[0])
            found.append(Suggestion(description, fit[0], fit[1]))
    if found:
        return tuple(found)
    # Nothing alone is enough: add the kinds of change one after another, cheapest first, each at
    # its strongest once passed, stop at the first combination that fits, then drop the earlier
    # changes it does not need.
    steps: list[Variant] = []
    for group in groups:
        combined = _combine(step for _, step in steps)
        fit = _first_fit(spec, combined, group, fits)
        if fit is not None:
            chosen = next(v for v in group if merge_patch(combined, v[1]) == fit[0])
            pruned = _pruned(spec, steps, chosen, fits)
            return (pruned,) if pruned is not None else ()
        steps.append(group[-1])
    return ()


def _combine(changes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    combined: dict[str, Any] = {}
    for change in changes:
        combined = merge_patch(combined, change)
    return combined


def _pruned(spec: FineTuneJobSpec, steps: list[Variant], last: Variant, fits: Fits) -> Suggestion | None:
    """The combination without the earlier steps it still fits without (None if it is one kubetune refuses)."""
    kept = list(steps)
    for step in steps:
        trial = [other for other in kept if other is not step]
        variant = _acceptable(spec, _combine(change for _, change in [*trial, last]))
        if variant is not None and fits(variant, estimate(variant)):
            kept = trial
    chosen = [*kept, last]
    patch = _combine(change for _, change in chosen)
    combined = _acceptable(spec, patch)
    if combined is None:
        return None
    return Suggestion("combine: " + "; ".join(d for d, _ in chosen), patch, estimate(combined))


# ------------------------------------------------------------------------------------- messages


def _no_fit_message(
    spec: FineTuneJobSpec, vram: VramEstimate, fit: _Fit, cluster: Cluster, *, margin: float,
    suggestions: tuple[Suggestion, ...], provisionable: tuple[NodeType, ...] = (),
) -> str:
    needed = f"needs {vram.per_gpu_gib:.1f} GiB per GPU ({vram.strategy}) plus a {margin:.0%} safety margin"
    if fit.reason is Reason.NO_GPU_NODES:
        situation = _no_gpu_situation(cluster)
    elif fit.reason is Reason.NO_MATCHING_GPU_PRODUCT:
        situation = (f"no usable node has spec.resources.gpuProduct {spec.resources.gpu_product}; "
                     f"products here: {', '.join(sorted(cluster.products)) or 'none'}")
    elif fit.reason is Reason.INSUFFICIENT_GPU_MEMORY:
        situation = ("the largest usable GPU has "
                     f"{fit.best_gib:.1f} GiB" if fit.best_gib is not None else "no usable GPU is large enough")
    else:
        situation = fit.detail
    text = f"{needed}; {situation}." + _provisionable_note(provisionable, spec)
    if cluster.unknown:
        text += (f" The GPU memory of {_names(n.name for n in cluster.unknown)} is unknown, but no GPU kubetune "
                 f"knows ({LARGEST_GPU_GIB:.0f} GiB at most) holds that either.")
    if cluster.excluded:
        text += " Not usable: " + ", ".join(f"{count} node(s) {why}" for why, count in cluster.excluded.items()) + "."
    if suggestions:
        text += SUGGESTIONS_INTRO + "; ".join(
            f"({index}) {s.description} -> {s.estimate.per_gpu_gib:.1f} GiB per GPU, patch "
            f"{_compact(s.spec_patch)}" for index, s in enumerate(suggestions, 1)
        ) + "."
    else:
        text += " No single change to the spec makes it fit the GPUs this cluster has."
    return text


def _no_gpu_situation(cluster: Cluster) -> str:
    if cluster.mig_only:
        return (f"nodes {_names(cluster.mig_only)} offer only MIG slices (nvidia.com/mig-*) and kubetune "
                "requests whole nvidia.com/gpu: use the single MIG strategy there")
    if cluster.gpu_node_count == 0:
        return "the cluster has no node with allocatable nvidia.com/gpu"
    return f"none of the {cluster.gpu_node_count} GPU node(s) can take the pods"


def unknown_memory_message(cluster: Cluster) -> str:
    """Which nodes have GPU memory nobody told, and the three ways to tell kubetune."""
    described = _names(f"{n.name} ({n.identity.discovered_by or 'no GPU labels'})" for n in cluster.unknown)
    example = cluster.unknown[0].name
    return (f"GPU memory of {len(cluster.unknown)} node(s) is unknown and kubetune does not guess it: {described}. "
            f"Tell kubetune with `kubectl annotate node {example} {ANNOTATION_MEMORY_GIB}=<GiB per GPU>`, "
            "with the chart value gpuDiscovery.labelProducts (a node label -> a GPU product or memoryGiB), "
            "or by installing NVIDIA GPU Feature Discovery (it labels nvidia.com/gpu.product and .memory)")


def _unknown_memory_wait(vram: VramEstimate, fit: _Fit, cluster: Cluster, margin: float) -> Wait:
    known = (f"the nodes whose GPU memory is known do not fit ({fit.reason})" if cluster.usable
             else "no usable GPU node has a known GPU memory")
    return Wait(Reason.GPU_MEMORY_UNKNOWN,
                f"needs {vram.per_gpu_gib:.1f} GiB per GPU plus a {margin:.0%} safety margin; {known}. "
                f"{unknown_memory_message(cluster)}. Waiting until it is known.")


def _compact(patch: Mapping[str, Any]) -> str:
    return json.dumps(patch, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ entry


def plan(
    spec: FineTuneJobSpec,
    estimate: VramEstimate,
    nodes: Iterable[NodeLike],
    pods: Iterable[Mapping[str, Any]],
    *,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    provisionable: tuple[NodeType, ...] = (),
) -> PlanResult:
    """Where the job fits, or why it waits, or why it cannot fit and what would. `provisionable`: node
    types the cluster can add (autoscale mode); a job no free GPU holds but one of them does is Provision."""
    nodes, pods = list(nodes), list(pods)  # surveyed again for a suggestion of another GPU product
    effective = effective_spec(spec)
    cluster = survey(effective, nodes, pods)
    need = need_of(effective, estimate, cluster)
    fit = _fit(effective, need, cluster, safety_margin)
    if isinstance(fit.result, Placement):
        return fit.result
    grown = _provision(effective, need, provisionable, safety_margin)
    if grown is not None:
        return grown
    if fit.result is not None:
        return fit.result
    assert fit.reason is not None
    if cluster.unknown and need.per_gpu_gib <= LARGEST_GPU_GIB * (1 - safety_margin):
        return _unknown_memory_wait(estimate, fit, cluster, safety_margin)

    def fits(variant: FineTuneJobSpec, variant_estimate: VramEstimate) -> bool:
        variant = effective_spec(variant)
        same_nodes = variant.resources.gpu_product == effective.resources.gpu_product
        where = cluster if same_nodes else survey(variant, nodes, pods)
        variant_need = need_of(variant, variant_estimate, where)
        return (_fit(variant, variant_need, where, safety_margin).result is not None
                or _provision(variant, variant_need, provisionable, safety_margin) is not None)

    suggestions = _suggest(spec, cluster, fits)
    return NoFit(
        reason=fit.reason,
        message=_no_fit_message(effective, estimate, fit, cluster, margin=safety_margin,
                                suggestions=suggestions, provisionable=provisionable),
        needed_gib=estimate.per_gpu_gib,
        best_available_gib=None if fit.best_gib is None else round(fit.best_gib, 2),
        suggestions=suggestions,
    )
