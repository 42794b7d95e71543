"""A kubelet for the e2e tests that really runs a trainer pod: the Job's container command as a local process.

What it does for one pod of a Job the operator created, as a node would:
- every volume becomes a local folder: a ConfigMap's keys are written as files (from the emulated API
  server), a PersistentVolumeClaim is a folder per claim (with its subPath), an emptyDir a fresh folder;
- the container's environment: literal values, and valueFrom Secret and ConfigMap keys read from the API
  server; values that are paths under a volume's mountPath point into that volume's folder;
- the container's command, with `python` this interpreter; pod_site/sitecustomize.py, loaded by each of
  the pod's Python processes, points the spec's model and dataset paths (under a mountPath) at their
  folders as `kubetune train --mount` does;
- the pod's status follows: Running, then terminated with the exit code and, as the kubelet does, the
  termination-log file's text as the container's termination message; the Job completes or fails;
- preemption: SIGTERM to the trainer when asked; the pod fails with a DisruptionTarget condition, which
  the Job's podFailurePolicy ignores, so the Job stays active for a replacement pod; when the Job itself
  was deleted meanwhile (the FineTuneJob suspended), the pod went with it and nothing is reported.

Three test-only settings the trainer reads (DESIGN.md's env contract): the API server URL (the emulation,
not in-cluster), the termination log's path, and a free metrics port; and `egress`, where requests to
outside services go (HF_ENDPOINT, for an emulated Hub).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import CONFIGMAPS, JOBS, NAMESPACE, Cluster, free_port

from kubetune import contract

SECRETS = ("/api/v1", "secrets")
POD_SITE = Path(__file__).with_name("pod_site")  # its sitecustomize maps the spec's volume paths
RUN_SECONDS = 600  # a trainer pod's run, under load; a hang guard, not a budget


@dataclass(frozen=True)
class Exited:
    """How the trainer process ended."""

    code: int
    termination_message: str
    output: str
    preempted: bool  # SIGTERM was sent (the pod preempted or deleted) before the trainer ended


class Kubelet:
    def __init__(self, cluster: Cluster, root: Path, claims: dict[str, Path]) -> None:
        self.cluster, self.root, self.claims = cluster, root, claims
        # Where the pods' requests to outside services go (HF_ENDPOINT: an emulated Hub), as a cluster's egress.
        self.egress: dict[str, str] = {}

    def run(self, job_name: str, node: str, index: int = 0, preempt_when: Callable[[], bool] | None = None) -> Exited:
        """Start the Job's pod on the node, run its trainer to the end, and report the end to the API.
        With preempt_when, the pod is preempted (SIGTERM) once that holds."""
        pod = self._prepare(job_name, node, index)
        exited = self._wait(pod, self._start(pod), preempt_when)
        self._report(job_name, pod.name, exited)
        self._finish_job(job_name, [exited])
        return exited

    def run_gang(self, job_name: str, nodes: list[str]) -> list[Exited]:
        """Every pod of a multi-node (Indexed) Job at once, one per node, as the Job controller starts them:
        each with its JOB_COMPLETION_INDEX; pod 0 first, as on a cluster only pod 0's name is the
        rendezvous endpoint (here every pod's address is this machine's, and the first to bind hosts it)."""
        ports: dict[str, str] = {}
        pods = [self._prepare(job_name, node, index, ports) for index, node in enumerate(nodes)]
        first = self._start(pods[0])
        port = pods[0].env[contract.ENV_RDZV_ENDPOINT].rsplit(":", 1)[1]
        deadline = time.monotonic() + RUN_SECONDS
        while not _listening(int(port)) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        processes = [first, *(self._start(pod) for pod in pods[1:])]
        exits = [self._wait(pod, process, None) for pod, process in zip(pods, processes, strict=True)]
        for pod, exited in zip(pods, exits, strict=True):
            self._report(job_name, pod.name, exited)
        self._finish_job(job_name, exits)
        return exits

    def _prepare(self, job_name: str, node: str, index: int, ports: dict[str, str] | None = None) -> Pod:
        name = self.cluster.start_pod(job_name, node, index=index)
        job = self.cluster.wait_job(job_name)
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        folders = {volume["name"]: self._folder(name, volume) for volume in pod_spec["volumes"]}
        mounts = {
            mount["mountPath"]: folders[mount["name"]] / mount.get("subPath", "")
            for mount in container["volumeMounts"]
        }
        for folder in mounts.values():
            folder.mkdir(parents=True, exist_ok=True)
        env = self._environment(container, mounts, self.root / name)
        if job["spec"].get("completionMode") == "Indexed":
            env[contract.ENV_JOB_COMPLETION_INDEX] = str(index)  # what the Job controller adds
        ports = {} if ports is None else ports  # one mapping for every pod of a gang
        env = {key: _cluster_dns(value, ports) for key, value in env.items()}
        command = list(container["command"]) + list(container.get("args", []))
        assert command[:2] == ["python", "-m"], f"expected a python -m entry point, got {command}"
        env["KUBETUNE_E2E_MOUNTS"] = json.dumps({path: str(folder) for path, folder in mounts.items()})
        return Pod(name, command[2:], env, self.root / name)

    # ----------------------------------------------------------------------------------- volumes

    def _folder(self, pod_name: str, volume: dict[str, Any]) -> Path:
        if "persistentVolumeClaim" in volume:
            return self.claims[volume["persistentVolumeClaim"]["claimName"]]
        folder = self.root / pod_name / volume["name"]
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            configmap = self.cluster.get(CONFIGMAPS, volume["configMap"]["name"])
            assert configmap is not None, f"the pod mounts ConfigMap {volume['configMap']['name']}, which is missing"
            for key, text in configmap["data"].items():
                (folder / key).write_text(text, encoding="utf-8")
        return folder

    # ----------------------------------------------------------------------------------- process

    def _environment(self, container: dict[str, Any], mounts: dict[str, Path], folder: Path) -> dict[str, str]:
        env = {variable["name"]: self._value(variable) for variable in container.get("env", [])}
        env = {name: _local_path(value, mounts) for name, value in env.items()}
        termination_log = _local_path(container["terminationMessagePath"], mounts, folder / "termination-log")
        return {
            **env,
            **self.egress,
            "KUBETUNE_API_URL": self.cluster.server.url,
            "KUBETUNE_TERMINATION_LOG": termination_log,
            "KUBETUNE_METRICS_PORT": str(free_port()),
        }

    def _value(self, variable: dict[str, Any]) -> str:
        if "value" in variable:
            return str(variable["value"])
        source = variable["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = self.cluster.get(SECRETS, ref["name"])
            assert secret is not None, f"env {variable['name']} reads Secret {ref['name']}, which is missing"
            return base64.b64decode(secret["data"][ref["key"]]).decode()
        ref = source["configMapKeyRef"]
        configmap = self.cluster.get(CONFIGMAPS, ref["name"])
        assert configmap is not None, f"env {variable['name']} reads ConfigMap {ref['name']}, which is missing"
        return str(configmap["data"][ref["key"]])

    def _start(self, pod: Pod) -> subprocess.Popen[bytes]:
        Path(pod.env["KUBETUNE_TERMINATION_LOG"]).unlink(missing_ok=True)
        pod.folder.mkdir(parents=True, exist_ok=True)
        with pod.output.open("wb") as sink:
            pythonpath = os.pathsep.join(filter(None, [str(POD_SITE), os.environ.get("PYTHONPATH")]))
            return subprocess.Popen(
                [sys.executable, "-m", *pod.command],
                env={**os.environ, **pod.env, "PYTHONPATH": pythonpath},  # this interpreter's packages, the pod's env
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def _wait(
        self, pod: Pod, process: subprocess.Popen[bytes], preempt_when: Callable[[], bool] | None
    ) -> Exited:
        deadline, preempted = time.monotonic() + RUN_SECONDS, False
        while process.poll() is None and time.monotonic() < deadline:
            if not preempted and preempt_when is not None and preempt_when():
                process.send_signal(signal.SIGTERM)  # what the kubelet does first when a pod is preempted
                preempted = True
            time.sleep(0.05)
        code = process.wait(max(1.0, deadline - time.monotonic()))
        log = Path(pod.env["KUBETUNE_TERMINATION_LOG"])
        message = log.read_text() if log.is_file() else ""
        return Exited(code, message, pod.output.read_text(errors="replace"), preempted)

    # ------------------------------------------------------------------------------------ status

    def _report(self, job_name: str, pod_name: str, exited: Exited) -> None:
        if self.cluster.get(JOBS, job_name) is None:
            return  # the Job was deleted (suspended, say): its pod went with it, nothing to report
        finished = "2026-01-01T01:00:00Z"
        terminated = {
            "exitCode": exited.code,
            "reason": "Completed" if exited.code == 0 else "Error",
            "message": exited.termination_message,
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": finished,
        }
        phase = "Succeeded" if exited.code == 0 else "Failed"
        index = int(pod_name.rsplit("-", 1)[1])
        self.cluster.start_pod(job_name, _node_of(self.cluster, pod_name), {"terminated": terminated}, phase, index)
        if exited.preempted:
            disruption = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
            self.cluster.add_pod_condition(pod_name, disruption)  # ignored by the podFailurePolicy: no Job change

    def _finish_job(self, job_name: str, exits: list[Exited]) -> None:
        """The Job controller's part: complete when every pod succeeded; a trainer's non-retryable exit
        fails the Job at once (its podFailurePolicy); a preempted pod leaves it active for a replacement."""
        if self.cluster.get(JOBS, job_name) is None or any(exited.preempted for exited in exits):
            return
        if all(exited.code == 0 for exited in exits):
            self.cluster.finish_job(job_name, "Complete", completionTime="2026-01-01T01:00:00Z", succeeded=len(exits))
        else:
            self.cluster.finish_job(job_name, "Failed", reason="PodFailurePolicy", failed=1)


@dataclass(frozen=True)
class Pod:
    """A pod ready to start: its container's command after `python -m`, its environment, its folder."""

    name: str
    command: list[str]
    env: dict[str, str]
    folder: Path

    @property
    def output(self) -> Path:
        return self.folder / "output.log"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# A pod's DNS name under a headless Service: <hostname>.<subdomain>.<namespace>.svc[:port]
POD_DNS_NAME = re.compile(r"\b[a-z0-9-]+\.[a-z0-9-]+\.[a-z0-9-]+\.svc(?::(\d+))?\b")


def _cluster_dns(value: str, ports: dict[str, str]) -> str:
    """Cluster DNS and pod networking, here: a pod's DNS name is this machine, and each port a pod
    listens on becomes a free port of this machine (the same one for every pod of the gang)."""

    def local(match: re.Match[str]) -> str:
        port = match.group(1)
        if port is None:
            return "127.0.0.1"
        return f"127.0.0.1:{ports.setdefault(port, str(free_port()))}"

    return POD_DNS_NAME.sub(local, value)


def _node_of(cluster: Cluster, pod_name: str) -> str:
    pod = cluster.get(("/api/v1", "pods"), pod_name, NAMESPACE)
    assert pod is not None
    return str(pod["spec"]["nodeName"])


def _local_path(value: str, mounts: dict[str, Path], default: Path | None = None) -> str:
    """A container path under a mountPath, as the path of the volume's local folder; other values as they are."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount] / value[len(mount):].lstrip("/"))
    return str(default) if default is not None else value
