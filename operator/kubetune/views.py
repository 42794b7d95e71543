"""What the operator keeps in memory of each FineTuneJob, trainer Job and GPU pod: the fields its
reconcile, status machine and planner read, not the whole object. Pure.

The operator's indexes hold every FineTuneJob, trainer Job and GPU pod of the cluster, finished ones
included, until they are deleted. Whole, a Job is mostly its pod template and a pod mostly its spec (env,
volumes, probes, security context); on a real API server every object also carries managedFields, and a
FineTuneJob applied with kubectl its whole spec again in the last-applied-configuration annotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubetune import contract

# metadata the operator reads: identity, its labels, ownership (a Service made for an adopted Job copies
# the Job's owner references), and whether the object is being deleted.
METADATA_FIELDS = ("name", "namespace", "uid", "labels", "ownerReferences", "deletionTimestamp")
# A FineTuneJob's too: its generation (status.observedGeneration) and age.
FINETUNEJOB_METADATA_FIELDS = (*METADATA_FIELDS, "generation", "creationTimestamp")
# A Job's spec fields the status machine reads (suspended, gang size, deadline) and how it runs.
JOB_SPEC_FIELDS = ("suspend", "parallelism", "completions", "completionMode", "activeDeadlineSeconds", "backoffLimit")
# A container's fields the planner reads (GPUs requested) and the status machine (which container).
CONTAINER_FIELDS = ("name", "resources")


def _pick(source: Mapping[str, Any] | None, fields: Iterable[str]) -> dict[str, Any]:
    source = source or {}
    return {field: source[field] for field in fields if field in source}


def _containers(containers: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [_pick(container, CONTAINER_FIELDS) for container in containers or ()]


def finetunejob_view(ftj: Mapping[str, Any]) -> dict[str, Any]:
    """A FineTuneJob as the operator keeps it: its identity, generation, labels, spec and status."""
    return {
        "apiVersion": ftj.get("apiVersion"),
        "kind": ftj.get("kind"),
        "metadata": _pick(ftj.get("metadata"), FINETUNEJOB_METADATA_FIELDS),
        "spec": ftj.get("spec"),
        "status": ftj.get("status"),
    }


def job_view(job: Mapping[str, Any]) -> dict[str, Any]:
    """A Job as the operator keeps it: identity, labels, its GPU reservation annotation, the spec fields
    it reads, the whole status."""
    metadata = _pick(job.get("metadata"), METADATA_FIELDS)
    annotations = _pick((job.get("metadata") or {}).get("annotations"), (contract.ANNOTATION_GPU_RESERVATION,))
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": job.get("apiVersion"),
        "kind": job.get("kind"),
        "metadata": metadata,
        "spec": _pick(job.get("spec"), JOB_SPEC_FIELDS),
        "status": job.get("status") or {},
    }


def pod_view(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A pod as the operator keeps it: identity, its node, its containers' names and resources, the whole
    status (phase, conditions, container states with their termination messages)."""
    spec = pod.get("spec") or {}
    kept: dict[str, Any] = {"nodeName": spec.get("nodeName"), "containers": _containers(spec.get("containers"))}
    if spec.get("initContainers"):
        kept["initContainers"] = _containers(spec["initContainers"])
    return {
        "metadata": _pick(pod.get("metadata"), METADATA_FIELDS),
        "spec": kept,
        "status": pod.get("status") or {},
    }
