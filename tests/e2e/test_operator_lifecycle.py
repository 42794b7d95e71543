"""The real operator (kopf) against the API emulation: FineTuneJob in, GPU Job out, a truthful status."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from harness import CONFIGMAPS, FTJ, JOBS, PODS, Cluster, Operator, qwen_lora, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def test_apply_creates_the_gpu_job_and_running_then_succeeded_show_in_status(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("tune", qwen_lora(hfTokenSecretRef={"name": "hf"}))
    job = cluster.wait_job("tune-1")
    pod = job["spec"]["template"]["spec"]
    trainer = pod["containers"][0]
    assert trainer["resources"]["limits"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert {e["key"] for e in terms[0]["matchExpressions"]} & {
        "nvidia.com/gpu.memory",
        "nvidia.com/gpu.product",
    }
    env = {e["name"]: e for e in trainer["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    configmap = wait_for(lambda: cluster.get(CONFIGMAPS, "tune-spec"), what="the spec ConfigMap")
    effective = yaml.safe_load(configmap["data"]["spec.yaml"])
    assert effective["training"]["batchSize"] == 4 and effective["method"]["lora"]["alpha"] == 32
    status = cluster.wait_phase("tune", "Pending", "JobCreated")
    assert status["jobName"] == "tune-1" and status["attempt"] == 1 and status["estimate"]["perGpuGiB"] > 1
    created = wait_for(lambda: [e for e in cluster.events("tune") if e["reason"] == "JobCreated"], what="the Event")
    assert created[0]["source"]["component"] == "kubetune-operator"  # `kubectl describe`'s "From"

    cluster.start_pod("tune-1", "h100-a")
    cluster.wait_phase("tune", "Running", "Training")
    cluster.finish_job("tune-1", "Complete")
    status = cluster.wait_phase("tune", "Succeeded", "Succeeded")
    assert status["completionTime"] and status["startTime"]
    # kopf posts Events in the background: wait for them.
    wait_for(
        lambda: {e["reason"] for e in cluster.events("tune")} >= {"JobCreated", "Training", "Succeeded"},
        what="an Event per transition",
    )


@pytest.mark.parametrize(
    ("terminated", "job_reason", "reason"),
    [
        ({"exitCode": 137, "reason": "OOMKilled"}, "BackoffLimitExceeded", "OOMKilled"),
        (
            {"exitCode": 13, "message": '{"reason": "OutOfMemory", "message": "peak 30 GiB"}'},
            "PodFailurePolicy",
            "OutOfMemory",
        ),
        (
            {"exitCode": 11, "message": '{"reason": "DatasetError", "message": "no column text"}'},
            "PodFailurePolicy",
            "DatasetError",
        ),
        ({"exitCode": 1, "message": "Traceback"}, "DeadlineExceeded", "DeadlineExceeded"),
        ({"exitCode": 1, "message": "Traceback"}, "BackoffLimitExceeded", "BackoffLimitExceeded"),
    ],
    ids=[
        "a pod killed for memory fails the job as OOMKilled",
        "the trainer's OutOfMemory termination message is the failure reason",
        "a dataset error from the trainer is the failure reason",
        "a job past its deadline fails as DeadlineExceeded",
        "generic crashes beyond the retries fail as BackoffLimitExceeded",
    ],
)
def test_failure_reason_comes_from_the_pod_or_the_job(
    cluster: Cluster, terminated: dict[str, Any], job_reason: str, reason: str
) -> None:
    cluster.add_gpu_node("h100-a")
    # onOutOfMemory Fail: the failure itself is what this test reads (Adjust is tested in test_operator_adjusts).
    cluster.apply("crash", qwen_lora(training={"onOutOfMemory": "Fail"}))
    cluster.start_pod("crash-1", "h100-a", {"terminated": terminated}, phase="Failed")
    cluster.finish_job("crash-1", "Failed", job_reason, failed=1)
    status = cluster.wait_phase("crash", "Failed", reason)
    assert status["failure"]["reason"] == reason
    wait_for(
        lambda: any(e["type"] == "Warning" and e["reason"] == reason for e in cluster.events("crash")),
        what=f"a Warning event {reason}",
    )


def test_image_pull_error_shows_while_the_pod_waits(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("pull", qwen_lora(image="example.invalid/trainer:nope"))
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    cluster.start_pod("pull-1", "h100-a", waiting, phase="Pending")
    status = cluster.wait_phase("pull", "Pending", "ImagePullError")
    assert "spec.image" in status["message"]


def test_invalid_spec_fails_with_the_field_and_runs_once_fixed(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("bad", qwen_lora(method={"type": "qlora"}))
    status = cluster.wait_phase("bad", "Failed", "InvalidSpec")
    assert "spec.method.quantization" in status["message"]
    assert cluster.items(JOBS) == []
    cluster.patch_spec("bad", {"method": {"type": "lora"}})
    status = cluster.wait_phase("bad", "Pending", "JobCreated")
    assert "failure" not in status and "completionTime" not in status


def test_too_small_gpus_fail_with_needed_vs_available_and_suggestions(cluster: Cluster) -> None:
    cluster.add_gpu_node("t4-a", product="Tesla-T4", memory_mib=15360)
    cluster.apply("big", qwen_lora())
    status = cluster.wait_phase("big", "Failed")
    schedulable = next(c for c in status["conditions"] if c["type"] == "Schedulable")
    assert schedulable["status"] == "False"
    assert "GiB" in status["message"]
    assert cluster.items(JOBS) == []


def test_queued_job_is_placed_when_a_gpu_frees(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("first", qwen_lora())
    cluster.start_pod("first-1", "h100-a")
    cluster.apply("second", qwen_lora())
    cluster.wait_phase("second", "Queued")
    assert cluster.get(JOBS, "second-1") is None
    cluster.start_pod("first-1", "h100-a", {"terminated": {"exitCode": 0}}, phase="Succeeded")
    cluster.finish_job("first-1", "Complete")
    cluster.wait_job("second-1")
    cluster.wait_phase("second", "Pending", "JobCreated")


def test_a_failed_pod_the_job_replaces_counts_a_restart_and_the_job_stays_running(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("flaky", qwen_lora())
    cluster.start_pod("flaky-1", "h100-a")
    assert cluster.wait_phase("flaky", "Running", "Training")["restarts"] == 0
    crashed = {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T01:00:00Z"}}
    cluster.start_pod("flaky-1", "h100-a", container_state=crashed, phase="Failed")
    cluster.job_status("flaky-1", {"failed": 1, "active": 1, "startTime": "2026-01-01T00:00:00Z"})
    cluster.start_pod("flaky-1", "h100-a", index=1)  # the Job controller's replacement

    def restarted_and_running() -> dict[str, Any] | None:
        status = cluster.status("flaky")
        return status if (status.get("restarts"), status.get("phase")) == (1, "Running") else None

    status = wait_for(restarted_and_running, what=f"one restart, Running (now {cluster.status('flaky')})")
    assert (status["attempt"], status["jobName"]) == (1, "flaky-1")
    assert [j["metadata"]["name"] for j in cluster.items(JOBS)] == ["flaky-1"]


def test_suspend_stops_the_job_and_resume_starts_a_new_attempt(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("pause", qwen_lora())
    cluster.start_pod("pause-1", "h100-a")
    cluster.wait_phase("pause", "Running")
    cluster.patch_spec("pause", {"suspend": True})
    cluster.wait_phase("pause", "Suspended", "SuspendedByUser")
    wait_for(lambda: cluster.get(JOBS, "pause-1") is None, what="the suspended Job to be deleted")
    cluster.patch_spec("pause", {"suspend": False})
    cluster.wait_job("pause-2")
    assert cluster.wait_phase("pause", "Pending", "JobCreated")["attempt"] == 2


def test_changing_the_model_after_start_is_refused(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("frozen", qwen_lora())
    cluster.wait_phase("frozen", "Pending", "JobCreated")
    cluster.patch_spec("frozen", {"model": {"name": "Qwen/Qwen2.5-1.5B"}})
    status = cluster.wait_phase("frozen", "Pending", "SpecFrozen")
    assert "spec.model.name" in status["message"]


def test_kueue_queue_name_creates_a_suspended_job_and_admission_runs_it(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("kq", qwen_lora(queueName="gpus"))
    job = cluster.wait_job("kq-1")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    cluster.wait_phase("kq", "Queued", "QueuedByKueue")
    cluster.set_job_suspended("kq-1", suspended=False)  # Kueue admits
    cluster.start_pod("kq-1", "h100-a")
    cluster.wait_phase("kq", "Running", "Training")
    cluster.job_status("kq-1", {"startTime": "2026-01-01T00:00:00Z"})
    cluster.set_job_suspended("kq-1", suspended=True)  # Kueue evicts (preemption, quota)
    cluster.delete(PODS, "kq-1-0")
    status = cluster.wait_phase("kq", "Queued", "EvictedByKueue")
    assert "checkpoint" in status["message"]


def test_deleting_the_finetunejob_removes_its_job_and_configmap(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("gone", qwen_lora())
    cluster.wait_job("gone-1")
    cluster.delete(FTJ, "gone")
    wait_for(
        lambda: cluster.get(JOBS, "gone-1") is None and cluster.get(CONFIGMAPS, "gone-spec") is None,
        what="children deleted",
    )


def test_ttl_deletes_a_finished_finetunejob(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("ttl", qwen_lora(ttlSecondsAfterFinished=0))
    cluster.finish_job("ttl-1", "Complete") if cluster.wait_job("ttl-1") else None
    wait_for(lambda: cluster.get(FTJ, "ttl") is None, what="the FineTuneJob deleted after its TTL")


def test_restarted_operator_creates_no_second_job(cluster: Cluster, operator: Operator) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.add_gpu_node("h100-b")
    cluster.apply("again", qwen_lora())
    cluster.wait_job("again-1")
    operator.stop()
    operator.start()
    cluster.wait_phase("again", "Pending", "JobCreated")
    assert [j["metadata"]["name"] for j in cluster.items(JOBS)] == ["again-1"]


def test_a_suspend_set_while_the_operator_was_down_takes_effect_at_start_and_resume_after(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("offline", qwen_lora())
    cluster.wait_phase("offline", "Pending", "JobCreated")
    operator.stop()
    cluster.patch_spec("offline", {"suspend": True})
    operator.start()
    cluster.wait_phase("offline", "Suspended", "SuspendedByUser")
    cluster.patch_spec("offline", {"suspend": False})
    assert cluster.wait_phase("offline", "Pending", "JobCreated")["attempt"] == 2


def test_the_operator_writes_no_bookkeeping_annotations_on_a_finetunejob(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    cluster.apply("clean", qwen_lora())
    cluster.wait_phase("clean", "Pending", "JobCreated")
    assert not (cluster.get(FTJ, "clean") or {})["metadata"].get("annotations")


def test_a_burst_never_places_two_jobs_on_one_free_gpu(cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    names = ("x", "y", "z")
    for name in names:
        cluster.apply(name, qwen_lora())

    def queued() -> int:
        return sum(cluster.status(name).get("phase") == "Queued" for name in names)

    wait_for(lambda: queued() == 2, what="two of three FineTuneJobs Queued")
    assert len(cluster.items(JOBS)) == 1
