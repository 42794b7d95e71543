"""Multi-node FineTuneJobs through the real operator: the gang is created whole, or not at all."""

from __future__ import annotations

from typing import Any

import pytest
from apiserver import Fault, Server
from harness import JOBS, NAMESPACE, PODS, Cluster, Operator, qwen_lora, wait_for

from kubetune import contract

SERVICES = ("/api/v1", "services")


def two_nodes(**extra: Any) -> dict[str, Any]:
    spec = qwen_lora(**extra)
    spec["resources"] = {**spec["resources"], "gpus": 8, "nodes": 2}
    return spec


def two_free_nodes(cluster: Cluster, output_access_mode: str) -> None:
    """Two nodes of 8 free H100 each, and the output PVC `out` with this access mode."""
    cluster.add_gpu_node("h100-a", gpus=8)
    cluster.add_gpu_node("h100-b", gpus=8)
    cluster.add_claim("out", output_access_mode)


def busy_gpus(cluster: Cluster, node: str, gpus: int) -> None:
    """Another workload's running pod holding GPUs on a node."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"other-{node}", "namespace": NAMESPACE},
           "spec": {"nodeName": node, "containers": [
               {"name": "c", "image": "x", "resources": {"limits": {contract.GPU_RESOURCE: str(gpus)}}}]},
           "status": {"phase": "Running"}}
    cluster.server.call(cluster.api.create, *PODS, NAMESPACE, pod)


@pytest.mark.usefixtures("operator")
def test_a_two_node_job_gets_an_indexed_job_and_its_headless_service(cluster: Cluster) -> None:
    two_free_nodes(cluster, "ReadWriteMany")
    cluster.apply("big", two_nodes())

    job = cluster.wait_job("big-1")
    service = wait_for(lambda: cluster.get(SERVICES, "big-1"), what="the headless Service")

    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["subdomain"] == "big-1"
    assert service["spec"]["clusterIP"] == "None"
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_RDZV_ENDPOINT].startswith(f"big-1-0.big-1.{NAMESPACE}.svc:")
    assert set(cluster.wait_phase("big", "Pending")["placement"]["nodes"]) == {"h100-a", "h100-b"}


@pytest.mark.usefixtures("operator")
def test_a_two_node_job_on_a_read_write_once_volume_fails_with_the_fix(cluster: Cluster) -> None:
    two_free_nodes(cluster, "ReadWriteOnce")
    cluster.apply("big", two_nodes())

    status = cluster.wait_phase("big", "Failed", "InvalidSpec")

    assert "must be ReadWriteMany" in status["message"] and "spec.output.volume.claimName" in status["message"]
    assert cluster.get(JOBS, "big-1") is None


@pytest.mark.parametrize(
    ("queue", "job_created"),
    [(None, False), ({"queueName": "gpus"}, True)],
    ids=[
        "without Kueue a gang that cannot be placed whole waits and creates nothing",
        "with Kueue the whole Job is created suspended for Kueue to admit at once",
    ],
)
@pytest.mark.usefixtures("operator")
def test_a_gang_is_started_whole(cluster: Cluster, queue: dict[str, Any] | None, job_created: bool) -> None:
    cluster.add_gpu_node("h100-a", gpus=8)
    cluster.add_gpu_node("h100-b", gpus=4)
    cluster.add_claim("out", "ReadWriteMany")
    cluster.add_gpu_node("h100-c", gpus=8)
    busy_gpus(cluster, "h100-c", 1)
    cluster.apply("big", two_nodes(**(queue or {})))

    if job_created:
        job = cluster.wait_job("big-1")
        assert job["spec"]["suspend"] is True and job["spec"]["parallelism"] == 2
    else:
        cluster.wait_phase("big", "Queued", "WaitingForGPUs")
        assert cluster.get(JOBS, "big-1") is None


def test_an_operator_restarted_before_the_service_was_written_creates_it(server: Server, cluster: Cluster) -> None:
    two_free_nodes(cluster, "ReadWriteMany")
    # The Job is written but every answer is an error, so the status never records it; its Service is
    # created before it (the Job is the commit point), so delete that to leave a Job without its Service.
    server.api.faults = [Fault("POST", "/jobs", 500, times=1000, after_write=True)]
    operator = Operator(server).start()
    cluster.apply("big", two_nodes())
    cluster.wait_job("big-1")
    operator.stop()
    cluster.delete(SERVICES, "big-1")
    server.api.faults = []

    operator = Operator(server).start()
    try:
        service = wait_for(lambda: cluster.get(SERVICES, "big-1"), what="the headless Service")
    finally:
        operator.stop()

    assert service["spec"]["selector"][contract.LABEL_ATTEMPT] == "1"
