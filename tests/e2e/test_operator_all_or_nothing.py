"""Reserve -> build -> create is all or nothing, reservations outlive a restart, and a reconcile that
keeps failing ends in a status and Events after a bounded number of backed-off tries."""

from __future__ import annotations

from typing import Any

import pytest
from apiserver import Fault, Server
from harness import CONFIGMAPS, JOBS, NAMESPACE, Cluster, Operator, qwen_lora, wait_for

from kubetune import manifests, reconcile
from kubetune.reconcile import MAX_RECONCILE_FAILURES


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "FIRST_RETRY_SECONDS", 0.05)


def build_job_failing_for(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = manifests.build_job

    def build(owner: manifests.Owner, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if owner.name == name:
            raise ValueError("'1.2.3Gi' is not a Kubernetes quantity")
        return real(owner, *args, **kwargs)

    monkeypatch.setattr(manifests, "build_job", build)


def refuse_job_creates(server: Server, _: pytest.MonkeyPatch) -> None:
    server.api.faults = [Fault("POST", "/jobs", 422, times=MAX_RECONCILE_FAILURES)]


@pytest.mark.parametrize(
    "break_first_job",
    [
        lambda server, monkeypatch: build_job_failing_for("broken", monkeypatch),
        refuse_job_creates,
    ],
    ids=["a Job build that raises releases its GPU", "a Job create answered 422 releases its GPU"],
)
def test_a_failed_placement_leaves_no_reservation_and_says_why(
    server: Server, cluster: Cluster, monkeypatch: pytest.MonkeyPatch, break_first_job: Any
) -> None:
    cluster.add_gpu_node("h100-only")
    break_first_job(server, monkeypatch)

    def warnings() -> list[dict[str, Any]]:
        return [e for e in cluster.events("broken") if e.get("reason") == "InternalError"]

    operator = Operator(server).start()
    try:
        cluster.apply("broken", qwen_lora())
        status = cluster.wait_phase("broken", "Failed", "InternalError")
        cluster.apply("next", qwen_lora())
        cluster.wait_phase("next", "Pending", "JobCreated")
        wait_for(lambda: len(warnings()) >= MAX_RECONCILE_FAILURES, what="a Warning per try (posted in the background)")
    finally:
        operator.stop()
    assert f"gave up after {MAX_RECONCILE_FAILURES} tries" in status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InternalError")
    assert len(warnings()) == MAX_RECONCILE_FAILURES, "one Warning per try, and no more"
    assert all(e["type"] == "Warning" and "Traceback" not in e["message"] for e in warnings())
    assert cluster.get(JOBS, "broken-1") is None


def test_a_reconcile_that_fails_a_few_times_then_succeeds_places_the_job(
    server: Server, cluster: Cluster
) -> None:
    cluster.add_gpu_node("h100-only")
    server.api.faults = [Fault("POST", "/jobs", 422, times=2)]
    operator = Operator(server).start()
    try:
        cluster.apply("flaky", qwen_lora())
        status = cluster.wait_phase("flaky", "Pending", "JobCreated")
        wait_for(lambda: any(e.get("reason") == "InternalError" for e in cluster.events("flaky")), what="the Warning")
    finally:
        operator.stop()
    assert status["jobName"] == "flaky-1"
    assert "InternalError" not in {c["reason"] for c in status["conditions"]}


def test_a_restarted_operator_counts_the_gpus_of_unbound_jobs_as_taken(server: Server, cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-only")
    operator = Operator(server).start()
    try:
        cluster.apply("first", qwen_lora())
        cluster.wait_phase("first", "Pending", "JobCreated")
    finally:
        operator.stop()
    operator = Operator(server).start()  # a restart, or another replica taking over: no memory of "first"
    try:
        cluster.apply("second", qwen_lora())
        cluster.wait_phase("second", "Queued", "WaitingForGPUs")
        cluster.delete(JOBS, "first-1")  # its GPU is free again: the waiting job takes it
        cluster.wait_phase("second", "Pending", "JobCreated")
    finally:
        operator.stop()
    assert cluster.get(JOBS, "second-1") is not None


def test_a_child_name_held_by_someone_else_is_refused_naming_the_holder(server: Server, cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-only")
    squatter = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "taken-spec", "namespace": NAMESPACE}}
    server.call(server.api.create, *CONFIGMAPS, NAMESPACE, squatter)
    operator = Operator(server).start()
    try:
        cluster.apply("taken", qwen_lora())
        status = cluster.wait_phase("taken", "Failed", "InternalError")
        cluster.apply("next", qwen_lora())
        cluster.wait_phase("next", "Pending", "JobCreated")
    finally:
        operator.stop()
    assert "ConfigMap name taken-spec is taken by an object no FineTuneJob owns" in status["message"]
    assert cluster.get(JOBS, "taken-1") is None, "no Job without its ConfigMap"
    assert "ownerReferences" not in (cluster.get(CONFIGMAPS, "taken-spec") or {})["metadata"]
