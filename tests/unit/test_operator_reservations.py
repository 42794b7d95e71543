"""GPU reservations of created Jobs whose pods are not bound yet, as the planner sees them; failed
reconciles as the status says them."""

from __future__ import annotations

import pytest

from kubetune import contract, manifests
from kubetune.api import Phase, Reason
from kubetune.kube import KubeError
from kubetune.plan import gpus_in_use
from kubetune.reconcile import (
    MAX_ERROR_CHARS,
    MAX_RECONCILE_FAILURES,
    MAX_RETRY_SECONDS,
    Reservations,
    error_summary,
    failure_observation,
    held_gpus,
    retry_delay,
)
from kubetune.views import job_view


def reserved(steps: list[tuple[str, str, tuple[str, ...], int]]) -> dict[str, int]:
    reservations = Reservations()
    for action, job, nodes, gpus in steps:
        if action == "reserve":
            reservations.reserve(("ns", job), nodes, gpus)
        else:
            reservations.release(("ns", job))
    return dict(gpus_in_use(reservations.as_pods()))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("reserve", "a-1", ("n1",), 2), ("reserve", "b-1", ("n1",), 1)], {"n1": 3}),
        ([("reserve", "a-1", ("n1", "n2"), 4)], {"n1": 4, "n2": 4}),
        (
            [("reserve", "a-1", ("n1",), 2), ("reserve", "b-1", ("n1",), 1), ("release", "a-1", (), 0)],
            {"n1": 1},
        ),
        ([("reserve", "a-1", ("n1",), 2), ("release", "a-1", (), 0)], {}),
        ([("reserve", "a-1", ("n1",), 2), ("reserve", "a-1", ("n1",), 2)], {"n1": 2}),
        ([("reserve", "cpu-1", ("n1",), 0)], {}),
        ([("release", "never-1", (), 0)], {}),
    ],
    ids=[
        "two jobs on one node add up",
        "a multi-node job holds GPUs on each node",
        "releasing one job frees only its GPUs",
        "a node with nothing reserved disappears",
        "reserving the same Job twice counts once",
        "a CPU-only job reserves nothing",
        "releasing an unknown Job changes nothing",
    ],
)
def test_reservations(steps: list[tuple[str, str, tuple[str, ...], int]], expected: dict[str, int]) -> None:
    assert reserved(steps) == expected


@pytest.mark.parametrize(
    ("reserved_at", "exists", "expected"),
    [
        (0.0, False, {}),
        (990.0, False, {"n1": 2}),
        (0.0, True, {"n1": 2}),
    ],
    ids=[
        "a reservation whose Job left the cluster long ago is released",
        "a reservation for a Job being created is kept while it may not show yet",
        "a reservation whose Job exists is kept",
    ],
)
def test_stale_reservations_are_pruned(reserved_at: float, exists: bool, expected: dict[str, int]) -> None:
    reservations = Reservations()
    reservations.reserve(("ns", "a-1"), ("n1",), 2, at=reserved_at)
    reservations.prune(lambda job: exists, now=1000.0)
    assert dict(gpus_in_use(reservations.as_pods())) == expected


# ------------------------------------------------------------ reservations read back from Jobs


def job(annotation: str | None, *, conditions: list[dict[str, str]] | None = None, deleting: bool = False) -> dict:
    meta: dict = {"name": "a-1", "namespace": "ns"}
    if annotation is not None:
        meta["annotations"] = {contract.ANNOTATION_GPU_RESERVATION: annotation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": conditions or []}}


BOUND = {"spec": {"nodeName": "n1"}}
UNBOUND = {"spec": {"nodeName": None}}
COMPLETE = [{"type": "Complete", "status": "True"}]


@pytest.mark.parametrize(
    ("annotated", "pods", "expected"),
    [
        (job("2:n1"), [], (("n1",), 2)),
        (job("4:n1,n2"), [UNBOUND], (("n1", "n2"), 4)),
        (job("2:n1"), [UNBOUND, BOUND], None),
        (job("2:n1", conditions=COMPLETE), [], None),
        (job("2:n1", deleting=True), [], None),
        (job(None), [], None),
        (job("two:n1"), [], None),
        (job("0:n1"), [], None),
        (job("2:"), [], None),
        (job("²:n1"), [], None),
        (job("99999999999999999999:n1"), [], None),
    ],
    ids=[
        "a Job without pods holds its GPUs",
        "a multi-node Job whose pods are not bound holds GPUs on each node",
        "a Job with a bound pod holds nothing the planner cannot see",
        "a finished Job holds nothing",
        "a Job being deleted holds nothing",
        "a Job without the annotation holds nothing",
        "a count that is not a number is ignored",
        "a count of zero is ignored",
        "an annotation without nodes is ignored",
        "a non-ASCII digit is ignored, not a crash",
        "an absurd count is ignored",
    ],
)
def test_held_gpus(annotated: dict, pods: list[dict], expected: tuple[tuple[str, ...], int] | None) -> None:
    assert held_gpus(annotated, pods) == expected


def test_a_reservation_written_on_a_job_reads_back_through_the_view() -> None:
    written = manifests.with_reservation({"metadata": {"name": "a-1", "annotations": {"other": "x"}}}, ("n1", "n2"), 8)
    kept = job_view(written)
    assert kept["metadata"]["annotations"] == {contract.ANNOTATION_GPU_RESERVATION: "8:n1,n2"}
    assert manifests.reservation_of(kept["metadata"]["annotations"]) == (("n1", "n2"), 8)


# ------------------------------------------------------------ failed reconciles: retried, bounded


@pytest.mark.parametrize(
    ("phase", "error", "failures", "expected_phase", "expected_text"),
    [
        (None, ValueError("bad quantity"), 1, Phase.PENDING, "ValueError: bad quantity); try 2 of 5 in 2 s"),
        ("Queued", KubeError(422, "create Job a-1: no"), 3, Phase.QUEUED, "(HTTP 422: create Job a-1: no); try 4"),
        ("Running", RuntimeError("boom"), MAX_RECONCILE_FAILURES, Phase.FAILED, "gave up after 5 tries"),
        ("Nonsense", KeyError("x"), 1, Phase.PENDING, "KeyError: 'x'"),
    ],
    ids=[
        "a first failure keeps the job Pending and says when it is tried again",
        "an API refusal is quoted as the API server answered, and the phase is kept",
        "the last failure fails the job and says how to try again",
        "a phase the operator does not know reads as Pending",
    ],
)
def test_failure_observation(
    phase: str | None, error: Exception, failures: int, expected_phase: Phase, expected_text: str
) -> None:
    observation = failure_observation(phase, error, failures)
    assert (observation.phase, observation.reason) == (expected_phase, Reason.INTERNAL_ERROR)
    assert expected_text in observation.message


def test_retries_back_off_exponentially_up_to_a_bound() -> None:
    delays = [retry_delay(failures) for failures in range(1, 12)]
    assert delays[:3] == [2.0, 4.0, 8.0]
    assert max(delays) == MAX_RETRY_SECONDS


def test_an_error_message_is_one_bounded_line() -> None:
    summary = error_summary(ValueError("line one\nline two " + "x" * 5000))
    assert "\n" not in summary
    assert len(summary) <= MAX_ERROR_CHARS
