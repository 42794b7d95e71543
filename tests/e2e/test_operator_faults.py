"""API faults and operator restarts end with every FineTuneJob converged and exactly one Job each."""

from __future__ import annotations

from collections import Counter

from apiserver import Fault, Server
from harness import JOBS, Cluster, Operator, qwen_lora

from kubetune.kube import RETRY_DELAYS_SECONDS

JOB_COUNT = 4


def job_names(cluster: Cluster) -> Counter[str]:
    return Counter(job["metadata"]["name"] for job in cluster.items(JOBS))


def test_injected_faults_converge_without_duplicate_jobs(server: Server, cluster: Cluster) -> None:
    for index in range(JOB_COUNT):
        cluster.add_gpu_node(f"h100-{index}")
    server.api.faults = [
        Fault("GET", "/finetunejobs", 410, watch=True),
        Fault("GET", "/jobs", 410, watch=True),
        Fault("POST", "/jobs", 500, times=2, after_write=True),
        Fault("POST", "/configmaps", 503, times=1),
        Fault("PATCH", "/status", 429, times=3),
        Fault("PATCH", "/finetunejobs/", 409, times=2),
    ]
    operator = Operator(server).start()
    try:
        for index in range(JOB_COUNT):
            cluster.apply(f"f{index}", qwen_lora())
        for index in range(JOB_COUNT):
            cluster.wait_phase(f"f{index}", "Pending", "JobCreated")
    finally:
        operator.stop()
    assert job_names(cluster) == Counter({f"f{index}-1": 1 for index in range(JOB_COUNT)})
    assert all(fault.times == 0 for fault in server.api.faults)


def test_operator_killed_between_job_and_status_adopts_the_job(server: Server, cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.add_gpu_node("h100-b")
    # The Job is written but every answer is an error: the status never records it.
    server.api.faults = [Fault("POST", "/jobs", 500, times=100, after_write=True)]
    operator = Operator(server).start()
    cluster.apply("crashy", qwen_lora())
    cluster.wait_job("crashy-1")
    operator.stop()
    assert "jobName" not in cluster.status("crashy")
    server.api.faults = []
    operator = Operator(server).start()
    try:
        status = cluster.wait_phase("crashy", "Pending", "JobCreated")
    finally:
        operator.stop()
    assert status["jobName"] == "crashy-1"
    assert job_names(cluster) == Counter({"crashy-1": 1})


def test_a_reconcile_failing_past_the_quick_retries_is_retried_by_kopf(server: Server, cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    server.api.faults = [Fault("POST", "/configmaps", 503, times=len(RETRY_DELAYS_SECONDS) + 2)]
    operator = Operator(server).start()
    try:
        cluster.apply("late", qwen_lora())
        cluster.wait_phase("late", "Pending", "JobCreated")
    finally:
        operator.stop()
    assert server.api.faults[0].times == 0
    assert job_names(cluster) == Counter({"late-1": 1})
