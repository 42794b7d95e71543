"""The planner for multi-node jobs: `nodes` nodes of one product, each with `gpus` free GPUs that fit."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import Reason
from kubetune.estimate import estimate
from kubetune.plan import NoFit, Placement, Wait, plan
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec

H100 = ("NVIDIA-H100-80GB-HBM3", 81559)
A100 = ("NVIDIA-A100-SXM4-80GB", 81920)
L4 = ("NVIDIA-L4", 23034)


def gpu_node(name: str, gpu: tuple[str, int], gpus: int = 8) -> dict[str, Any]:
    product, memory_mib = gpu
    labels = {"kubernetes.io/hostname": name, "nvidia.com/gpu.product": product,
              "nvidia.com/gpu.memory": str(memory_mib)}
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def busy(node: str, gpus: int) -> dict[str, Any]:
    container = {"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
    return {"metadata": {"name": f"busy-{node}"}, "spec": {"nodeName": node, "containers": [container]},
            "status": {"phase": "Running"}}


def two_node_qwen_lora(nodes: int = 2) -> Any:
    """Qwen2.5-7B LoRA, about 22.5 GiB per GPU: an L4 never holds it, an H100 or A100 does."""
    return effective_spec(parse_spec({"model": {"name": "Qwen/Qwen2.5-7B"}, "dataset": {"name": "d"},
                                      "resources": {"gpus": 8, "nodes": nodes}}))


CASES = [
    ("two free H100 nodes hold a two-node job",
     2, [gpu_node("h-1", H100), gpu_node("h-2", H100)], [], Placement, ""),
    ("an H100 and an A100 node are not mixed into one job",
     2, [gpu_node("h-1", H100), gpu_node("a-1", A100)], [], NoFit, "at most 1 node(s) of one GPU product"),
    ("nodes whose GPUs are too small do not count",
     2, [gpu_node("h-1", H100), gpu_node("l-1", L4), gpu_node("l-2", L4)], [], NoFit, "at most 1 node(s)"),
    ("nodes with fewer GPUs than asked per node do not count",
     2, [gpu_node("h-1", H100), gpu_node("h-2", H100, gpus=4)], [], NoFit, "at most 1 node(s)"),
    ("three nodes asked of two that exist never fits",
     3, [gpu_node("h-1", H100), gpu_node("h-2", H100)], [], NoFit, "at most 2 node(s)"),
    ("one busy GPU on one of two nodes makes the gang wait and says how many nodes are free",
     2, [gpu_node("h-1", H100), gpu_node("h-2", H100)], [busy("h-2", 1)], Wait,
     "1 of the 2 node(s) that fit have them free now"),
    ("a third free node takes the place of the busy one",
     2, [gpu_node("h-1", H100), gpu_node("h-2", H100), gpu_node("h-3", H100)], [busy("h-2", 1)], Placement, ""),
]


@pytest.mark.parametrize(("nodes", "cluster", "pods", "outcome", "fragment"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_multinode_placement(nodes: int, cluster: list[dict[str, Any]], pods: list[dict[str, Any]],
                             outcome: type, fragment: str) -> None:
    spec = two_node_qwen_lora(nodes)

    result = plan(spec, estimate(spec), cluster, pods)

    assert isinstance(result, outcome), result
    if isinstance(result, Placement):
        assert len(result.nodes) >= nodes and not {p["spec"]["nodeName"] for p in pods} & set(result.nodes[:nodes])
    else:
        assert fragment in result.message
    if isinstance(result, NoFit):
        assert result.reason == Reason.NOT_ENOUGH_NODES
