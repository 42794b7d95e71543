"""GPU reservations of created Jobs whose pods are not bound yet, as the planner sees them."""

from __future__ import annotations

import pytest

from kubetune.plan import gpus_in_use
from kubetune.reconcile import Reservations


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
