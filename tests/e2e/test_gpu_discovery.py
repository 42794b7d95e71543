"""GPU discovery with the real operator: a GPU node whose memory nobody tells holds the job Queued with the
fix, and the job is placed as soon as the node is annotated."""

from __future__ import annotations

from typing import Any

import pytest
from apiserver import Server, merge_patch
from harness import NODES, Cluster, qwen_lora

pytestmark = pytest.mark.usefixtures("operator")


def bare_gpu_node(name: str) -> dict[str, Any]:
    """A GPU node without GPU Feature Discovery or any cloud's GPU labels."""
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"nvidia.com/gpu": "1"}, "conditions": [{"type": "Ready", "status": "True"}]}}


def test_an_unlabelled_gpu_node_waits_with_the_fix_then_the_annotation_places_the_job(
    server: Server, cluster: Cluster
) -> None:
    server.call(server.api.create, *NODES, "", bare_gpu_node("gpu-a"))
    cluster.apply("tune", qwen_lora())
    status = cluster.wait_phase("tune", "Queued", "GPUMemoryUnknown")
    assert "gpu-a (no GPU labels)" in status["message"]
    assert "kubectl annotate node gpu-a kubetune.io/gpu-memory-gib=" in status["message"]
    assert not status.get("jobName")

    def annotate() -> None:
        key = (*NODES, "", "gpu-a")
        patch = {"metadata": {"annotations": {"kubetune.io/gpu-memory-gib": "80"}}}
        server.api.update(key, merge_patch(server.api.objects[key], patch), subresource=None)

    server.call(annotate)
    status = cluster.wait_phase("tune", "Pending", "JobCreated")
    assert status["placement"]["gpuMemoryGiB"] == 80.0 and status["placement"]["nodes"] == ["gpu-a"]
