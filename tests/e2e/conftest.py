"""e2e fixtures: the API emulation on loopback, the real operator (kopf) in a thread."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness modules next to this file

from apiserver import Server
from harness import Cluster, Operator


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server().start()
    yield running
    running.stop()


@pytest.fixture
def cluster(server: Server) -> Cluster:
    return Cluster(server)


@pytest.fixture
def operator(server: Server) -> Iterator[Operator]:
    running = Operator(server).start()
    yield running
    running.stop()
