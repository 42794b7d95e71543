"""`kubetune operator` as a process: it reconciles, answers its liveness probe and serves /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver import Server
from harness import Cluster, free_port, qwen_lora, wait_for, write_kubeconfig

STARTUP_SECONDS = 30.0


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def ports(server: Server, tmp_path: Path) -> Iterator[tuple[int, int]]:
    metrics, health = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(write_kubeconfig(server, tmp_path / "kubeconfig")),
        "KUBETUNE_OPERATOR_METRICS_PORT": str(metrics),
        "KUBETUNE_HEALTH_PORT": str(health),
        "KUBETUNE_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune.cli", "operator", "--standalone"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield metrics, health
    process.terminate()
    process.wait(30)


def test_the_operator_process_reconciles_and_reports_health_and_metrics(
    cluster: Cluster, ports: tuple[int, int]
) -> None:
    metrics, health = ports
    cluster.add_gpu_node("h100-a")
    cluster.apply("proc", qwen_lora())
    wait_for(lambda: cluster.get(("/apis/batch/v1", "jobs"), "proc-1"), STARTUP_SECONDS, "the Job")
    assert wait_for(lambda: get(f"http://127.0.0.1:{health}/healthz")[0] == 200, what="/healthz")
    text = wait_for(lambda: get(f"http://127.0.0.1:{metrics}/metrics")[1], what="/metrics")
    assert 'kubetune_operator_reconcile_total{outcome="ok"} 1.0' in text
    assert 'kubetune_operator_finetunejobs{phase="Pending"} 1.0' in text
