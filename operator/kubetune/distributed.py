"""Multi-node jobs (resources.nodes > 1): the headless Service, the rendezvous env, gang retries, and
the ReadWriteMany check of the output volume. Pure.

Every pod of the attempt's Indexed Job gets the hostname `<job>-<index>` (the Job controller sets it)
and, with `subdomain` = the headless Service's name, the stable DNS name
`<job>-<index>.<job>.<namespace>.svc`. The trainer runs torchrun with a c10d rendezvous on pod 0's
name: pod 0 hosts the store and the others join it. When one pod fails, the others lose a peer (or the
store) and fail too; the Job replaces the failed pods, which meet afresh, and every rank resumes from
the newest checkpoint on the shared output volume.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from kubetune import contract
from kubetune.api import FineTuneJobSpec
from kubetune.validation import Problem

# Pods of one Job start minutes apart (image pulls on fresh nodes, model downloads): each waits this
# long for the others at the rendezvous before its attempt fails.
RDZV_TIMEOUT_SECONDS = 900
RDZV_PORT_NAME = "rendezvous"
# Access modes under which several nodes can mount a volume read-write at once.
SHARED_WRITE_MODES = frozenset({"ReadWriteMany"})


def is_multinode(spec: FineTuneJobSpec) -> bool:
    return spec.resources.nodes > 1


def service_name(job_name: str) -> str:
    """The headless Service of an attempt is named like its Job (the pods' subdomain)."""
    return job_name


def rendezvous_host(job_name: str, namespace: str) -> str:
    """Pod 0's stable DNS name: the Indexed Job's hostname under the headless Service."""
    return f"{job_name}-0.{service_name(job_name)}.{namespace}.svc"


def rendezvous_env(job_name: str, namespace: str) -> list[dict[str, str]]:
    """What the trainer needs to join the others (its node rank is JOB_COMPLETION_INDEX)."""
    return [
        {"name": contract.ENV_RDZV_ENDPOINT, "value": f"{rendezvous_host(job_name, namespace)}:{contract.RDZV_PORT}"},
        {"name": contract.ENV_RDZV_ID, "value": job_name},
        {"name": contract.ENV_RDZV_TIMEOUT_SECONDS, "value": str(RDZV_TIMEOUT_SECONDS)},
    ]


def build_headless_service(job: Mapping[str, Any]) -> dict[str, Any]:
    """The headless Service that gives the Job's pods their DNS names (owned like the Job)."""
    meta = job["metadata"]
    labels = dict(meta["labels"])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": copy.deepcopy(meta["ownerReferences"]),
        },
        "spec": {
            "clusterIP": "None",
            # Pods must resolve each other before they are ready: readiness comes after the rendezvous.
            "publishNotReadyAddresses": True,
            "selector": {
                contract.LABEL_FINETUNEJOB: labels[contract.LABEL_FINETUNEJOB],
                contract.LABEL_ATTEMPT: labels[contract.LABEL_ATTEMPT],
            },
            "ports": [{"name": RDZV_PORT_NAME, "port": contract.RDZV_PORT, "protocol": "TCP"}],
        },
    }


def gang_job(job: Mapping[str, Any], spec: FineTuneJobSpec) -> dict[str, Any]:
    """The Job with what several pods need to train as one: the subdomain, the rendezvous env, and a
    backoffLimit that counts whole-gang failures (one failure may fail every rank's pod)."""
    gang = copy.deepcopy(dict(job))
    meta, job_spec = gang["metadata"], gang["spec"]
    pod_spec = job_spec["template"]["spec"]
    pod_spec["subdomain"] = service_name(meta["name"])
    for container in pod_spec["containers"]:
        if container["name"] == contract.TRAINER_CONTAINER:
            container["env"] = [*container["env"], *rendezvous_env(meta["name"], meta["namespace"])]
            container["ports"] = [
                *container.get("ports", []),
                {"name": RDZV_PORT_NAME, "containerPort": contract.RDZV_PORT, "protocol": "TCP"},
            ]
    job_spec["backoffLimit"] = spec.max_retries * spec.resources.nodes
    return gang


def output_volume_problems(spec: FineTuneJobSpec, claim: Mapping[str, Any] | None) -> Iterator[Problem]:
    """A multi-node job's output PVC must be ReadWriteMany: every node writes checkpoints to it.
    `claim` is the PVC as the API server returns it, None when the operator cannot read it."""
    volume = spec.output.volume
    if not is_multinode(spec) or volume is None or claim is None:
        return
    modes = set((claim.get("spec") or {}).get("accessModes") or ())
    if not modes & SHARED_WRITE_MODES:
        yield Problem(
            "spec.output.volume.claimName",
            f"PVC {volume.claim_name} has access modes {sorted(modes) or 'none'}; {spec.resources.nodes} nodes "
            "write checkpoints to it at once, so it must be ReadWriteMany (NFS, CephFS, EFS, Filestore...): "
            "use an RWX storage class or set spec.resources.nodes to 1",
        )
