"""e2e harness: what a user and a kubelet do to the API emulation, and the operator in a thread."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apiserver import Server, merge_patch

# Fast re-planning so the Queued tests do not wait a minute.
os.environ.setdefault("KUBETUNE_REPLAN_INTERVAL_SECONDS", "0.5")
os.environ.setdefault("KUBETUNE_OPERATOR_METRICS_PORT", "0")
os.environ.setdefault("KUBETUNE_LOG_FORMAT", "text")
# The operator keeps its calibration store in a ConfigMap of its own namespace.
CALIBRATION_NAMESPACE = "kubetune-system"
os.environ.setdefault("KUBETUNE_CALIBRATION_NAMESPACE", CALIBRATION_NAMESPACE)

FTJ = ("/apis/kubetune.io/v1alpha1", "finetunejobs")
JOBS = ("/apis/batch/v1", "jobs")
PODS = ("/api/v1", "pods")
NODES = ("/api/v1", "nodes")
CONFIGMAPS = ("/api/v1", "configmaps")
EVENTS = ("/api/v1", "events")
CLAIMS = ("/api/v1", "persistentvolumeclaims")
NAMESPACE = "team-a"
# How long a test waits for the operator to act: a hang guard, not a budget (it acts within a second on a quiet
# machine, but two cores shared with parallel tests and trainer processes can hold it up many times that).
WAIT_SECONDS = 60.0


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT_SECONDS, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """What a user and a kubelet do to the emulated API server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.api = server.api

    def get(self, kind: tuple[str, str], name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        return self.server.call(lambda: self.api.objects.get((*kind, namespace, name)))

    def items(self, kind: tuple[str, str], namespace: str | None = NAMESPACE) -> list[dict[str, Any]]:
        return self.server.call(self.api.matching, *kind, namespace, {})

    def add_gpu_node(
        self, name: str, product: str = "NVIDIA-H100-80GB-HBM3", memory_mib: int = 81559, gpus: int = 1
    ) -> None:
        node = {
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "nvidia.com/gpu.product": product,
                    "nvidia.com/gpu.memory": str(memory_mib),
                    "nvidia.com/gpu.count": str(gpus),
                },
            },
            "status": {
                "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32", "memory": "256Gi"},
                "capacity": {"nvidia.com/gpu": str(gpus)},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        self.server.call(self.api.create, *NODES, "", node)

    def add_claim(self, name: str, *modes: str) -> None:
        """A PersistentVolumeClaim with these access modes (the operator reads an output claim's modes)."""
        body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": "1Ti"}}}}
        self.server.call(self.api.create, *CLAIMS, NAMESPACE, body)

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        }
        self.server.call(self.api.create, *FTJ, NAMESPACE, body)

    def patch_spec(self, name: str, patch: dict[str, Any]) -> None:
        def change() -> None:
            key = (*FTJ, NAMESPACE, name)
            self.api.update(key, merge_patch(self.api.objects[key], {"spec": patch}), subresource=None)

        self.server.call(change)

    def delete(self, kind: tuple[str, str], name: str) -> None:
        self.server.call(self.api.delete, (*kind, NAMESPACE, name))

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(FTJ, name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, reason: str | None = None) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            conditions = {c["reason"] for c in status.get("conditions", [])}
            ok = status.get("phase") == phase and (reason is None or reason in conditions)
            return status if ok else None

        return wait_for(reached, what=f"{name} phase {phase} {reason or ''} (now {self.status(name)})")

    def wait_job(self, name: str) -> dict[str, Any]:
        return wait_for(lambda: self.get(JOBS, name), what=f"Job {name}")

    # ---------------------------------------------------------------------- playing the kubelet

    def _set_status(self, kind: tuple[str, str], name: str, status: dict[str, Any]) -> None:
        def write() -> None:
            key = (*kind, NAMESPACE, name)
            self.api.update(key, {**self.api.objects[key], "status": status}, subresource="status")

        self.server.call(write)

    def start_pod(
        self,
        job_name: str,
        node: str,
        container_state: dict[str, Any] | None = None,
        phase: str = "Running",
        index: int = 0,
    ) -> str:
        """Create the Job's pod on `node` (what the Job controller and scheduler do) in `phase`."""
        job = self.wait_job(job_name)
        template = job["spec"]["template"]
        pod_name = f"{job_name}-{index}"
        pod = {
            "metadata": {
                "name": pod_name,
                "namespace": NAMESPACE,
                "labels": {**template["metadata"]["labels"], "job-name": job_name},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job_name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": node},
        }
        if self.get(PODS, pod_name) is None:
            self.server.call(self.api.create, *PODS, NAMESPACE, pod)
        state = container_state or {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        self._set_status(
            PODS, pod_name, {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
        )
        return pod_name

    def add_pod_condition(self, pod_name: str, condition: dict[str, Any]) -> None:
        """A pod condition such as DisruptionTarget, which the kubelet or the scheduler sets."""
        pod = self.get(PODS, pod_name)
        assert pod is not None, f"no pod {pod_name}"
        status = pod.get("status") or {}
        self._set_status(PODS, pod_name, {**status, "conditions": [*status.get("conditions", []), condition]})

    def set_job_suspended(self, job_name: str, *, suspended: bool) -> None:
        """What Kueue does to admit (False) or evict (True) a Job."""

        def write() -> None:
            key = (*JOBS, NAMESPACE, job_name)
            self.api.update(
                key, merge_patch(self.api.objects[key], {"spec": {"suspend": suspended}}), subresource=None
            )

        self.server.call(write)

    def trainer_status(self, name: str, patch: dict[str, Any]) -> None:
        """What the trainer writes: a merge patch of its own status fields of the FineTuneJob."""

        def write() -> None:
            key = (*FTJ, NAMESPACE, name)
            self.api.update(key, merge_patch(self.api.objects[key], {"status": patch}), subresource="status")

        self.server.call(write)

    def job_status(self, job_name: str, status: dict[str, Any]) -> None:
        self._set_status(JOBS, job_name, status)

    def finish_job(self, job_name: str, condition: str, reason: str = "", **extra: Any) -> None:
        conditions = [{"type": condition, "status": "True", "reason": reason, "message": ""}]
        self.job_status(job_name, {"conditions": conditions, "startTime": "2026-01-01T00:00:00Z", **extra})

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.items(EVENTS) if e.get("involvedObject", {}).get("name") == name]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_kubeconfig(server: Server, path: Path) -> Path:
    """A kubeconfig that points at the emulation (plain HTTP on loopback, a dummy token)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n"
        f"clusters: [{{name: e2e, cluster: {{server: '{server.url}'}}}}]\n"
        "users: [{name: e2e, user: {token: e2e-token}}]\n"
        "contexts: [{name: e2e, context: {cluster: e2e, user: e2e}}]\n"
    )
    return path


class Operator:
    """`kubetune operator --standalone` in a thread of the test process, against the emulation."""

    def __init__(self, server: Server) -> None:
        # One path per process: the kubernetes client reads $KUBECONFIG once, at import.
        kubeconfig = Path(tempfile.gettempdir()) / f"kubetune-e2e-{os.getpid()}.kubeconfig"
        os.environ["KUBECONFIG"] = str(write_kubeconfig(server, kubeconfig))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> Operator:
        import kopf

        import kubetune.handlers  # noqa: F401  (registers the handlers)

        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=kopf.run,
            kwargs={"standalone": True, "clusterwide": True, "stop_flag": self._stop, "ready_flag": ready},
            daemon=True,
        )
        self._thread.start()
        assert ready.wait(WAIT_SECONDS), "the operator did not start"
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def qwen_lora(**extra: Any) -> dict[str, Any]:
    """Qwen2.5-7B LoRA: about 22 GiB per GPU, so an 80 GiB GPU takes it and a 16 GiB one never does."""
    return {
        "model": {"name": "Qwen/Qwen2.5-7B"},
        "dataset": {"name": "tatsu-lab/alpaca"},
        "resources": {"cpu": "4", "memory": "32Gi"},
        "output": {"volume": {"claimName": "out"}},
        **extra,
    }
