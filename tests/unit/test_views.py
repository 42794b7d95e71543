"""The views the operator keeps of Jobs, pods and FineTuneJobs read the same as the whole objects, and are
much smaller."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kubetune import manifests
from kubetune.plan import gpus_in_use, pod_gpus
from kubetune.presets import effective_spec
from kubetune.status import observe
from kubetune.validation import parse_spec
from kubetune.views import finetunejob_view, job_view, pod_view

OWNER = manifests.Owner(name="tune", namespace="team-a", uid="uid-1")
SPEC = effective_spec(parse_spec({"model": {"name": "Qwen/Qwen2.5-7B"}, "dataset": {"name": "tatsu-lab/alpaca"},
                                  "resources": {"gpus": 2}, "hfTokenSecretRef": {"name": "hf"}}))
# What a real API server adds to every object: a few KiB of field ownership.
MANAGED_FIELDS = [{"manager": f"manager-{index}", "operation": "Update", "fieldsType": "FieldsV1",
                   "fieldsV1": {f"f:field-{n}": {} for n in range(60)}} for index in range(3)]


def real_job(spec_changes: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The Job the operator builds, as the API server returns it with this status."""
    job = manifests.build_job(OWNER, SPEC, 1, image="trainer", status_interval_seconds=30, node_affinity=None)
    job["metadata"] |= {"uid": "job-uid", "resourceVersion": "7", "managedFields": copy.deepcopy(MANAGED_FIELDS)}
    job["spec"] |= spec_changes
    return job | {"status": status}


def real_pod(status: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    """A pod of that Job on a node, with this status."""
    job = real_job({}, {})
    template = job["spec"]["template"]
    metadata = {**template["metadata"], "name": "tune-1-abcde", "namespace": "team-a",
                "managedFields": copy.deepcopy(MANAGED_FIELDS)}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {**template["spec"], "nodeName": "h100-a"}, "status": status}


def trainer(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "trainer", "state": state, "imageID": "sha256:" + "0" * 64, "restartCount": 0}]


OOM = {"terminated": {"exitCode": 13, "reason": "Error", "finishedAt": "2026-01-01T01:00:00Z",
                      "message": json.dumps({"reason": "OutOfMemory", "message": "peak 80 GiB"})}}
STATES: list[tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = [
    ("a created Job with no pod yet", {}, {}, []),
    ("a running pod", {}, {"startTime": "t"}, [real_pod({"phase": "Running", "containerStatuses": trainer(
        {"running": {}})})]),
    ("a pod being deleted", {}, {"active": 1}, [real_pod({"phase": "Running"}, deleting=True)]),
    ("a pod that cannot pull its image", {}, {}, [real_pod({"phase": "Pending", "containerStatuses": trainer(
        {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}})})]),
    ("an unschedulable pod", {}, {}, [real_pod({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]})]),
    ("the trainer's OutOfMemory", {}, {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}, [real_pod({"phase": "Failed",
                                                                             "containerStatuses": trainer(OOM)})]),
    ("a Job past its deadline", {"activeDeadlineSeconds": 60}, {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}, []),
    ("a retried two-node gang", {"parallelism": 2}, {"failed": 3, "active": 2}, []),
    ("a suspended Job", {"suspend": True}, {"startTime": "t"}, []),
    ("a completed Job", {}, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}, []),
]


@pytest.mark.parametrize(("spec_changes", "status", "pods"), [case[1:] for case in STATES],
                         ids=[f"the status machine reads {case[0]} the same from the views" for case in STATES])
def test_the_status_machine_reads_the_views_as_the_whole_objects(
    spec_changes: dict[str, Any], status: dict[str, Any], pods: list[dict[str, Any]]
) -> None:
    job = real_job(spec_changes, status)
    assert observe(job_view(job), [pod_view(pod) for pod in pods]) == observe(job, pods)


def test_the_planner_counts_the_same_gpus_in_pod_views() -> None:
    pods = [real_pod({"phase": "Running"}), real_pod({"phase": "Succeeded"})]
    init = real_pod({"phase": "Pending"})
    init["spec"]["initContainers"] = [{"name": "warm", "image": "x",
                                       "resources": {"limits": {"nvidia.com/gpu": "4"}}}]
    pods.append(init)
    assert [pod_gpus(pod_view(pod)) for pod in pods] == [pod_gpus(pod) for pod in pods] == [2, 2, 4]
    assert gpus_in_use(pod_view(pod) for pod in pods) == gpus_in_use(pods)


@pytest.mark.parametrize(
    ("whole", "view", "at_most"),
    [
        (real_job({}, {"active": 1}), job_view, 0.15),
        (real_pod({"phase": "Running"}), pod_view, 0.15),
    ],
    ids=["a Job's view leaves out its pod template and managedFields",
         "a pod's view leaves out its spec but its node and resources, and managedFields"],
)
def test_views_are_a_fraction_of_the_object(whole: dict[str, Any], view: Any, at_most: float) -> None:
    assert len(json.dumps(view(whole))) <= at_most * len(json.dumps(whole))


def test_a_finetunejob_view_keeps_what_the_reconcile_reads_and_drops_the_rest() -> None:
    applied = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "spec": SPEC.to_wire()}
    ftj = {
        **applied,
        "metadata": {"name": "tune", "namespace": "team-a", "uid": "uid-1", "generation": 2, "labels": {"a": "b"},
                     "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "9",
                     "managedFields": copy.deepcopy(MANAGED_FIELDS),
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied)}},
        "status": {"phase": "Running", "attempt": 1, "jobName": "tune-1"},
    }
    view = finetunejob_view(ftj)
    assert view["spec"] == ftj["spec"] and view["status"] == ftj["status"]
    assert view["metadata"] == {"name": "tune", "namespace": "team-a", "uid": "uid-1", "generation": 2,
                                "labels": {"a": "b"}, "creationTimestamp": "2026-01-01T00:00:00Z"}
    assert manifests.Owner.of(view) == manifests.Owner.of(ftj)
