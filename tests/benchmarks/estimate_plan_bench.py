"""Speed of the estimator and the planner, against bare loops measured in the same run.

    python -m tests.benchmarks.estimate_plan_bench      (or tests/benchmarks/run_estimate_plan.sh)

Targets (docs/estimator.md): an estimate under 1 ms; a plan over 5,000 nodes and 50,000 pods under
200 ms. Each figure is the median of several repetitions; the ratio compares it with a baseline
that does the least any implementation must do on the same input.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from kubetune.estimate import estimate
from kubetune.plan import NoFit, Placement, plan
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec

NODES = 5_000
PODS = 50_000
GPUS_PER_NODE = 8
PRODUCTS = (("NVIDIA-A10G", 23028), ("NVIDIA-L40S", 46068), ("NVIDIA-A100-SXM4-80GB", 81920),
            ("NVIDIA-H100-80GB-HBM3", 81559))


def cluster() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """5,000 GPU nodes of four products (some cordoned or tainted) and 50,000 pods, most holding GPUs."""
    nodes = []
    for index in range(NODES):
        product, memory = PRODUCTS[index % len(PRODUCTS)]
        nodes.append({
            "metadata": {"name": f"node-{index}", "labels": {
                "kubernetes.io/hostname": f"node-{index}", "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.memory": str(memory), "pool": "train" if index % 3 else "serve"}},
            "spec": {"unschedulable": index % 97 == 0,
                     "taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}] if index % 89 == 0 else []},
            "status": {"allocatable": {"cpu": "96", "memory": "1Ti", "nvidia.com/gpu": str(GPUS_PER_NODE)},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    pods = []
    for index in range(PODS):
        gpus = 1 if index % 5 else 0
        pods.append({
            "metadata": {"name": f"pod-{index}", "namespace": "team"},
            "spec": {"nodeName": f"node-{index % NODES}", "containers": [
                {"name": "main", "resources": {"limits": {"nvidia.com/gpu": str(gpus)} if gpus else {}}}]},
            "status": {"phase": "Succeeded" if index % 11 == 0 else "Running"},
        })
    return nodes, pods


def baseline_loop(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> int:
    """Touch every node's allocatable GPUs and every pod's node and phase: the least a planner reads."""
    total = 0
    for node in nodes:
        total += int(node["status"]["allocatable"].get("nvidia.com/gpu", 0))
    for pod in pods:
        total += pod["spec"].get("nodeName") is not None and pod["status"].get("phase") != "Succeeded"
    return total


def median_seconds(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def spec(**sections: Any) -> Any:
    return parse_spec({"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, "dataset": {"name": "a/b"},
                       **sections})


def main() -> None:
    nodes, pods = cluster()
    qlora = spec(method={"type": "qlora", "quantization": {"bits": 4}}, resources={"gpus": 2})
    calls = 2_000
    estimate_s = median_seconds(lambda: [estimate(qlora) for _ in range(calls)], 5) / calls
    presets_s = median_seconds(lambda: [effective_spec(qlora) for _ in range(calls)], 5) / calls
    print(f"estimate:            {estimate_s * 1e6:8.1f} us per call "
          f"({estimate_s / presets_s:.1f}x applying presets alone: {presets_s * 1e6:.1f} us); target < 1000 us")

    baseline_s = median_seconds(lambda: baseline_loop(nodes, pods), 5)
    print(f"baseline loop:       {baseline_s * 1e3:8.1f} ms over {NODES:,} nodes and {PODS:,} pods")
    fitting = spec(method={"type": "qlora", "quantization": {"bits": 4}},
                   resources={"gpus": 2, "nodeSelector": {"pool": "train"}})
    too_big = spec(method={"type": "full"}, training={"gradientCheckpointing": False},
                   resources={"gpus": 8, "nodes": 2, "gpuProduct": "NVIDIA-A10G"})
    cases = (("plan, placement", fitting, Placement), ("plan, no fit + suggestions", too_big, NoFit))
    for label, job, expected in cases:
        vram = estimate(job)
        result = plan(job, vram, nodes, pods)
        assert isinstance(result, expected), result
        seconds = median_seconds(lambda job=job, vram=vram: plan(job, vram, nodes, pods), 5)
        extra = f", {len(result.suggestions)} suggestions" if isinstance(result, NoFit) else ""
        print(f"{label + ':':<21}{seconds * 1e3:8.1f} ms ({seconds / baseline_s:.1f}x the baseline loop{extra}); "
              "target < 200 ms")


if __name__ == "__main__":
    main()
