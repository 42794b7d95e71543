"""Clusters that grow (capacity.mode autoscale): a job that fits only a node type Karpenter can add gets its
Job at once, pinned to that type, waits for the node, and runs when the node joins."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver import Server
from harness import NODES, Cluster, Operator, qwen_lora

NODEPOOLS = ("/apis/karpenter.sh/v1", "nodepools")


@pytest.fixture
def autoscaling_operator(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Operator]:
    from kubetune import handlers

    monkeypatch.setattr(handlers, "SETTINGS", dataclasses.replace(handlers.SETTINGS, capacity_mode="autoscale"))
    running = Operator(server).start()
    yield running
    running.stop()


def nodepool(name: str, instance_type: str) -> dict[str, Any]:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name},
            "spec": {"template": {"spec": {"requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [instance_type]}]}},
                     "limits": {"nvidia.com/gpu": "16"}}}


def karpenter_node(name: str, pool: str, instance_type: str, gpus: int) -> dict[str, Any]:
    """A node as Karpenter launches it: its pool and instance labels, no GPU Feature Discovery labels."""
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "karpenter.sh/nodepool": pool,
                                                  "node.kubernetes.io/instance-type": instance_type}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.mark.usefixtures("autoscaling_operator")
def test_a_job_that_fits_only_a_provisionable_type_gets_its_job_then_runs_when_the_node_joins(
    server: Server, cluster: Cluster
) -> None:
    cluster.add_gpu_node("t4-a", product="Tesla-T4", memory_mib=15360)  # too small for the job
    server.call(server.api.create, *NODEPOOLS, "", nodepool("h100", "p5.48xlarge"))
    cluster.apply("tune", qwen_lora())

    status = cluster.wait_phase("tune", "Queued", "WaitingForNodes")
    job = cluster.wait_job("tune-1")
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["h100"]},
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["p5.48xlarge"]}]}]
    assert status["jobName"] == "tune-1" and status["placement"]["gpuProduct"] == "NVIDIA-H100-80GB-HBM3"
    assert status["placement"]["nodeTypes"] == ["NodePool h100: 8x NVIDIA-H100-80GB-HBM3 (80 GiB), at most 2 node(s)"]
    assert status["forecast"]["gpuProduct"] == "NVIDIA-H100-80GB-HBM3" and status["forecast"]["tokensPerSecond"] > 0
    schedulable = next(c for c in status["conditions"] if c["type"] == "Schedulable")
    assert (schedulable["status"], schedulable["reason"]) == ("False", "WaitingForNodes")

    server.call(server.api.create, *NODES, "", karpenter_node("ip-10-0-1-7", "h100", "p5.48xlarge", 8))
    cluster.start_pod("tune-1", "ip-10-0-1-7")
    cluster.wait_phase("tune", "Running", "Training")
