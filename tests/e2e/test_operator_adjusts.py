"""The operator learns from finished attempts and recovers from an out-of-memory, against the API emulation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from harness import CALIBRATION_NAMESPACE, CONFIGMAPS, JOBS, Cluster, qwen_lora, wait_for

OOM = {"terminated": {"exitCode": 13, "message": '{"reason": "OutOfMemory", "message": "CUDA out of memory"}'}}
pytestmark = pytest.mark.usefixtures("operator")

SUCCEEDED = {"terminated": {"exitCode": 0, "reason": "Completed"}}


def run_out_of_memory(cluster: Cluster, job_name: str) -> None:
    cluster.start_pod(job_name, "h100-a", OOM, phase="Failed")
    cluster.finish_job(job_name, "Failed", "PodFailurePolicy", failed=1)


def effective_spec_in_configmap(cluster: Cluster, name: str) -> dict[str, Any]:
    configmap = cluster.get(CONFIGMAPS, f"{name}-spec")
    assert configmap is not None
    return yaml.safe_load(configmap["data"]["spec.yaml"])


def training_of(cluster: Cluster, name: str) -> dict[str, Any]:
    return effective_spec_in_configmap(cluster, name)["training"]


@pytest.mark.parametrize("batch", [2], ids=["a two-sequence micro-batch without checkpointing"])
def test_an_out_of_memory_starts_an_adjusted_attempt_from_the_checkpoint(cluster: Cluster, batch: int) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("big", qwen_lora(training={"batchSize": batch, "gradientAccumulationSteps": 2,
                                             "gradientCheckpointing": False}))
    cluster.wait_job("big-1")
    before = training_of(cluster, "big")
    cluster.trainer_status("big", {"lastCheckpoint": {"step": 400, "path": "/output/checkpoint-400",
                                                      "time": "2026-01-01T00:10:00Z"}})
    run_out_of_memory(cluster, "big-1")
    cluster.wait_job("big-2")
    status = cluster.wait_phase("big", "Pending", "JobCreated")
    assert status["attempt"] == 2 and len(status["adjustments"]) == 1
    adjustment = status["adjustments"][0]
    assert adjustment["attempt"] == 1
    assert "resumes from checkpoint-400" in adjustment["message"]
    assert "OutOfMemory at 79.65 GiB on NVIDIA-H100-80GB-HBM3" in adjustment["message"]
    after = wait_for(lambda: training_of(cluster, "big") if training_of(cluster, "big") != before else None,
                     what="the adjusted ConfigMap")
    assert after["batchSize"] < before["batchSize"]
    assert after["batchSize"] * after["gradientAccumulationSteps"] == batch * 2  # the same effective batch
    assert (cluster.get(JOBS, "big-2") or {})["spec"]["template"]["spec"]["volumes"]  # the same output volume
    adjusted = {c["type"]: c for c in status["conditions"]}["Adjusted"]
    assert adjusted["status"] == "True" and "batchSize" in adjusted["message"]
    assert any(e["reason"] == "AdjustedAfterOutOfMemory" for e in cluster.events("big"))
    assert "failure" not in status
    # The user's spec is never edited.
    assert (cluster.get(("/apis/kubetune.io/v1alpha1", "finetunejobs"), "big") or {})["spec"]["training"][
        "batchSize"] == batch


def test_adjustments_stop_after_three_and_the_job_fails_with_the_numbers(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("huge", qwen_lora(training={"batchSize": 16, "gradientAccumulationSteps": 1}))
    for attempt in range(1, 5):
        cluster.wait_job(f"huge-{attempt}")
        node = (cluster.status("huge").get("placement") or {}).get("nodes", ["h100-a"])[0]
        cluster.start_pod(f"huge-{attempt}", node, OOM, phase="Failed")
        cluster.finish_job(f"huge-{attempt}", "Failed", "PodFailurePolicy", failed=1)
        if attempt < 4:
            wait_for(lambda a=attempt: cluster.status("huge").get("attempt") == a + 1, what=f"attempt {attempt + 1}")
    status = cluster.wait_phase("huge", "Failed", "OutOfMemory")
    assert len(status["adjustments"]) == 3
    assert "3 adjustments made already" in status["failure"]["message"]
    assert "qlora" in status["failure"]["message"]  # suggested, never applied
    assert cluster.get(JOBS, "huge-5") is None


def test_on_out_of_memory_fail_keeps_the_failure(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("strict", qwen_lora(training={"onOutOfMemory": "Fail"}))
    cluster.wait_job("strict-1")
    run_out_of_memory(cluster, "strict-1")
    status = cluster.wait_phase("strict", "Failed", "OutOfMemory")
    assert "adjustments" not in status or status["adjustments"] == []


def test_a_measured_run_raises_the_next_estimate_of_its_shape(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a", gpus=2)
    cluster.apply("first", qwen_lora())
    cluster.wait_job("first-1")
    analytic = cluster.status("first")["estimate"]["perGpuGiB"]
    cluster.start_pod("first-1", "h100-a")
    cluster.trainer_status("first", {"training": {"step": 10, "peakGpuMemoryGiB": round(analytic * 1.3, 2)}})
    cluster.start_pod("first-1", "h100-a", SUCCEEDED, phase="Succeeded")
    cluster.finish_job("first-1", "Complete", succeeded=1)
    cluster.wait_phase("first", "Succeeded")
    store = wait_for(lambda: cluster.get(CONFIGMAPS, "kubetune-calibration", CALIBRATION_NAMESPACE),
                     what="the calibration ConfigMap")
    records = json.loads(store["data"]["records.json"])["records"]
    assert len(records) == 1 and records[0]["outcome"] == "Succeeded"
    assert records[0]["measuredGiB"] == pytest.approx(analytic * 1.3 + 0.6, abs=0.02)

    cluster.apply("second", qwen_lora(training={"learningRate": 1e-4}))  # the same shape
    estimate = wait_for(lambda: cluster.status("second").get("estimate"), what="the second estimate")
    assert estimate["analyticGiB"] == analytic
    assert estimate["calibrationRecords"] == 1
    assert estimate["perGpuGiB"] == pytest.approx(analytic * 1.3 + 0.6, abs=0.02)
    assert "raised" in estimate["calibration"]


@pytest.mark.parametrize("peak", [1e300, -5.0], ids=["an absurd peak from the trainer", "a negative peak"])
def test_a_peak_no_bound_admits_teaches_nothing_and_the_job_still_succeeds(cluster: Cluster, peak: float) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("odd", qwen_lora())
    cluster.wait_job("odd-1")
    cluster.start_pod("odd-1", "h100-a")
    cluster.trainer_status("odd", {"training": {"step": 10, "peakGpuMemoryGiB": peak}})
    cluster.start_pod("odd-1", "h100-a", SUCCEEDED, phase="Succeeded")
    cluster.finish_job("odd-1", "Complete", succeeded=1)
    cluster.wait_phase("odd", "Succeeded")
    assert cluster.get(CONFIGMAPS, "kubetune-calibration", CALIBRATION_NAMESPACE) is None


def test_a_calibration_store_the_operator_may_not_write_never_holds_up_the_status(
    server: Any, cluster: Cluster
) -> None:
    from apiserver import Fault

    server.api.faults = [Fault("POST", f"/namespaces/{CALIBRATION_NAMESPACE}/configmaps", 403, times=100)]
    cluster.add_gpu_node("h100-a")
    cluster.apply("denied", qwen_lora())
    cluster.wait_job("denied-1")
    cluster.start_pod("denied-1", "h100-a")
    cluster.trainer_status("denied", {"training": {"step": 10, "peakGpuMemoryGiB": 30.0}})
    cluster.start_pod("denied-1", "h100-a", SUCCEEDED, phase="Succeeded")
    cluster.finish_job("denied-1", "Complete", succeeded=1)
    cluster.wait_phase("denied", "Succeeded")
    # Kept in memory: the next job of the shape is planned with it all the same.
    cluster.apply("after", qwen_lora(training={"learningRate": 1e-4}))
    estimate = wait_for(lambda: cluster.status("after").get("estimate"), what="the next estimate")
    assert estimate["calibrationRecords"] == 1
