"""Clusters that grow: node types from Karpenter NodePools and node groups, and planning onto them."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import Reason
from kubetune.capacity import CapacityError, node_groups, nodepool_types
from kubetune.estimate import estimate
from kubetune.plan import NoFit, Placement, Provision, Wait, plan
from kubetune.validation import parse_spec

QWEN_7B_LORA = {"model": {"name": "Qwen/Qwen2.5-7B"}, "dataset": {"name": "tatsu-lab/alpaca"},
                "method": {"type": "lora"}}  # about 22 GiB per GPU: an L4 (22.5 GiB) is too small, an L40S holds it


def nodepool(name: str, requirements: list[dict[str, Any]], *, gpu_limit: str | None = None,
             taints: list[dict[str, str]] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A karpenter.sh/v1 NodePool as `kubectl get nodepools -o yaml` shows it."""
    spec: dict[str, Any] = {"template": {"metadata": {"labels": labels or {}},
                                         "spec": {"requirements": requirements, "taints": taints or [],
                                                  "nodeClassRef": {"group": "karpenter.k8s.aws",
                                                                   "kind": "EC2NodeClass", "name": "default"}}}}
    if gpu_limit is not None:
        spec["limits"] = {"cpu": "1000", "nvidia.com/gpu": gpu_limit}
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name}, "spec": spec}


