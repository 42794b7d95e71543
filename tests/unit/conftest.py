"""tests/unit: the rows of the trace grids (test_estimator_trace_grid.py, test_estimator_vision_trace.py) marked slow
run only when slow tests are selected (`-m slow`, or any marker expression naming slow): the default run does not
deselect `slow`, so they skip themselves there."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def only_when_slow_tests_are_selected(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("part of a full trace grid: run it with -m slow")
