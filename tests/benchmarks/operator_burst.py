"""Burst benchmark: 500 FineTuneJobs applied at once against the API emulation on loopback.

    python3 tests/benchmarks/operator_burst.py [--jobs 500] [--decompose]

Runs `kubetune operator --standalone` as a subprocess, then the floor (operator_burst_floor.py: a bare
kopf handler that does what any correct operator must do per job: create the Job, patch the status, post
an Event) the same way, in one run, and prints for each: time from
FineTuneJob created to Job created (p50, p99), time until every Job exists, API requests and writes
per FineTuneJob, the operator's CPU time until then and its peak RSS; for the operator also the API writes per job from
create to Succeeded (the harness plays the kubelet by writing pod and Job status directly into the
store, so every counted request is the operator's).

--decompose also runs the operator with its reconcile cut down (operator_burst_variants.py): one that only
creates the Job, and one that also writes the status and its Event, each against the same floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

from apiserver import WRITES, Server  # noqa: E402
from harness import FTJ, JOBS, NAMESPACE, Cluster, free_port, qwen_lora, wait_for, write_kubeconfig  # noqa: E402

GPUS_PER_NODE = 8
STARTUP_SECONDS = 60.0
BURST_TIMEOUT_SECONDS = 300.0


def operator_command() -> list[str]:
    return [sys.executable, "-m", "kubetune.cli", "operator", "--standalone"]


def variant_command(variant: str) -> list[str]:
    return [sys.executable, str(HERE / "operator_burst_variants.py"), variant]


def floor_command() -> list[str]:
    return [sys.executable, "-m", "kopf", "run", "--standalone", "-A", str(HERE / "operator_burst_floor.py")]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Recorder:
    """Creation times of FineTuneJobs and Jobs in the store, and the requests the operator sent."""

    def __init__(self, server: Server) -> None:
        self.created: dict[tuple[str, str], float] = {}
        api = server.api
        original = api.create

        def create(
            prefix: str, plural: str, namespace: str, obj: dict[str, Any]
        ) -> tuple[int, dict[str, Any]]:
            code, body = original(prefix, plural, namespace, obj)
            if code == 201 and plural in ("finetunejobs", "jobs"):
                name = body["metadata"]["name"]
                ftj = (
                    name
                    if plural == "finetunejobs"
                    else body["metadata"]["labels"]["kubetune.io/finetunejob"]
                )
                self.created.setdefault((plural, ftj), time.perf_counter())
            return code, body

        api.create = create  # type: ignore[method-assign]
        self.api = api

    def counts(self) -> tuple[int, int]:
        requests = sum(self.api.requests.values())
        writes = sum(n for (method, _), n in self.api.requests.items() if method in WRITES)
        return requests, writes


def run_kubelet(cluster: Cluster, names: list[str], nodes: int) -> None:
    """Every Job's pod runs on a node, then every Job completes."""
    for index, name in enumerate(names):
        cluster.start_pod(f"{name}-1", f"gpu-{index % nodes}")
    for name in names:
        cluster.finish_job(f"{name}-1", "Complete")


def burst(command: list[str], jobs: int, *, full_lifecycle: bool) -> dict[str, float]:
    server = Server().start()
    cluster = Cluster(server)
    nodes = jobs // GPUS_PER_NODE + 2
    for index in range(nodes):
        cluster.add_gpu_node(f"gpu-{index}", gpus=GPUS_PER_NODE)
    recorder = Recorder(server)
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-burst-"))
    kubeconfig = write_kubeconfig(server, workdir / "kubeconfig")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
        "KUBETUNE_HEALTH_PORT": str(free_port()),
        "KUBETUNE_LOG_FORMAT": "text",
    }
    with (workdir / "operator.log").open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cluster.apply("warmup", qwen_lora())
        wait_for(lambda: cluster.get(JOBS, "warmup-1"), STARTUP_SECONDS, "the warm-up Job")
        names = [f"burst-{index}" for index in range(jobs)]
        start_requests, start_writes = recorder.counts()
        start_cpu = cpu_seconds(process.pid)
        for name in names:
            cluster.apply(name, qwen_lora())
        wait_for(
            lambda: all(("jobs", n) in recorder.created for n in names), BURST_TIMEOUT_SECONDS, "all Jobs"
        )
        placed_at = max(recorder.created[("jobs", n)] for n in names)
        requests, writes = recorder.counts()
        cpu = cpu_seconds(process.pid) - start_cpu
        latencies = [recorder.created[("jobs", n)] - recorder.created[("finetunejobs", n)] for n in names]
        first = min(recorder.created[("finetunejobs", n)] for n in names)
        result = {
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * percentile(latencies, 0.99),
            "all_placed_s": placed_at - first,
            "cpu_s_to_placed": cpu,
            "requests_per_job": (requests - start_requests) / jobs,
            "writes_per_job_to_placed": (writes - start_writes) / jobs,
        }
        if full_lifecycle:
            run_kubelet(cluster, names, nodes)

            def all_succeeded() -> bool:
                items = cluster.items(FTJ, NAMESPACE)
                done = [i for i in items if (i.get("status") or {}).get("phase") == "Succeeded"]
                return len(done) >= jobs

            wait_for(all_succeeded, BURST_TIMEOUT_SECONDS, "every FineTuneJob Succeeded")
            time.sleep(1.0)  # let the background Event posts land before counting
            _, writes_done = recorder.counts()
            result["writes_per_job_to_succeeded"] = (writes_done - start_writes) / jobs
            events = (len(cluster.items(("/api/v1", "events"), NAMESPACE)) - 2) / jobs  # less the warm-up's
            result["events_per_job"] = events
            result["object_writes_per_job_to_succeeded"] = result["writes_per_job_to_succeeded"] - events
        result["jobs_per_finetunejob"] = len(cluster.items(JOBS, NAMESPACE)) / (jobs + 1)
        result["peak_rss_mib"] = peak_rss_mib(process.pid)
        return result
    finally:
        process.terminate()
        process.wait(30)
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--decompose", action="store_true",
                        help="also run the operator with its reconcile cut down (see operator_burst_variants.py)")
    args = parser.parse_args()
    sides = {"operator": burst(operator_command(), args.jobs, full_lifecycle=True)}
    if args.decompose:
        for variant in ("job-only", "job-and-status"):
            sides[variant] = burst(variant_command(variant), args.jobs, full_lifecycle=False)
    floor = burst(floor_command(), args.jobs, full_lifecycle=False)
    print(f"{args.jobs} FineTuneJobs in a burst (API emulation on loopback, {os.cpu_count()} CPUs)")
    print(f"{'':36}{'floor':>10}" + "".join(f"{name:>16}{'ratio':>7}" for name in sides))
    for key in sides["operator"]:
        base = floor.get(key)
        row = f"{key:36}{base if base is not None else float('nan'):10.2f}"
        for side in sides.values():
            ours = side.get(key, float("nan"))
            row += f"{ours:16.2f}" + (f"{ours / base:7.2f}" if base else " " * 7)
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
