"""The GPU-fit planner: taints, cordons, MIG, busy GPUs, selectors, multi-node, products, suggestions."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import Reason
from kubetune.estimate import estimate
from kubetune.plan import NoFit, Placement, Wait, merge_patch, plan
from kubetune.validation import parse_spec, validate_manifest

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


SMALL_BATCH = {"batchSize": 1, "maxSeqLength": 1024}


def job(model: str = "Qwen/Qwen2.5-0.5B", method: dict[str, Any] | None = None, **resources: Any) -> Any:
    """A spec with the given spec.resources fields: LoRA unless told, one 1024-token sequence per pass."""
    return parse_spec({"model": {"name": model}, "dataset": {"name": "tatsu-lab/alpaca"},
                       "method": method or {"type": "lora"}, "training": SMALL_BATCH, "resources": resources})


def node(name: str, product: str | None = "NVIDIA-A100-SXM4-80GB", memory_mib: int | None = 81920, gpus: int = 8,
         *, ready: bool = True, cordoned: bool = False, taints: list[dict[str, str]] | None = None,
         labels: dict[str, str] | None = None, extra_allocatable: dict[str, str] | None = None) -> dict[str, Any]:
    """A Node object as `kubectl get nodes -o json` shows it, with GPU Feature Discovery labels."""
    all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if product is not None:
        all_labels["nvidia.com/gpu.product"] = product
    if memory_mib is not None:
        all_labels["nvidia.com/gpu.memory"] = str(memory_mib)
    allocatable = {"cpu": "64", "memory": "512Gi", **(extra_allocatable or {})}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {"taints": taints} if taints else {}
    if cordoned:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": spec,
        "status": {"allocatable": allocatable,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(node_name: str | None, gpus: int, phase: str = "Running") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"kind": "Pod", "metadata": {"name": f"p-{node_name}"}, "spec": spec, "status": {"phase": phase}}


def plan_for(spec: Any, nodes: list[dict[str, Any]], pods: list[dict[str, Any]] | None = None,
             **options: Any) -> Any:
    return plan(spec, estimate(spec), nodes, pods or [], **options)


def affinity_expressions(placement: Placement) -> list[dict[str, Any]]:
    required = placement.node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    return required["nodeSelectorTerms"][0]["matchExpressions"]


A10G = {"product": "NVIDIA-A10G", "memory_mib": 23028}
NO_SCHEDULE = {"key": "dedicated", "value": "training", "effect": "NoSchedule"}


# ------------------------------------------------------------------------------------- placement


def test_a_fitting_job_is_placed_with_a_memory_affinity() -> None:
    result = plan_for(job(), [node("gpu-1")])
    assert isinstance(result, Placement)
    assert result.nodes == ("gpu-1",)
    assert result.gpu_product == "NVIDIA-A100-SXM4-80GB"
    assert result.gpu_memory_gib == 80.0
    assert result.headroom_gib == pytest.approx(80.0 - estimate(job()).per_gpu_gib, abs=0.01)
    [expression] = affinity_expressions(result)
    assert expression["key"] == "nvidia.com/gpu.memory" and expression["operator"] == "Gt"
    needed_mib = int(expression["values"][0]) + 1
    assert needed_mib * 0.9 / 1024 == pytest.approx(estimate(job()).per_gpu_gib, abs=0.01)
    assert result.to_status().gpu_memory_gib == 80.0


def test_best_fit_prefers_the_smallest_gpu_that_holds_the_job() -> None:
    nodes = [node("h200", "NVIDIA-H200", 143771), node("a10g", **A10G), node("a100", memory_mib=81920)]
    result = plan_for(job(), nodes)
    assert isinstance(result, Placement) and result.nodes == ("a10g",)


def test_memory_of_unlabelled_gpus_comes_from_the_product_table_and_the_affinity_pins_the_product() -> None:
    result = plan_for(job(), [node("l4", "NVIDIA-L4", None)])
    assert isinstance(result, Placement)
    assert result.gpu_memory_gib == pytest.approx(22.49, abs=0.01)
    assert affinity_expressions(result) == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-L4"]}]


@pytest.mark.parametrize(
    ("nodes", "named"),
    [
        ([node("mystery", "ACME-GPU-9000", None)], "mystery (GFD)"),
        ([node("bare", None, None)], "bare (no GPU labels)"),
        ([node("aks-gpu", None, None, labels={"kubernetes.azure.com/accelerator": "nvidia"})],
         "aks-gpu (AKS kubernetes.azure.com/accelerator=nvidia)"),
        ([node("bare", None, None), node("t4", "Tesla-T4", 15360)], "bare (no GPU labels)"),
    ],
    ids=["a GFD product kubetune does not know", "a GPU node without labels", "an AKS node of an unknown size",
         "an unknown node next to known nodes too small for the job"],
)
def test_a_node_of_unknown_gpu_memory_makes_the_job_wait_with_the_fix(nodes: list[dict[str, Any]],
                                                                        named: str) -> None:
    result = plan_for(job(LLAMA_8B), nodes)
    assert isinstance(result, Wait) and result.reason == Reason.GPU_MEMORY_UNKNOWN
    assert named in result.message
    assert "kubectl annotate node" in result.message and "kubetune.io/gpu-memory-gib=" in result.message
    assert "gpuDiscovery.labelProducts" in result.message and "15 GiB" not in result.message


def test_a_job_larger_than_any_gpu_is_refused_even_with_nodes_of_unknown_memory() -> None:
    huge = job("Qwen/Qwen2.5-72B", {"type": "full"})
    result = plan_for(huge, [node("bare", None, None)])
    assert isinstance(result, NoFit)
    assert "The GPU memory of bare is unknown, but no GPU kubetune knows (179 GiB at most)" in result.message


def test_a_job_that_fits_a_known_node_is_placed_there_whatever_the_unknown_ones() -> None:
    result = plan_for(job(), [node("bare", None, None), node("a100")])
    assert isinstance(result, Placement) and result.nodes == ("a100",)


def test_an_annotated_node_is_placed_and_pinned_by_hostname() -> None:
    annotated = node("bare", None, None)
    annotated["metadata"]["annotations"] = {"kubetune.io/gpu-memory-gib": "40"}
    result = plan_for(job(), [annotated])
    assert isinstance(result, Placement) and result.gpu_memory_gib == 40.0
    assert affinity_expressions(result) == [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["bare"]}]


@pytest.mark.parametrize(
    ("labels", "expressions"),
    [
        ({"cloud.google.com/gke-accelerator": "nvidia-l4"},
         [{"key": "cloud.google.com/gke-accelerator", "operator": "In", "values": ["nvidia-l4"]}]),
        ({"karpenter.k8s.aws/instance-gpu-name": "l4", "karpenter.k8s.aws/instance-gpu-memory": "22888"},
         [{"key": "karpenter.k8s.aws/instance-gpu-memory", "operator": "Gt", "values": [None]}]),
        ({"node.kubernetes.io/instance-type": "g6.xlarge"},
         [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g6.xlarge"]}]),
    ],
    ids=["GKE: pinned by the accelerator label", "Karpenter: a Gt on its GPU memory label",
         "instance type: pinned by the instance type"],
)
def test_nodes_of_each_cloud_are_placed_with_an_affinity_in_their_own_labels(
    labels: dict[str, str], expressions: list[dict[str, Any]]
) -> None:
    result = plan_for(job(), [node("n", None, None, labels=labels)])
    assert isinstance(result, Placement) and result.gpu_product is not None
    found = affinity_expressions(result)
    if expressions[0]["operator"] == "Gt":
        expressions[0]["values"] = found[0]["values"]
    assert found == expressions


def test_no_gpus_needs_no_gpu_node() -> None:
    result = plan_for(job(gpus=0), [])
    assert isinstance(result, Placement) and result.node_affinity == {}


# ------------------------------------------------------------------------------ node conditions


@pytest.mark.parametrize(
    ("blocked", "why"),
    [
        (node("gpu-1", cordoned=True), "cordoned"),
        (node("gpu-1", ready=False), "NotReady"),
        (node("gpu-1", taints=[NO_SCHEDULE]), "taint dedicated=training:NoSchedule"),
        (node("gpu-1", taints=[{"key": "maintenance", "effect": "NoExecute"}]), "taint maintenance"),
    ],
    ids=["a cordoned node takes no pods", "a NotReady node takes no pods",
         "an untolerated NoSchedule taint keeps the pods off", "an untolerated NoExecute taint keeps the pods off"],
)
def test_unusable_nodes_are_skipped_and_named(blocked: dict[str, Any], why: str) -> None:
    result = plan_for(job(), [blocked])
    assert isinstance(result, NoFit) and result.reason == Reason.NO_GPU_NODES
    assert why in result.message


@pytest.mark.parametrize(
    ("taint", "tolerations"),
    [
        ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, None),
        (NO_SCHEDULE, [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]),
        (NO_SCHEDULE, [{"key": "dedicated", "operator": "Exists"}]),
        (NO_SCHEDULE, [{"operator": "Exists"}]),
        ({"key": "soft", "effect": "PreferNoSchedule"}, None),
    ],
    ids=["the GPU taint is tolerated by every trainer Job", "an Equal toleration with the same value",
         "an Exists toleration of the key", "an empty-key Exists toleration tolerates everything",
         "PreferNoSchedule does not block"],
)
def test_tolerated_taints_do_not_block(taint: dict[str, str], tolerations: list[dict[str, Any]] | None) -> None:
    spec = job(tolerations=tolerations) if tolerations else job()
    assert isinstance(plan_for(spec, [node("gpu-1", taints=[taint])]), Placement)


@pytest.mark.parametrize(
    ("resources", "fits"),
    [
        ({"nodeSelector": {"pool": "train"}}, True),
        ({"nodeSelector": {"pool": "serve"}}, False),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["train", "batch"]}]}]}}}}, True),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["train"]}]}]}}}}, False),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "spot", "operator": "Exists"}]},
            {"matchExpressions": [{"key": "pool", "operator": "Exists"}]}]}}}}, True),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "DoesNotExist"}]}]}}}}, False),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]}]}}}}, True),
    ],
    ids=["nodeSelector matches the label", "nodeSelector with another value excludes the node",
         "affinity In matches", "affinity NotIn excludes", "affinity terms are ORed",
         "affinity DoesNotExist excludes a labelled node", "affinity matchFields on the node name"],
)
def test_node_selector_and_affinity(resources: dict[str, Any], fits: bool) -> None:
    result = plan_for(job(**resources), [node("gpu-1", labels={"pool": "train"})])
    assert isinstance(result, Placement) is fits
    if not fits:
        assert "does not match" in result.message


@pytest.mark.parametrize(
    ("resources", "placed_on", "reason"),
    [
        ({"gpuProduct": "NVIDIA-H100-80GB-HBM3"}, "h100", None),
        ({"gpuProduct": "nvidia-h100-80gb-hbm3"}, "h100", None),
        ({"gpuProduct": "NVIDIA-B200"}, None, Reason.NO_MATCHING_GPU_PRODUCT),
        ({"minGpuMemoryGiB": 40}, "h100", None),
        ({"minGpuMemoryGiB": 100}, None, Reason.INSUFFICIENT_GPU_MEMORY),
    ],
    ids=["gpuProduct picks that product", "gpuProduct is matched case-insensitively",
         "a gpuProduct the cluster lacks", "minGpuMemoryGiB skips smaller GPUs", "minGpuMemoryGiB above every GPU"],
)
def test_gpu_product_and_minimum_memory(
    resources: dict[str, Any], placed_on: str | None, reason: Reason | None
) -> None:
    nodes = [node("a10g", **A10G), node("h100", "NVIDIA-H100-80GB-HBM3", 81559)]
    result = plan_for(job(**resources), nodes)
    if placed_on is None:
        assert isinstance(result, NoFit) and result.reason == reason
        assert "NVIDIA-A10G" in result.message or reason == Reason.INSUFFICIENT_GPU_MEMORY
    else:
        assert isinstance(result, Placement) and result.nodes == (placed_on,)
    if "gpuProduct" in resources and placed_on:
        assert {"key": "nvidia.com/gpu.product", "operator": "In",
                "values": ["NVIDIA-H100-80GB-HBM3"]} in affinity_expressions(result)


@pytest.mark.parametrize(
    ("model", "nodes", "suggested"),
    [
        ("Qwen/Qwen2.5-0.5B", [node("a100", "NVIDIA-A100-SXM4-80GB", 81920)], ["NVIDIA-A100-SXM4-80GB"]),
        ("Qwen/Qwen2.5-0.5B", [node("a100", "NVIDIA-A100-SXM4-80GB", 81920), node("a10g", **A10G)],
         ["NVIDIA-A10G"]),
        ("Qwen/Qwen2.5-14B", [node("a100", "NVIDIA-A100-SXM4-80GB", 81920), node("a10g", **A10G)],
         ["NVIDIA-A100-SXM4-80GB"]),
        ("Qwen/Qwen2.5-0.5B", [node("bare", None, 81920)], []),
    ],
    ids=["an H100-pinned job on A100 nodes is told to set gpuProduct to the A100",
         "the smallest product that holds the job is suggested first",
         "a product too small for the job is not suggested",
         "nodes without a product label cannot be named in gpuProduct"],
)
def test_a_job_pinned_to_a_product_the_cluster_lacks_is_offered_the_products_it_has(
    model: str, nodes: list[dict[str, Any]], suggested: list[str]
) -> None:
    result = plan_for(job(model, gpuProduct="NVIDIA-H100-80GB-HBM3"), nodes)

    assert isinstance(result, NoFit) and result.reason == Reason.NO_MATCHING_GPU_PRODUCT
    products = [s.spec_patch["resources"]["gpuProduct"] for s in result.suggestions
                if "gpuProduct" in s.spec_patch.get("resources", {})]
    assert products == suggested
    for product in products:
        assert f"set gpuProduct: {product}" in result.message
        patched = parse_spec(merge_patch(job(model).to_wire(), {"resources": {"gpuProduct": product}}))
        assert isinstance(plan_for(patched, nodes), Placement)


# -------------------------------------------------------------------------------------- MIG


def test_mig_single_strategy_slices_are_gpus_of_the_slice_size() -> None:
    mig = node("mig", "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb", None, gpus=2)
    result = plan_for(job(), [mig])
    assert isinstance(result, Placement)
    assert result.gpu_memory_gib == pytest.approx(20e9 / 2**30, abs=0.01)
    too_big = plan_for(job(LLAMA_8B), [mig])
    assert isinstance(too_big, NoFit) and too_big.reason == Reason.INSUFFICIENT_GPU_MEMORY


def test_mig_mixed_strategy_nodes_offer_no_whole_gpus() -> None:
    mixed = node("mig-mixed", "NVIDIA-A100-SXM4-40GB", 40960, gpus=0,
                 extra_allocatable={"nvidia.com/mig-1g.5gb": "7"})
    result = plan_for(job(), [mixed])
    assert isinstance(result, NoFit) and result.reason == Reason.NO_GPU_NODES
    assert "MIG" in result.message and "mig-mixed" in result.message


# ------------------------------------------------------------------------------ bfloat16


def test_gpus_without_bfloat16_are_planned_with_the_trainers_float16_fallback() -> None:
    assert isinstance(plan_for(job(), [node("t4", "Tesla-T4", 15360, gpus=1)]), Placement)
    full = job(method={"type": "full"})
    bf16_need = estimate(full).per_gpu_gib
    memory_mib = int(bf16_need / 0.9 * 1024 * 1.05)  # fits the bfloat16 estimate with the margin
    # In float16 a full fine-tune keeps float32 master weights: it needs more than that.
    assert isinstance(plan_for(full, [node("v100", "Tesla-V100-SXM2-32GB", memory_mib, gpus=1)]), NoFit)
    assert isinstance(plan_for(full, [node("a10", "NVIDIA-A10", memory_mib, gpus=1)]), Placement)


def test_unknown_products_are_taken_to_have_bfloat16() -> None:
    full = job(method={"type": "full"})
    memory_mib = int(estimate(full).per_gpu_gib / 0.9 * 1024 * 1.05)
    assert isinstance(plan_for(full, [node("new", "NVIDIA-FUTURE-GPU", memory_mib)]), Placement)


# -------------------------------------------------------------------------------- busy GPUs


@pytest.mark.parametrize(
    ("pods", "outcome"),
    [
        ([pod("gpu-1", 8)], Wait),
        ([pod("gpu-1", 4), pod("gpu-1", 4)], Wait),
        ([pod("gpu-1", 7)], Placement),
        ([pod("gpu-1", 8, phase="Succeeded"), pod("gpu-1", 8, phase="Failed")], Placement),
        ([pod(None, 8, phase="Pending")], Placement),
        ([pod("other-node", 8)], Placement),
    ],
    ids=["every GPU requested: wait", "GPUs held by several pods add up", "one GPU left is enough",
         "finished pods hold no GPUs", "pending pods without a node hold no GPUs", "pods elsewhere do not count"],
)
def test_busy_gpus(pods: list[dict[str, Any]], outcome: type) -> None:
    result = plan_for(job(), [node("gpu-1")], pods)
    assert isinstance(result, outcome)
    if isinstance(result, Wait):
        assert result.reason == Reason.WAITING_FOR_GPUS
        assert "8 of the 8 GPUs" in result.message and "gpu-1 (8/8 busy)" in result.message


def test_init_container_gpus_count_when_larger_than_the_containers() -> None:
    holder = pod("gpu-1", 1)
    holder["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"nvidia.com/gpu": "8"}}}]
    assert isinstance(plan_for(job(), [node("gpu-1")], [holder]), Wait)


# ------------------------------------------------------------------------- gpus and nodes


def test_not_enough_gpus_per_node() -> None:
    result = plan_for(job(gpus=8), [node("small", gpus=4)])
    assert isinstance(result, NoFit) and result.reason == Reason.NOT_ENOUGH_GPUS_PER_NODE
    assert "at most 4 GPUs" in result.message
    assert any(s.spec_patch["resources"]["gpus"] <= 4 for s in result.suggestions if "resources" in s.spec_patch)


def test_multi_node_jobs_need_that_many_nodes_of_one_product() -> None:
    nodes = [node("a100-1"), node("a100-2"), node("h100-1", "NVIDIA-H100-80GB-HBM3", 81559)]
    two = plan_for(job(gpus=8, nodes=2), nodes)
    assert isinstance(two, Placement) and set(two.nodes) == {"a100-1", "a100-2"}
    assert {"key": "nvidia.com/gpu.product", "operator": "In",
            "values": ["NVIDIA-A100-SXM4-80GB"]} in affinity_expressions(two)
    three = plan_for(job(gpus=8, nodes=3), nodes)
    assert isinstance(three, NoFit) and three.reason == Reason.NOT_ENOUGH_NODES
    assert "at most 2 node(s)" in three.message


def test_multi_node_jobs_wait_when_too_few_nodes_are_free() -> None:
    result = plan_for(job(gpus=8, nodes=2), [node("a100-1"), node("a100-2")], [pod("a100-2", 1)])
    assert isinstance(result, Wait) and "a100-2 (1/8 busy)" in result.message


def test_no_gpu_nodes_at_all() -> None:
    result = plan_for(job(), [node("cpu-only", None, None, gpus=0)])
    assert isinstance(result, NoFit) and result.reason == Reason.NO_GPU_NODES
    assert result.best_available_gib is None
    assert "no node with allocatable nvidia.com/gpu" in result.message


# ----------------------------------------------------------------------------------- margin


def test_the_safety_margin_keeps_memory_free() -> None:
    spec = job(LLAMA_8B)
    needed = estimate(spec).per_gpu_gib
    memory_mib = int(needed / 0.93 * 1024)  # fits with a 5% margin, not with 10%
    gpu = node("tight", "NVIDIA-X", memory_mib)
    assert isinstance(plan_for(spec, [gpu], safety_margin=0.05), Placement)
    assert isinstance(plan_for(spec, [gpu], safety_margin=0.10), NoFit)


# ------------------------------------------------------------------------------ suggestions


def test_a_full_fine_tune_too_big_for_a10g_gets_a_combination_that_fits() -> None:
    spec = parse_spec({"model": {"name": LLAMA_8B}, "dataset": {"name": "a/b"}, "method": {"type": "full"},
                       "training": {"maxSeqLength": 4096}})
    result = plan_for(spec, [node("a10g-1", **A10G, gpus=1), node("a10g-2", **A10G, gpus=1)])
    assert isinstance(result, NoFit) and result.reason == Reason.INSUFFICIENT_GPU_MEMORY
    assert result.best_available_gib == pytest.approx(22.49, abs=0.01)
    assert result.needed_gib > result.best_available_gib
    [combined] = result.suggestions  # no single change is enough: one combination, cheapest first
    assert combined.description.startswith("combine: ")
    assert combined.spec_patch == {"training": {"batchSize": 1, "gradientAccumulationSteps": 16},
                                   "method": {"type": "qlora", "quantization": {"bits": 4}}}
    for suggestion in result.suggestions:
        assert suggestion.estimate.per_gpu_gib <= 22.49 * 0.9
        assert suggestion.description in result.message


def test_suggestions_are_ordered_by_how_little_they_change_the_training() -> None:
    spec = parse_spec({"model": {"name": LLAMA_8B}, "dataset": {"name": "a/b"},
                       "training": {"gradientCheckpointing": False, "batchSize": 2}})
    result = plan_for(spec, [node("l40s", "NVIDIA-L40S", 46068, gpus=4)])
    assert isinstance(result, NoFit)
    patches = [s.spec_patch for s in result.suggestions]
    assert patches[0] == {"training": {"gradientCheckpointing": True}}
    assert patches[-1] == {"training": {"maxSeqLength": 1024}}  # truncating data changes the most
    for suggestion in result.suggestions:  # every suggestion really fits when applied
        patched = parse_spec(merge_patch(spec.to_wire(), suggestion.spec_patch))
        assert isinstance(plan_for(patched, [node("l40s", "NVIDIA-L40S", 46068, gpus=4)]), Placement)


def test_fsdp_over_more_gpus_is_suggested_when_a_node_has_them() -> None:
    spec = job(LLAMA_8B, {"type": "full"})
    result = plan_for(spec, [node("a100-40", "NVIDIA-A100-SXM4-40GB", 40960, gpus=8)])
    assert isinstance(result, NoFit)
    sharding = [s for s in result.suggestions if s.spec_patch.get("training", {}).get("strategy") == "fsdp"]
    assert sharding and sharding[0].estimate.strategy == "fsdp"
    assert sharding[0].spec_patch["resources"]["gpus"] in (2, 4, 8)


def test_nothing_fits_says_so() -> None:
    spec = job("meta-llama/Llama-3.1-405B", {"type": "full"})
    result = plan_for(spec, [node("t4", "Tesla-T4", 15360, gpus=1)])
    assert isinstance(result, NoFit) and result.suggestions == ()
    assert "No single change" in result.message


def test_merge_patch_follows_rfc_7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": 4}, "d": {"f": 5}}) == {
        "a": {"c": 2, "e": 4}, "d": {"f": 5}}


QLORA_TOO_BIG = [
    ("a 70B qlora job that nothing fits gets no fsdp suggestion", "meta-llama/Llama-3.1-70B", {}, 0),
    ("an 8B qlora job gets only suggestions kubetune accepts", "meta-llama/Llama-3.1-8B",
     {"batchSize": 16, "maxSeqLength": 4096, "gradientCheckpointing": False}, 1),
]


@pytest.mark.parametrize(("model", "training", "count"), [c[1:] for c in QLORA_TOO_BIG],
                         ids=[c[0] for c in QLORA_TOO_BIG])
def test_a_qlora_job_too_big_for_its_gpus_is_never_told_to_shard_with_fsdp(model: str, training: dict[str, Any],
                                                                           count: int) -> None:
    spec = parse_spec({"model": {"name": model}, "dataset": {"name": "a/b"}, "training": training,
                       "method": {"type": "qlora", "quantization": {"bits": 4}}, "resources": {"gpus": 2}})
    result = plan_for(spec, [node("a10g", **A10G, gpus=8)])
    assert isinstance(result, NoFit) and len(result.suggestions) == count
    for suggestion in result.suggestions:
        assert suggestion.spec_patch.get("training", {}).get("strategy") != "fsdp", suggestion.description
        assert validate_manifest({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                  "metadata": {"name": "x"},
                                  "spec": merge_patch(spec.to_wire(), suggestion.spec_patch)})[1] == []