def req(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


P5 = req("node.kubernetes.io/instance-type", "In", "p5.48xlarge")


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (nodepool("h100", [P5]), {("p5.48xlarge", "NVIDIA-H100-80GB-HBM3", 8, None)}),
        (nodepool("h100", [P5], gpu_limit="16"), {("p5.48xlarge", "NVIDIA-H100-80GB-HBM3", 8, 2)}),
        (nodepool("l40s", [req("karpenter.k8s.aws/instance-family", "In", "g6e"),
                           req("karpenter.k8s.aws/instance-gpu-count", "Lt", "4")]),
         {(f"g6e.{size}", "NVIDIA-L40S", 1, None) for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")}),
        (nodepool("a100", [req("karpenter.k8s.aws/instance-gpu-name", "In", "a100")]),
         {("p4d.24xlarge", "NVIDIA-A100-SXM4-40GB", 8, None), ("p4de.24xlarge", "NVIDIA-A100-SXM4-80GB", 8, None)}),
        (nodepool("big", [req("karpenter.k8s.aws/instance-gpu-memory", "Gt", "100000"),
                          req("kubernetes.io/arch", "In", "amd64")]),
         {("p5e.48xlarge", "NVIDIA-H200", 8, None), ("p5en.48xlarge", "NVIDIA-H200", 8, None)}),
        (nodepool("cpu", [req("karpenter.k8s.aws/instance-category", "In", "c", "m", "r")]), set()),
    ],
    ids=["an instance type requirement", "the GPU limit bounds the nodes it may add",
         "an instance family and a GPU count", "Karpenter's GPU name covers both A100 sizes",
         "a GPU memory bound (requirements on other keys are not checked)", "a CPU-only pool has no GPU types"],
)
def test_nodepool_types(pool: dict[str, Any], expected: set[tuple[str, str, int, int | None]]) -> None:
    found = {(t.labels["node.kubernetes.io/instance-type"], t.product, t.gpus_per_node, t.max_nodes)
             for t in nodepool_types(pool)}
    assert found == expected


def test_a_nodepool_type_is_pinned_to_its_pool_and_instance_type() -> None:
    [node_type] = nodepool_types(nodepool("h100", [P5], labels={"team": "ml"}))
    assert node_type.pin == ({"key": "karpenter.sh/nodepool", "operator": "In", "values": ["h100"]},
                             {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["p5.48xlarge"]})
    assert node_type.labels["team"] == "ml" and node_type.memory_gib == pytest.approx(79.65, abs=0.01)


GROUP = {"name": "a100-pool", "gpuProduct": "NVIDIA-A100-SXM4-80GB", "gpusPerNode": 8, "maxNodes": 2,
         "nodeSelector": {"cloud.google.com/gke-nodepool": "a100-pool"}}


def test_a_node_group_from_the_chart() -> None:
    [group] = node_groups([GROUP], "capacity.nodeGroups")
    assert (group.product, group.memory_gib, group.gpus_per_node, group.max_nodes) == (
        "NVIDIA-A100-SXM4-80GB", 80.0, 8, 2)
    assert group.pin == ({"key": "cloud.google.com/gke-nodepool", "operator": "In", "values": ["a100-pool"]},)


@pytest.mark.parametrize(
    ("change", "named"),
    [({"nodeSelector": {}}, "[0].nodeSelector"), ({"gpuProduct": "ACME-9000"}, "[0].gpuProduct"),
     ({"gpuProduct": None}, "give gpuProduct or memoryGiB"), ({"gpusPerNode": 0}, "[0].gpusPerNode"),
     ({"maxNodes": "many"}, "[0].maxNodes"), ({"name": ""}, "[0].name")],
    ids=["a group without labels to pin to", "an unknown product", "neither product nor memory",
         "no GPUs per node", "a maximum that is not a number", "no name"],
)
def test_bad_node_groups_name_the_field(change: dict[str, Any], named: str) -> None:
    item = {key: value for key, value in {**GROUP, **change}.items() if value is not None}
    with pytest.raises(CapacityError, match=named.replace("[", r"\[").replace("]", r"\]")):
        node_groups([item], "capacity.nodeGroups")


# --------------------------------------------------------------------------------- planning


def gfd_node(name: str, product: str, memory_mib: int, gpus: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "nvidia.com/gpu.product": product,
                                                  "nvidia.com/gpu.memory": str(memory_mib)}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def busy(node: str, gpus: int) -> dict[str, Any]:
    return {"metadata": {"name": f"busy-{node}"}, "status": {"phase": "Running"},
            "spec": {"nodeName": node,
                     "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}


L4_NODE = gfd_node("l4-a", "NVIDIA-L4", 23034)
L40S_POOL = nodepool("l40s", [req("karpenter.k8s.aws/instance-family", "In", "g6e")], gpu_limit="8")
H100_POOL = nodepool("h100", [P5])


def plan_with(resources: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]],
              pools: list[dict[str, Any]]) -> Any:
    spec = parse_spec({**QWEN_7B_LORA, "resources": resources})
    types = tuple(t for pool in pools for t in nodepool_types(pool))
    return plan(spec, estimate(spec), nodes, pods, provisionable=types)


@pytest.mark.parametrize(
    ("resources", "cluster", "pools", "outcome", "detail"),
    [
        ({}, ([gfd_node("h100-a", "NVIDIA-H100-80GB-HBM3", 81559)], []), [L40S_POOL], Placement, "h100-a"),
        ({}, ([L4_NODE], []), [L40S_POOL, H100_POOL], Provision, "NVIDIA-L40S"),
        ({}, ([gfd_node("h100-a", "NVIDIA-H100-80GB-HBM3", 81559)], [busy("h100-a", 1)]), [L40S_POOL], Provision,
         "NVIDIA-L40S"),
        ({}, ([gfd_node("h100-a", "NVIDIA-H100-80GB-HBM3", 81559)], [busy("h100-a", 1)]), [], Wait,
         Reason.WAITING_FOR_GPUS),
        ({"gpus": 8}, ([L4_NODE], []), [L40S_POOL, H100_POOL], Provision, "NVIDIA-L40S"),
        ({"gpus": 16}, ([L4_NODE], []), [L40S_POOL, H100_POOL], NoFit, Reason.INSUFFICIENT_GPU_MEMORY),
        ({"gpuProduct": "NVIDIA-H100-80GB-HBM3"}, ([], []), [L40S_POOL, H100_POOL], Provision, "NVIDIA-H100-80GB-HBM3"),
        ({"gpus": 8, "nodes": 2, "gpuProduct": "NVIDIA-L40S"}, ([], []), [L40S_POOL], NoFit, Reason.NO_GPU_NODES),
        ({"tolerations": []}, ([], []), [nodepool("tainted", [P5], taints=[{"key": "team", "value": "a",
                                                                         "effect": "NoSchedule"}])],
         NoFit, Reason.NO_GPU_NODES),
        ({"nodeSelector": {"team": "ml"}}, ([], []), [nodepool("ml", [P5], labels={"team": "ml"}), L40S_POOL],
         Provision, "NVIDIA-H100-80GB-HBM3"),
    ],
    ids=[
        "a free GPU that fits wins over adding a node",
        "no existing GPU fits: the smallest type that fits is provisioned",
        "busy GPUs: a node is added rather than waiting",
        "fixed capacity: the job waits for busy GPUs",
        "eight GPUs on one node: the family's 8-GPU size holds them",
        "sixteen GPUs on one node: no type has them",
        "the product the spec asks for is provisioned",
        "a pool whose GPU limit allows one node cannot hold a two-node job",
        "a pool whose taint the job does not tolerate is not used",
        "the nodeSelector picks the pool whose nodes carry its labels",
    ],
)
def test_planning_onto_node_types_the_cluster_can_add(
    resources: dict[str, Any], cluster: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    pools: list[dict[str, Any]], outcome: type, detail: Any,
) -> None:
    """cluster: (nodes, pods holding GPUs)."""
    result = plan_with(resources, *cluster, pools)
    assert isinstance(result, outcome), result
    if isinstance(result, Placement):
        assert detail in result.nodes
    elif isinstance(result, Provision):
        assert result.gpu_product == detail and "waiting for the node to join" in result.message
    else:
        assert result.reason == detail


def test_a_provision_pins_the_job_to_every_fitting_type_of_the_smallest_gpu() -> None:
    result = plan_with({}, [L4_NODE], [], [L40S_POOL, H100_POOL])
    assert isinstance(result, Provision)
    terms = result.node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    types = sorted(term["matchExpressions"][1]["values"][0] for term in terms)
    assert types == sorted(f"g6e.{size}" for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge",
                                                       "12xlarge", "24xlarge", "48xlarge"))
    assert all(term["matchExpressions"][0] == {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["l40s"]}
               for term in terms)
    status = result.to_status().to_wire()
    assert status["gpuProduct"] == "NVIDIA-L40S" and status["nodeTypes"][0].startswith("NodePool l40s:")


def test_a_job_nothing_existing_or_provisionable_holds_is_refused_with_the_numbers() -> None:
    full_72b = parse_spec({"model": {"name": "Qwen/Qwen2.5-72B"}, "dataset": {"name": "tatsu-lab/alpaca"},
                           "method": {"type": "full"}, "resources": {"gpus": 1}})
    result = plan(full_72b, estimate(full_72b), [L4_NODE], [], provisionable=tuple(nodepool_types(H100_POOL)))
    assert isinstance(result, NoFit) and result.reason == Reason.INSUFFICIENT_GPU_MEMORY
    assert "GiB per GPU" in result.message and "None of the node types the cluster can add" in result.message
    assert "NodePool h100: 8x NVIDIA-H100-80GB-HBM3 (80 GiB)" in result.message
