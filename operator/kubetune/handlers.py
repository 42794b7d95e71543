"""kopf registrations only: each handler a few lines calling reconcile.py, the pure modules and kube.py."""

from __future__ import annotations

import datetime
import random
import socket
from typing import Any

import kopf

from kubetune import contract, manifests
from kubetune.api import GROUP, KIND, PLURAL, VERSION, Phase, Reason
from kubetune.gpus import GpuNode, gpu_node
from kubetune.kube import connect, credentials
from kubetune.metrics import OperatorMetrics
from kubetune.persistence import HandlerMemory
from kubetune.plan import TERMINAL_POD_PHASES, pod_gpus
from kubetune.reconcile import (
    Cluster,
    Key,
    State,
    current_status,
    frozen_fields,
    is_queued,
    load_calibration,
    plain_object,
    reconcile,
    refresh,
    replan_queued,
    ttl_remaining,
    write_status,
)
from kubetune.settings import load_settings
from kubetune.status import Observation, job_finished
from kubetune.views import finetunejob_view, job_view, pod_view

FTJ = (GROUP, VERSION, PLURAL)
TRAINER = {contract.LABEL_FINETUNEJOB: kopf.PRESENT}
SETTINGS = load_settings()
EVENT_SOURCE = "kubetune-operator"
# Replicas draw their kopf peering priority from this range: a tie is practically impossible.
PEERING_PRIORITIES = 2**31


# --------------------------------------------------------------------------------- startup


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **indexes: Any) -> None:
    memo.handler_memory = HandlerMemory(prefix=GROUP, kind=KIND)
    memo.handler_memory.install(settings)
    settings.peering.name = SETTINGS.peering_name
    # Events show "From kubetune-operator" in `kubectl describe`, and which replica posted them.
    settings.posting.reporting_component = EVENT_SOURCE
    settings.posting.reporting_instance = socket.gethostname()
    # kopf freezes every replica when peers share a priority; a random one lets exactly one act.
    settings.peering.priority = random.SystemRandom().randrange(1, PEERING_PRIORITIES)
    finetunejobs: kopf.Index[Key, dict[str, Any]] = indexes["finetunejobs"]
    metrics = OperatorMetrics(
        lambda: [(ftj.get("status") or {}).get("phase") for store in finetunejobs.values() for ftj in store]
    )
    if SETTINGS.metrics_port:
        metrics.serve(SETTINGS.metrics_port)
    memo.state = State(SETTINGS, connect(metrics, settings), metrics)
    memo.state.calibration = await load_calibration(memo.state)


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    # kopf's default login goes through the kubernetes client, which fixes $KUBECONFIG at import.
    return credentials(settings)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.state.kube.close()


# --------------------------------------------------------------------------------- indexes
# async although they do no I/O: kopf runs a plain function in a thread pool, a thread hop per event.
# Objects are kept as views (views.py): the fields the operator reads, without pod specs or managedFields.


@kopf.index(*FTJ)
async def finetunejobs(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(str(namespace), name): finetunejob_view(body)}


@kopf.index("v1", "nodes")
async def nodes(body: kopf.Body, **_: Any) -> dict[None, GpuNode]:
    return {None: gpu_node(body, SETTINGS.gpu_label_products)}  # parsed once per node event, not once per placement


@kopf.index("v1", "pods")
async def gpu_pods(body: kopf.Body, **_: Any) -> dict[None, dict[str, Any]]:
    return {None: pod_view(body)} if pod_gpus(body) else {}  # the planner skips finished pods itself


@kopf.index("batch", "v1", "jobs", labels=TRAINER)
async def trainer_jobs(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(str(namespace), labels[contract.LABEL_FINETUNEJOB]): job_view(body)}


@kopf.index("v1", "pods", labels=TRAINER)
async def trainer_pods(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(str(namespace), manifests.job_name_of(labels)): pod_view(body)}


@kopf.on.create(*FTJ)
@kopf.on.resume(*FTJ)
async def on_apply(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    with memo.state.metrics.reconcile():
        await reconcile(memo.state, Cluster.of(kwargs), plain_object(body))


@kopf.on.update(*FTJ, field="spec")
async def on_spec_change(body: kopf.Body, memo: kopf.Memo, diff: kopf.Diff, **kwargs: Any) -> None:
    ftj, state = plain_object(body), memo.state
    frozen = frozen_fields(
        [(op, ("spec", *path), old, new) for op, path, old, new in diff], ftj["status"] or {}
    )
    with state.metrics.reconcile():
        if frozen:
            message = f"{', '.join(frozen)}: cannot change after the job started; create a new FineTuneJob"
            phase = Phase(current_status(state, ftj).get("phase") or Phase.PENDING)
            await write_status(state, ftj, Observation(phase, Reason.SPEC_FROZEN, message))
            return
        await reconcile(state, Cluster.of(kwargs), ftj)


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


@kopf.on.event(*FTJ, when=_deleted)
async def forget_deleted(body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.handler_memory.forget(body.metadata.uid or "")
    memo.state.forget((str(namespace), name))


# ------------------------------------------------------------------ Job and pod events -> status


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER)
async def on_job_event(
    *,
    type: str,
    body: kopf.Body,
    name: str,
    namespace: str | None,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if type == "DELETED" or job_finished(plain_object(body)):
        memo.state.reservations.release((str(namespace), name))
    await refresh(memo.state, Cluster.of(kwargs), (str(namespace), labels[contract.LABEL_FINETUNEJOB]))


@kopf.on.event("v1", "pods", labels=TRAINER)
async def on_trainer_pod_event(
    *, spec: kopf.Spec, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
) -> None:
    if spec.get("nodeName"):  # bound: the planner sees this pod itself now
        memo.state.reservations.release((str(namespace), manifests.job_name_of(labels)))
    await refresh(memo.state, Cluster.of(kwargs), (str(namespace), labels[contract.LABEL_FINETUNEJOB]))


# ------------------------------------------------------------------------ re-planning Queued jobs


def _capacity_freed(type: str, body: kopf.Body, **_: Any) -> bool:
    pod = plain_object(body)
    return bool(pod_gpus(pod)) and (
        type == "DELETED" or (pod.get("status") or {}).get("phase") in TERMINAL_POD_PHASES
    )


@kopf.on.event("v1", "pods", when=_capacity_freed)
async def on_gpu_pod_finished(memo: kopf.Memo, **kwargs: Any) -> None:
    await replan_queued(memo.state, Cluster.of(kwargs))


@kopf.on.event("v1", "nodes")
async def on_node_event(memo: kopf.Memo, **kwargs: Any) -> None:
    await replan_queued(memo.state, Cluster.of(kwargs))


@kopf.timer(*FTJ, interval=SETTINGS.replan_interval_seconds, when=lambda status, **_: is_queued(status))
async def replan_timer(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    ftj = plain_object(body)
    if is_queued(current_status(memo.state, ftj)):
        await reconcile(memo.state, Cluster.of(kwargs), ftj)


# ------------------------------------------------------------------------------------------ TTL


def _expires(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return spec.get("ttlSecondsAfterFinished") is not None and bool(status.get("completionTime"))


@kopf.daemon(*FTJ, when=_expires, cancellation_timeout=1.0)
async def expire_after_ttl(
    *,
    spec: kopf.Spec,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    remaining = ttl_remaining(
        dict(status), int(spec["ttlSecondsAfterFinished"]), datetime.datetime.now(datetime.UTC)
    )
    await stopped.wait(remaining)
    if not stopped:
        await memo.state.kube.delete_finetunejob(str(namespace), name)
