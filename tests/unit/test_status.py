"""Table tests of the status machine: Job and pod state -> phase, reason, conditions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api import Phase, Reason
from kubetune.status import Observation, observe, status_patch, trainer_restarts, waiting_for_nodes


def job(
    *,
    condition: str | None = None,
    reason: str = "",
    suspend: bool = False,
    queue: str | None = None,
    started: bool = False,
    failed: int = 0,
    nodes: int = 1,
) -> dict[str, Any]:
    labels = {"kueue.x-k8s.io/queue-name": queue} if queue else {}
    status: dict[str, Any] = {"failed": failed}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": reason}]
    if started:
        status["startTime"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": {"name": "tune-1", "labels": labels},
        "spec": {"suspend": suspend, "activeDeadlineSeconds": 60, "parallelism": nodes},
        "status": status,
    }


def pod(
    phase: str, state: dict[str, Any] | None = None, conditions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if state is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    return {"metadata": {"name": "tune-1-0"}, "spec": {"nodeName": "h100-a"}, "status": status}


def terminated(code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "message": message,
            "finishedAt": "2026-01-01T01:00:00Z",
        }
    }


def trainer_says(reason: str, message: str) -> str:
    return json.dumps({"reason": reason, "message": message})


@pytest.mark.parametrize(
    ("job_state", "pods", "phase", "reason"),
    [
        (job(), [], Phase.PENDING, Reason.JOB_CREATED),
        (job(), [pod("Pending")], Phase.PENDING, Reason.PODS_PENDING),
        (job(), [pod("Running", {"running": {}})], Phase.RUNNING, Reason.TRAINING),
        (job(condition="Complete"), [pod("Succeeded", terminated(0))], Phase.SUCCEEDED, Reason.SUCCEEDED),
        (
            job(condition="Failed", reason="BackoffLimitExceeded"),
            [pod("Failed", terminated(137, "OOMKilled"))],
            Phase.FAILED,
            Reason.OOM_KILLED,
        ),
        (
            job(condition="Failed", reason="PodFailurePolicy"),
            [pod("Failed", terminated(13, message=trainer_says("OutOfMemory", "peak 30 GiB > 24 GiB")))],
            Phase.FAILED,
            Reason.OUT_OF_MEMORY,
        ),
        (
            job(condition="Failed", reason="PodFailurePolicy"),
            [pod("Failed", terminated(11, message=trainer_says("DatasetError", "no column text")))],
            Phase.FAILED,
            Reason.DATASET_ERROR,
        ),
        (
            job(condition="Failed", reason="PodFailurePolicy"),
            [pod("Failed", terminated(12, message=trainer_says("ModelLoadError", "no such repo")))],
            Phase.FAILED,
            Reason.MODEL_LOAD_ERROR,
        ),
        (
            job(condition="Failed", reason="PodFailurePolicy"),
            [pod("Failed", terminated(10))],
            Phase.FAILED,
            Reason.CONFIG_ERROR,
        ),
        (
            job(condition="Failed", reason="DeadlineExceeded"),
            [pod("Failed", terminated(143))],
            Phase.FAILED,
            Reason.DEADLINE_EXCEEDED,
        ),
        (
            job(condition="Failed", reason="BackoffLimitExceeded", failed=4),
            [pod("Failed", terminated(1))],
            Phase.FAILED,
            Reason.BACKOFF_LIMIT_EXCEEDED,
        ),
        (
            job(),
            [pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}})],
            Phase.PENDING,
            Reason.IMAGE_PULL_ERROR,
        ),
        (
            job(),
            [pod("Pending", {"waiting": {"reason": "ErrImagePull"}})],
            Phase.PENDING,
            Reason.IMAGE_PULL_ERROR,
        ),
        (
            job(),
            [
                pod(
                    "Pending",
                    conditions=[
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes have free nvidia.com/gpu",
                        }
                    ],
                )
            ],
            Phase.PENDING,
            Reason.UNSCHEDULABLE,
        ),
        (
            job(),
            [pod("Failed", terminated(137, "OOMKilled")), pod("Pending")],
            Phase.PENDING,
            Reason.PODS_PENDING,
        ),
        (job(suspend=True), [], Phase.SUSPENDED, Reason.SUSPENDED_BY_USER),
        (job(suspend=True, queue="gpus"), [], Phase.QUEUED, Reason.QUEUED_BY_KUEUE),
        (job(suspend=True, queue="gpus", started=True), [], Phase.QUEUED, Reason.EVICTED_BY_KUEUE),
    ],
    ids=[
        "a Job without pods is just created",
        "a pending pod keeps the job Pending",
        "a running trainer pod means Running",
        "a complete Job means Succeeded",
        "a pod killed for memory names OOMKilled over the backoff limit",
        "the trainer's OutOfMemory message is the reason",
        "the trainer's DatasetError message is the reason",
        "the trainer's ModelLoadError message is the reason",
        "a config error exit code without a message is ConfigError",
        "a Job past its deadline is DeadlineExceeded",
        "repeated generic crashes are BackoffLimitExceeded",
        "an image pull back-off is reported while pending",
        "an image pull error is reported while pending",
        "an unschedulable pod is reported with the scheduler's message",
        "a pod restarting after a failure is Pending",
        "a suspended Job without a queue is Suspended",
        "Kueue's suspended Job is Queued",
        "a Job Kueue suspended after it started was evicted",
    ],
)
def test_observe(job_state: dict[str, Any], pods: list[dict[str, Any]], phase: Phase, reason: Reason) -> None:
    observation = observe(job_state, pods)
    assert (observation.phase, observation.reason) == (phase, reason)
    assert observation.message


def conditions(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (
            Observation(Phase.FAILED, Reason.INVALID_SPEC, "spec.x: bad"),
            {"Validated": ("False", "InvalidSpec"), "Failed": ("True", "InvalidSpec")},
        ),
        (
            Observation(Phase.QUEUED, Reason.WAITING_FOR_GPUS, "busy"),
            {"Validated": ("True", "Valid"), "Schedulable": ("False", "WaitingForGPUs")},
        ),
        (
            Observation(Phase.FAILED, Reason.INSUFFICIENT_GPU_MEMORY, "needs 22 GiB"),
            {"Schedulable": ("False", "InsufficientGPUMemory"), "Failed": ("True", "InsufficientGPUMemory")},
        ),
        (
            Observation(Phase.RUNNING, Reason.TRAINING, "on h100-a"),
            {
                "Schedulable": ("True", "Placed"),
                "Running": ("True", "Training"),
                "Complete": ("False", "Training"),
            },
        ),
        (
            Observation(Phase.SUSPENDED, Reason.SUSPENDED_BY_USER, "paused"),
            {"Suspended": ("True", "SuspendedByUser")},
        ),
    ],
    ids=[
        "an invalid spec is Validated=False and Failed",
        "waiting for GPUs is Schedulable=False",
        "no fit is Schedulable=False and Failed",
        "running is placed and Running",
        "suspended sets the Suspended condition",
    ],
)
def test_conditions_follow_the_observation(
    observation: Observation, expected: dict[str, tuple[str, str]]
) -> None:
    patch = status_patch({}, observation, generation=1, now="t0")
    assert conditions(patch).items() >= expected.items()


def test_an_unchanged_state_needs_no_write() -> None:
    observation = Observation(Phase.RUNNING, Reason.TRAINING, "on h100-a")
    first = status_patch({}, observation, generation=1, now="t0")
    assert status_patch(first, observation, generation=1, now="t1") == {}


def test_transition_time_moves_only_when_the_status_changes() -> None:
    running = status_patch({}, Observation(Phase.RUNNING, Reason.TRAINING, "on a"), generation=1, now="t0")
    done = status_patch(
        running, Observation(Phase.SUCCEEDED, Reason.SUCCEEDED, "done"), generation=1, now="t1"
    )
    times = {c["type"]: c["lastTransitionTime"] for c in done["conditions"]}
    assert times["Validated"] == "t0" and times["Complete"] == "t1" and times["Running"] == "t1"
    assert done["completionTime"] == "t1" and "startTime" not in done


def test_out_of_memory_failure_quotes_the_estimate() -> None:
    current = {"estimate": {"perGpuGiB": 21.5}}
    patch = status_patch(
        current, Observation(Phase.FAILED, Reason.OUT_OF_MEMORY, "peak 30 GiB", 13), generation=1, now="t0"
    )
    assert patch["failure"] == {
        "reason": "OutOfMemory",
        "message": "peak 30 GiB (kubetune estimated 21.5 GiB per GPU)",
        "exitCode": 13,
    }


def test_a_failed_job_that_runs_again_loses_its_failure_and_completion_time() -> None:
    failed = status_patch(
        {}, Observation(Phase.FAILED, Reason.INVALID_SPEC, "spec.x: bad"), generation=1, now="t0"
    )
    again = status_patch(
        failed, Observation(Phase.PENDING, Reason.JOB_CREATED, "created"), generation=2, now="t1"
    )
    assert again["failure"] is None and again["completionTime"] is None


@pytest.mark.parametrize(
    ("job_state", "restarts"),
    [
        (job(), 0),
        (job(failed=2), 2),
        (job(condition="Complete", failed=1), 1),
        (job(condition="Failed", reason="BackoffLimitExceeded", failed=4), 3),
        (job(condition="Failed", reason="PodFailurePolicy", failed=1), 0),
        (job(condition="Failed", reason="DeadlineExceeded"), 0),
        (job(failed=2, nodes=2), 1),
        (job(failed=1, nodes=2), 1),
        (job(failed=3, nodes=2), 2),
    ],
    ids=[
        "a Job whose trainer never failed has no restarts",
        "each failed pod of a running Job was replaced: a restart",
        "a Job that succeeded after a failure restarted once",
        "the failure that ended a Job past its retries is no restart",
        "a Job failed at once by the pod failure policy never restarted",
        "a Job past its deadline without a pod failure never restarted",
        "a two-node gang whose pods both failed restarted once",
        "a two-node gang restarts when one of its pods failed",
        "a second gang failure, one pod so far, is a second restart",
    ],
)
def test_trainer_restarts(job_state: dict[str, Any], restarts: int) -> None:
    assert trainer_restarts(job_state) == restarts


def test_a_replaced_pod_counts_a_restart_and_the_job_stays_running() -> None:
    running = status_patch({}, observe(job(), [pod("Running", {"running": {}})]), generation=1, now="t0")
    replaced = [pod("Failed", terminated(1)), pod("Running", {"running": {}})]
    patch = status_patch(running, observe(job(failed=1), replaced), generation=1, now="t1")
    assert running["restarts"] == 0
    assert patch == {"restarts": 1}


def test_an_observation_without_a_job_keeps_the_restarts() -> None:
    current = {"restarts": 2, "phase": "Running"}
    suspended = Observation(Phase.SUSPENDED, Reason.SUSPENDED_BY_USER, "paused")
    assert "restarts" not in status_patch(current, suspended, generation=2, now="t1")


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
TYPES = ["NodePool l40s: 1x NVIDIA-L40S (45 GiB)"]


def unbound(pod_body: dict[str, Any]) -> dict[str, Any]:
    """The pod before the scheduler binds it to a node."""
    return {**pod_body, "spec": {}}


@pytest.mark.parametrize(
    ("pods", "node_types", "phase", "reason"),
    [
        ([], TYPES, Phase.QUEUED, Reason.WAITING_FOR_NODES),
        ([unbound(pod("Pending", conditions=[UNSCHEDULABLE]))], TYPES, Phase.QUEUED, Reason.WAITING_FOR_NODES),
        ([unbound(pod("Pending", conditions=[UNSCHEDULABLE]))], [], Phase.PENDING, Reason.UNSCHEDULABLE),
        ([pod("Pending")], TYPES, Phase.PENDING, Reason.PODS_PENDING),
        ([pod("Running", {"running": {}})], TYPES, Phase.RUNNING, Reason.TRAINING),
        ([pod("Pending", {"waiting": {"reason": "ImagePullBackOff"}})], TYPES, Phase.PENDING, Reason.IMAGE_PULL_ERROR),
    ],
    ids=[
        "a Job pinned to node types being added waits for the node, not for a pod",
        "its unschedulable pod waits for the node (the autoscaler adds it)",
        "without node types an unschedulable pod is a problem",
        "once the pod is bound to the new node it is pending like any pod",
        "then it runs",
        "an image that cannot be pulled is still said",
    ],
)
def test_waiting_for_nodes(pods: list[dict[str, Any]], node_types: list[str], phase: Phase, reason: Reason) -> None:
    observed = waiting_for_nodes(observe(job(), pods), pods, node_types)
    assert (observed.phase, observed.reason) == (phase, reason)
    if reason == Reason.WAITING_FOR_NODES:
        assert "NodePool l40s" in observed.message
        assert status_patch({}, observed, generation=1, now="t")["phase"] == "Queued"
