"""What the operator does for a FineTuneJob, called by the kopf handlers in handlers.py.

Indexes keep the cluster state the operator needs in memory (nodes, GPU pods, the trainer Jobs and
pods, the FineTuneJobs), so a reconcile reads nothing from the API server; it writes the children and
the status. Placement decisions are serialised by one lock and reserve the GPUs of Jobs whose pods
are not bound yet, so a burst never places two jobs on one free GPU.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError

from kubetune import adjust, calibration, contract, distributed, manifests
from kubetune.api import (
    TERMINAL_PHASES,
    AdjustmentStatus,
    FineTuneJobSpec,
    Phase,
    Reason,
    frozen_after_start,
    now_rfc3339,
)
from kubetune.capacity import NodeType, nodepools_types
from kubetune.estimate import UnknownModelError, VramEstimate, estimate
from kubetune.forecast import ForecastInputs, forecast_wire
from kubetune.gpus import GpuNode
from kubetune.kube import KubeClient, KubeError
from kubetune.metrics import OperatorMetrics
from kubetune.plan import NoFit, Placement, Provision, Wait, plan
from kubetune.policy import policy_problems
from kubetune.presets import effective_spec
from kubetune.settings import OperatorSettings
from kubetune.status import Observation, job_finished, observe, status_patch, waiting_for_nodes
from kubetune.validation import SpecError, parse_spec

# A reconcile that raises is retried after FIRST_RETRY_SECONDS, doubled each time up to MAX_RETRY_SECONDS:
# quick enough for a blip of the API server, and MAX_RECONCILE_FAILURES tries (about a minute in all) before
# the FineTuneJob fails with reason InternalError, instead of a silent loop.
FIRST_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 300.0
MAX_RECONCILE_FAILURES = 5
# An exception's text in a status message is cut to this: enough for any API message, bounded for etcd.
MAX_ERROR_CHARS = 1000
# A reservation whose Job the indexes have not shown for this long is stale (a created Job shows within
# a second; the next placement after a pause would otherwise keep GPUs of Jobs deleted meanwhile).
RESERVATION_GRACE_SECONDS = 60.0
# Reasons posted as Warning events although the phase is not Failed: the user has something to fix.
WARNINGS = frozenset(
    {Reason.SPEC_FROZEN, Reason.INTERNAL_ERROR, Reason.IMAGE_PULL_ERROR, Reason.UNSCHEDULABLE, Reason.EVICTED_BY_KUEUE}
)
Key = tuple[str, str]
logger = logging.getLogger(__name__)
# How long the node types read from Karpenter's NodePools are reused: a burst of placements reads them once.
NODE_TYPES_TTL_SECONDS = 30.0


class Reservations:
    """GPUs of Jobs the operator created whose pods are not bound to a node yet: the planner sees
    only pods, so without these a burst would place many jobs on the same free GPU.

    A reservation ends when a pod of its Job is bound, or the Job ends or is deleted. The planner reads
    one pending pseudo pod per node holding reserved GPUs; each is rebuilt only when its node's count
    changes, as a burst plans once per job against every node.
    """

    def __init__(self) -> None:
        self._jobs: dict[Key, tuple[tuple[str, ...], int]] = {}
        self._since: dict[Key, float] = {}  # when each was reserved (time.monotonic())
        self._per_node: Counter[str] = Counter()
        self._pods: dict[str, dict[str, Any]] = {}
        self.restored = False  # whether restore() read the cluster's Jobs since this process started

    def reserve(self, job: Key, nodes: tuple[str, ...], gpus: int, *, at: float = 0.0) -> None:
        if job not in self._jobs and gpus > 0:
            self._jobs[job] = (nodes, gpus)
            self._since[job] = at
            self._add(nodes, gpus)

    def release(self, job: Key) -> None:
        nodes, gpus = self._jobs.pop(job, ((), 0))
        self._since.pop(job, None)
        self._add(nodes, -gpus)

    def prune(self, exists: Callable[[Key], bool], *, now: float) -> None:
        """Release reservations older than RESERVATION_GRACE_SECONDS whose Job is not in the cluster: a
        replica that was paused (kopf peering) missed the deletions of those Jobs."""
        for job, since in list(self._since.items()):
            if now - since > RESERVATION_GRACE_SECONDS and not exists(job):
                self.release(job)

    def restore(self, held: Iterable[tuple[Key, tuple[str, ...], int]]) -> None:
        """Reserve what the cluster's Jobs hold (after a start or a fail-over the memory is empty or stale)."""
        for job, nodes, gpus in held:
            self.reserve(job, nodes, gpus)
        self.restored = True

    def _add(self, nodes: tuple[str, ...], gpus: int) -> None:
        for node in nodes:
            self._per_node[node] += gpus
            if self._per_node[node] > 0:
                self._pods[node] = _reserved_pod(node, self._per_node[node])
            else:
                del self._per_node[node], self._pods[node]

    def as_pods(self) -> list[dict[str, Any]]:
        """The pseudo pods, in the shape the planner reads."""
        return list(self._pods.values())


def held_gpus(job: dict[str, Any], pods: Iterable[dict[str, Any]]) -> tuple[tuple[str, ...], int] | None:
    """The GPUs a trainer Job holds that the planner cannot see as pods: (nodes, GPUs per node) while the
    Job runs (not finished, not being deleted) and none of its pods is bound to a node yet."""
    if job["metadata"].get("deletionTimestamp") or job_finished(job):
        return None
    if any((pod.get("spec") or {}).get("nodeName") for pod in pods):
        return None
    return manifests.reservation_of(job["metadata"].get("annotations"))


def job_in_cluster(cluster: Cluster, job: Key) -> bool:
    """Whether the indexes hold the trainer Job `job` (namespace, Job name), not being deleted."""
    ftj_name = job[1].rpartition("-")[0]
    return any(
        kept["metadata"]["name"] == job[1] and not kept["metadata"].get("deletionTimestamp")
        for kept in cluster.trainer_jobs.get((job[0], ftj_name), [])
    )


def jobs_holding_gpus(cluster: Cluster) -> Iterable[tuple[Key, tuple[str, ...], int]]:
    """Every trainer Job in the indexes that holds GPUs its pods do not show yet."""
    for jobs in list(cluster.trainer_jobs.values()):
        for job in jobs:
            meta = job["metadata"]
            key = (meta["namespace"], meta["name"])
            held = held_gpus(job, cluster.trainer_pods.get(key, []))
            if held is not None:
                yield key, *held


def track_reservation(state: State, cluster: Cluster, job: dict[str, Any], *, deleted: bool = False) -> None:
    """After a trainer Job event: reserve what it holds, release what it no longer does."""
    meta = job["metadata"]
    key = (meta["namespace"], meta["name"])
    held = None if deleted else held_gpus(job, cluster.trainer_pods.get(key, []))
    if held is None:
        state.reservations.release(key)
    else:
        state.reservations.reserve(key, *held)


def _reserved_pod(node: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"kubetune-reserved-{node}"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "reserved", "resources": {"limits": {contract.GPU_RESOURCE: str(gpus)}}}],
        },
        "status": {"phase": "Pending"},
    }


@dataclass(frozen=True)
class Failures:
    """Consecutive reconciles of one generation of a FineTuneJob that raised, and when to try again."""

    generation: int | None
    count: int
    retry_at: float  # time.monotonic()


@dataclass
class State:
    """What one operator process keeps between handler calls (kopf's memo)."""

    config: OperatorSettings
    kube: KubeClient
    metrics: OperatorMetrics
    placement_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reservations: Reservations = field(default_factory=Reservations)
    written: dict[Key, dict[str, Any]] = field(default_factory=dict)  # operator status last written
    # One status writer per FineTuneJob at a time: a Job event must not overwrite a newer decision.
    status_locks: defaultdict[Key, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    failures: dict[Key, Failures] = field(default_factory=dict)  # reconciles that raised, per FineTuneJob
    nodepool_types: tuple[float, tuple[NodeType, ...]] | None = None  # (read at, types) from Karpenter
    calibration: calibration.Store = field(default_factory=calibration.Store)
    calibration_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def forget(self, key: Key) -> None:
        """Drop what is kept for a deleted FineTuneJob."""
        self.written.pop(key, None)
        self.status_locks.pop(key, None)
        self.failures.pop(key, None)


@dataclass(frozen=True)
class Cluster:
    """The indexes, as handlers receive them."""

    finetunejobs: kopf.Index[Key, dict[str, Any]]
    nodes: kopf.Index[None, GpuNode]
    gpu_pods: kopf.Index[None, dict[str, Any]]
    trainer_jobs: kopf.Index[Key, dict[str, Any]]
    trainer_pods: kopf.Index[tuple[str, str], dict[str, Any]]

    @classmethod
    def of(cls, kwargs: dict[str, Any]) -> Cluster:
        return cls(*(kwargs[name] for name in cls.__dataclass_fields__))


def plain_object(body: kopf.Body) -> dict[str, Any]:
    return {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec", "status")}


# ------------------------------------------------------------------------------ status writes


def _attempt_of(job: dict[str, Any]) -> int:
    return manifests.attempt_of(job["metadata"].get("labels", {}))


def latest_job(cluster: Cluster, key: Key) -> dict[str, Any] | None:
    jobs = [job for job in cluster.trainer_jobs.get(key, []) if not job["metadata"].get("deletionTimestamp")]
    return max(jobs, key=_attempt_of, default=None)


def current_status(state: State, ftj: dict[str, Any]) -> dict[str, Any]:
    key = (ftj["metadata"]["namespace"], ftj["metadata"]["name"])
    return {**(ftj.get("status") or {}), **state.written.get(key, {})}


async def write_status(
    state: State, ftj: dict[str, Any], observation: Observation, extra: dict[str, Any] | None = None
) -> None:
    """Patch the operator's status fields when they change, and post an Event on a new phase or message."""
    meta = ftj["metadata"]
    async with state.status_locks[(meta["namespace"], meta["name"])]:
        await _write_status(state, ftj, observation, extra)


async def _write_status(
    state: State, ftj: dict[str, Any], observation: Observation, extra: dict[str, Any] | None = None
) -> None:
    meta = ftj["metadata"]
    key = (meta["namespace"], meta["name"])
    current = current_status(state, ftj)
    patch = status_patch(current, observation, generation=meta.get("generation"), now=now_rfc3339()) | (extra or {})
    patch = {name: value for name, value in patch.items() if current.get(name) != value}
    if not patch:
        return
    await state.kube.patch_status(key[0], key[1], patch)
    state.written[key] = {**state.written.get(key, {}), **patch}
    if "phase" in patch or "message" in patch:
        warning = observation.phase == Phase.FAILED or observation.reason in WARNINGS
        post = kopf.warn if warning else kopf.info
        post(cast(kopf.Body, ftj), reason=str(observation.reason), message=observation.message)
        _log_transition(ftj, observation, logging.WARNING if warning else logging.INFO)


def _log_transition(ftj: dict[str, Any], observation: Observation, level: int) -> None:
    """One line per transition, the same sentence as the Event; k8s_ref is the object kopf's JSON format shows."""
    meta = ftj["metadata"]
    ref = {key: meta.get(key) for key in ("namespace", "name", "uid")} | {"kind": ftj.get("kind")}
    phase, reason = str(observation.phase), str(observation.reason)
    logger.log(level, "%s/%s %s (%s): %s", meta["namespace"], meta["name"], phase, reason, observation.message,
               extra={"k8s_ref": ref, "phase": phase, "reason": reason})


async def refresh(state: State, cluster: Cluster, key: Key) -> None:
    """Status from the current attempt's Job and pods (Job and pod events call this)."""
    ftj = next(iter(cluster.finetunejobs.get(key, [])), None)
    if ftj is None:  # deleted: its children's deletion events end here
        return
    async with state.status_locks[key]:
        job = latest_job(cluster, key)
        status = current_status(state, ftj)
        if job is None or _attempt_of(job) != status.get("attempt") or status.get("phase") == Phase.SUSPENDED:
            return
        if adjusted_after(status):
            return  # this attempt ran out of memory and was adjusted: the next attempt is being placed
        pods = list(cluster.trainer_pods.get((key[0], job["metadata"]["name"]), []))
        observation = observe_attempt(status, job, pods)
        finished = ended_outcome(observation)
        ran = attempt_estimate(ftj, status) if finished else None
        adjustment = None
        if ran is not None and finished is not None:
            spec, analytic = ran
            await learn(state, ftj, spec=spec, analytic=analytic, status=status, outcome=finished)
            if finished == "OutOfMemory" and spec.training.on_out_of_memory == "Adjust":
                observation, adjustment = after_out_of_memory(state, cluster, spec=spec, analytic=analytic,
                                                              status=status, observation=observation)
        extra = {"adjustments": [*(status.get("adjustments") or []), adjustment.to_wire()]} if adjustment else None
        await _write_status(state, ftj, observation, extra)
    if adjustment is not None:
        await reconcile_or_report(state, cluster, ftj)  # the next attempt, with the adjustment


# ------------------------------------------------------------------ calibration and adjustments

def ended_outcome(observation: Observation) -> calibration.Outcome | None:
    """Succeeded, OutOfMemory or OOMKilled when the attempt ended so (what calibration learns from)."""
    if observation.phase == Phase.SUCCEEDED:
        return "Succeeded"
    if observation.phase == Phase.FAILED and observation.reason == Reason.OUT_OF_MEMORY:
        return "OutOfMemory"
    if observation.phase == Phase.FAILED and observation.reason == Reason.OOM_KILLED:
        return "OOMKilled"
    return None


def adjusted_after(status: Mapping[str, Any]) -> bool:
    """The current attempt ran out of memory and an adjustment for the next one was made."""
    adjustments = adjustments_of(status)
    return bool(adjustments) and adjustments[-1].attempt == status.get("attempt")


def adjustments_of(status: Mapping[str, Any]) -> list[AdjustmentStatus]:
    """The adjustments so far; an entry that does not validate is skipped (status is writable by the trainer)."""
    adjustments = status.get("adjustments")
    found = []
    for item in adjustments if isinstance(adjustments, list) else []:
        try:
            found.append(AdjustmentStatus.model_validate(item))
        except ValidationError:
            continue
    return found


def attempt_spec(spec: FineTuneJobSpec, status: Mapping[str, Any]) -> FineTuneJobSpec:
    """What an attempt runs: the effective spec with every out-of-memory adjustment so far."""
    return adjust.apply_adjustments(effective_spec(spec), adjustments_of(status))


def attempt_estimate(ftj: dict[str, Any], status: Mapping[str, Any]) -> tuple[FineTuneJobSpec, VramEstimate] | None:
    """The spec the current attempt ran and its analytic estimate, made once for what a finished attempt
    teaches (calibration, an adjustment); None when the spec or the model cannot be read any more."""
    try:
        spec = attempt_spec(parse_spec(ftj.get("spec") or {}), status)
        return spec, estimate(spec)
    except (SpecError, UnknownModelError):
        return None


async def learn(state: State, ftj: dict[str, Any], *, spec: FineTuneJobSpec, analytic: VramEstimate,
                status: Mapping[str, Any], outcome: calibration.Outcome) -> None:
    """Add the record of a finished attempt to the calibration store, and the store to its ConfigMap."""
    placement = status.get("placement") or {}
    training = status.get("training") or {}
    try:
        record = calibration.measured_record(
            uid=str(ftj["metadata"].get("uid")), attempt=int(status.get("attempt") or 0), spec=spec,
            estimate=analytic, outcome=outcome,
            peak_gib=_gib(training.get("peakGpuMemoryGiB")), gpu_memory_gib=_gib(placement.get("gpuMemoryGiB")),
            gpu_product=placement.get("gpuProduct") if isinstance(placement.get("gpuProduct"), str) else None,
        )
    except ValidationError:  # the trainer writes status.training: a value out of every bound teaches nothing
        return
    if record is None:
        return
    async with state.calibration_lock:
        if not state.calibration.add(record):
            return
        if not record.lower_bound:
            state.metrics.estimate_accuracy.labels(method=record.method).observe(record.ratio)
        namespace = state.config.calibration_namespace
        if namespace is None:
            return
        try:
            await state.kube.put(state.calibration.configmap(namespace))
        except Exception as error:  # calibration is best-effort: the status of the job comes first
            logger.warning("calibration ConfigMap %s/%s not written (kept in memory): %s",
                           namespace, calibration.CONFIGMAP_NAME, error)


def _gib(value: Any) -> float | None:
    """A GiB figure from status, or None when it is not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


async def load_calibration(state: State) -> calibration.Store:
    """The calibration store from its ConfigMap (empty when there is none, or it cannot be read: logged)."""
    namespace = state.config.calibration_namespace
    if namespace is None:
        return calibration.Store()
    try:
        configmap = await state.kube.read_configmap(namespace, calibration.CONFIGMAP_NAME)
        return calibration.store_from_configmap(configmap)
    except Exception as error:  # unreadable or forbidden: plan with analytic estimates rather than not start
        logger.warning("calibration ConfigMap %s/%s unreadable, starting empty: %s",
                       namespace, calibration.CONFIGMAP_NAME, error)
        return calibration.Store()


def _cluster_products(cluster: Cluster) -> list[tuple[str, float]]:
    products: dict[str, float] = {}
    for node in cluster.nodes.get(None, []):
        if node.product and node.memory_gib:
            products[node.product] = max(products.get(node.product, 0.0), node.memory_gib)
    return sorted(products.items(), key=lambda pair: pair[1])


def after_out_of_memory(state: State, cluster: Cluster, *, spec: FineTuneJobSpec, analytic: VramEstimate,
                        status: Mapping[str, Any], observation: Observation
                        ) -> tuple[Observation, AdjustmentStatus | None]:
    """The observation to write after an out-of-memory, and the adjustment for the next attempt (if any)."""
    placement = status.get("placement") or {}
    checkpoint = (status.get("lastCheckpoint") or {}).get("path")
    decision = adjust.decide(
        spec, attempt=int(status.get("attempt") or 1), done=len(adjustments_of(status)),
        estimate_gib=analytic.per_gpu_gib,
        gpu_memory_gib=_gib(placement.get("gpuMemoryGiB")) or analytic.per_gpu_gib,
        gpu_product=placement.get("gpuProduct"), products=_cluster_products(cluster),
        estimator=lambda changed: estimate(changed).per_gpu_gib, margin=state.config.safety_margin,
        resume=(f"resumes from {str(checkpoint).rsplit('/', 1)[-1]}" if checkpoint
                else "starts again (no checkpoint yet)"),
    )
    if decision.adjustment is None:
        return Observation(observation.phase, observation.reason, f"{observation.message}; {decision.message}",
                           observation.exit_code, observation.restarts), None
    return Observation(Phase.PENDING, Reason.ADJUSTED, f"Adjusted: {decision.message}"), decision.adjustment


def observe_attempt(status: Mapping[str, Any], job: dict[str, Any], pods: list[dict[str, Any]]) -> Observation:
    """observe(), with a Job pinned to node types being added waiting for its node (autoscale)."""
    return waiting_for_nodes(observe(job, pods), pods, (status.get("placement") or {}).get("nodeTypes") or [])


async def provisionable_types(state: State) -> tuple[NodeType, ...]:
    """Node types the cluster can add (autoscale mode): the chart's node groups and Karpenter's NodePools."""
    if state.config.capacity_mode != "autoscale":
        return ()
    now = asyncio.get_running_loop().time()
    if state.nodepool_types is None or now - state.nodepool_types[0] > NODE_TYPES_TTL_SECONDS:
        state.nodepool_types = (now, tuple(nodepools_types(await state.kube.list_nodepools())))
    return (*state.config.node_groups, *state.nodepool_types[1])



# ------------------------------------------------------------------------------------ reconcile


async def create_trainer_identity(state: State, owner: manifests.Owner) -> None:
    """The trainer's own ServiceAccount, Role and RoleBinding (it may patch only this FineTuneJob's status)."""
    await asyncio.gather(*(state.kube.create(body) for body in manifests.build_trainer_rbac(owner)))


async def shared_output_problem(state: State, ftj: dict[str, Any], spec: FineTuneJobSpec) -> bool:
    """A multi-node job whose output PVC is not ReadWriteMany fails with the fix (when the PVC is readable)."""
    volume = spec.output.volume
    if not distributed.is_multinode(spec) or volume is None:
        return False
    claim = await state.kube.read_claim(ftj["metadata"]["namespace"], volume.claim_name)
    problems = list(distributed.output_volume_problems(spec, claim))
    if problems:
        message = "; ".join(str(problem) for problem in problems)
        await write_status(state, ftj, Observation(Phase.FAILED, Reason.INVALID_SPEC, message))
    return bool(problems)


async def place(
    state: State, cluster: Cluster, ftj: dict[str, Any], spec: FineTuneJobSpec, needed: VramEstimate
) -> None:
    """Plan the attempt's `spec` (effective, with its adjustments) with its estimate, and create the children
    and Job of a new attempt, or say why not. All or nothing: GPUs reserved for a Job that is not created
    are released."""
    status = current_status(state, ftj)
    if await shared_output_problem(state, ftj, spec):
        return
    provisionable = await provisionable_types(state)
    owner = manifests.Owner.of(ftj)
    attempt = int(status.get("attempt") or 0) + 1
    name = manifests.job_name(owner.name, attempt)
    async with state.placement_lock:
        if not state.reservations.restored:
            state.reservations.restore(jobs_holding_gpus(cluster))
        now = time.monotonic()
        state.reservations.prune(lambda job: job_in_cluster(cluster, job), now=now)
        pods = [*cluster.gpu_pods.get(None, []), *state.reservations.as_pods()]
        outcome = plan(
            spec, needed, cluster.nodes.get(None, []), pods, safety_margin=state.config.safety_margin,
            provisionable=provisionable,
        )
        nodes: tuple[str, ...] = ()
        if isinstance(outcome, Placement):
            nodes = outcome.nodes[: spec.resources.nodes]
            state.reservations.reserve((owner.namespace, name), nodes, spec.resources.gpus, at=now)
    extra: dict[str, Any] = {"estimate": needed.to_status().to_wire()}
    if isinstance(outcome, NoFit):
        await write_status(state, ftj, Observation(Phase.FAILED, outcome.reason, outcome.message), extra)
        return
    if isinstance(outcome, Wait) and spec.queue_name is None:
        await write_status(state, ftj, Observation(Phase.QUEUED, outcome.reason, outcome.message), extra)
        return
    try:
        job = await create_attempt(
            state, owner, spec, attempt, outcome=outcome, nodes=nodes, replace_spec=bool(status.get("adjustments"))
        )
    except BaseException:
        # A Job the API server wrote despite the error is reserved again by its own event (track_reservation).
        state.reservations.release((owner.namespace, name))
        raise
    extra |= {"jobName": name, "attempt": attempt}
    if isinstance(outcome, Placement | Provision):
        extra["placement"] = outcome.to_status().to_wire()
        predicted = forecast_wire(spec, outcome.gpu_product, ForecastInputs(prices=state.config.gpu_prices))
        if predicted is not None:
            extra["forecast"] = predicted
    if isinstance(outcome, Provision):
        await write_status(state, ftj, Observation(Phase.QUEUED, Reason.WAITING_FOR_NODES, outcome.message), extra)
        return
    await write_status(state, ftj, observe(job, []), extra)


async def create_attempt(
    state: State,
    owner: manifests.Owner,
    spec: FineTuneJobSpec,
    attempt: int,
    *,
    outcome: Placement | Provision | Wait,
    nodes: tuple[str, ...],
    replace_spec: bool,
) -> dict[str, Any]:
    """Build and create the children of one attempt; the Job created. replace_spec: after an adjustment the
    ConfigMap of the earlier attempts is replaced by the adjusted spec."""
    affinity = outcome.node_affinity if isinstance(outcome, Placement | Provision) else None
    job = manifests.build_job(
        owner,
        spec,
        attempt,
        image=state.config.trainer_image,
        status_interval_seconds=state.config.trainer_status_interval_seconds,
        node_affinity=affinity,
    )
    if nodes and spec.resources.gpus > 0:
        job = manifests.with_reservation(job, nodes, spec.resources.gpus)
    service = [distributed.build_headless_service(job)] if distributed.is_multinode(spec) else []
    write_configmap = state.kube.put if replace_spec else state.kube.create
    # What the pod needs first, concurrently; the Job last: it is the commit point, so a refusal of any of
    # them leaves no Job (and so no GPUs held) behind. What was made is owned by the FineTuneJob and adopted
    # by the next try.
    await asyncio.gather(
        create_trainer_identity(state, owner),
        write_configmap(manifests.build_configmap(owner, spec)),
        *(state.kube.create(body) for body in service),
    )
    await state.kube.create(job)
    return job


def planning_estimate(state: State, spec: FineTuneJobSpec) -> VramEstimate:
    """The analytic estimate corrected by the measured runs of its shape: what the planner acts on."""
    return calibration.calibrate(estimate(spec), spec, state.calibration.records, state.config.safety_margin)


def _adoptable(job: dict[str, Any] | None, status: dict[str, Any]) -> bool:
    """A Job of this attempt (or of one created before a crash) is kept rather than made again."""
    if job is None:
        return False
    attempt = int(status.get("attempt") or 0)
    return _attempt_of(job) > attempt or (
        _attempt_of(job) == attempt and status.get("phase") != Phase.SUSPENDED
    )


async def reconcile(state: State, cluster: Cluster, ftj: dict[str, Any]) -> None:
    """Bring one FineTuneJob's children and status in line with its spec."""
    meta = ftj["metadata"]
    key = (meta["namespace"], meta["name"])
    status = current_status(state, ftj)
    if status.get("phase") in TERMINAL_PHASES and status.get("attempt"):
        return
    try:
        spec = effective_spec(parse_spec(ftj.get("spec") or {}))
    except SpecError as error:
        await write_status(state, ftj, Observation(Phase.FAILED, Reason.INVALID_SPEC, str(error)))
        return
    job = latest_job(cluster, key)
    if spec.suspend:
        if job is not None:
            await state.kube.delete(job)
        message = "suspended by spec.suspend; set it to false to resume from the last checkpoint"
        await write_status(state, ftj, Observation(Phase.SUSPENDED, Reason.SUSPENDED_BY_USER, message))
        return
    adjusted = adjusted_after(status)
    if job is not None and _adoptable(job, status) and not adjusted:
        if _attempt_of(job) > int(status.get("attempt") or 0):
            # Created just before a crash: its ConfigMap (and a multi-node job's Service) may not have been written.
            await state.kube.create(manifests.build_configmap(manifests.Owner.of(ftj), attempt_spec(spec, status)))
            if distributed.is_multinode(spec):
                await state.kube.create(distributed.build_headless_service(job))
        attempt = {"jobName": job["metadata"]["name"], "attempt": _attempt_of(job)}
        pods = list(cluster.trainer_pods.get((key[0], job["metadata"]["name"]), []))
        await write_status(state, ftj, observe_attempt(status, job, pods), attempt)
        return
    if status.get("jobName") and status.get("phase") != Phase.SUSPENDED and not adjusted:
        # This attempt's Job was created (the status says so) but the index has not seen it yet:
        # its events will follow. Placing again would start a second attempt.
        return
    denied = policy_problems(spec, state.config.policy)  # checked for every new attempt; a running one runs on
    if denied:
        message = "; ".join(str(problem) for problem in denied)
        await write_status(state, ftj, Observation(Phase.FAILED, Reason.POLICY_DENIED, message))
        return
    spec = attempt_spec(spec, status)
    try:
        needed = planning_estimate(state, spec)
    except UnknownModelError as error:
        await write_status(state, ftj, Observation(Phase.FAILED, Reason.UNKNOWN_MODEL, str(error)))
        return
    await place(state, cluster, ftj, spec, needed)


def retry_delay(failures: int) -> float:
    """Seconds before the next try after `failures` consecutive failed reconciles."""
    return min(FIRST_RETRY_SECONDS * 2 ** (failures - 1), MAX_RETRY_SECONDS)


def error_summary(error: BaseException) -> str:
    """One line about an exception for a status message: its class (unless an API answer) and its text."""
    text = " ".join(str(error).split())
    summary = text if isinstance(error, KubeError) else f"{type(error).__name__}: {text}".rstrip(": ")
    return summary if len(summary) <= MAX_ERROR_CHARS else summary[: MAX_ERROR_CHARS - 3] + "..."


def failure_observation(phase: str | None, error: BaseException, failures: int) -> Observation:
    """What the status says after the `failures`-th consecutive failed reconcile: retrying, or given up."""
    summary = f"the operator could not reconcile this FineTuneJob ({error_summary(error)})"
    if failures >= MAX_RECONCILE_FAILURES:
        message = (f"{summary}; gave up after {failures} tries: fix the cause, then change the spec or restart "
                   "the operator to try again")
        return Observation(Phase.FAILED, Reason.INTERNAL_ERROR, message)
    message = f"{summary}; try {failures + 1} of {MAX_RECONCILE_FAILURES} in {retry_delay(failures):.0f} s"
    current = next((value for value in Phase if value == phase), Phase.PENDING)  # a status may hold anything
    return Observation(current, Reason.INTERNAL_ERROR, message)


async def reconcile_or_report(
    state: State, cluster: Cluster, ftj: dict[str, Any], *, wait_for_backoff: bool = False
) -> float | None:
    """reconcile(), turning an exception into a status and an Event: the seconds until the caller should
    retry, None when it succeeded or gave up. wait_for_backoff: skip it while an earlier failure backs off
    (re-plans triggered by events would otherwise spend the tries at once)."""
    meta = ftj["metadata"]
    key, generation = (meta["namespace"], meta["name"]), meta.get("generation")
    past = state.failures.get(key)
    if past is not None and past.generation != generation:
        past = None  # a changed spec starts afresh
    if past is not None and (
        past.count >= MAX_RECONCILE_FAILURES or (wait_for_backoff and time.monotonic() < past.retry_at)
    ):
        return None
    try:
        await reconcile(state, cluster, ftj)
    except Exception as error:
        failures = (past.count if past else 0) + 1
        delay = retry_delay(failures)
        state.failures[key] = Failures(generation, failures, time.monotonic() + delay)
        observation = failure_observation(current_status(state, ftj).get("phase"), error, failures)
        logger.warning("%s/%s: reconcile failed (%s)", key[0], key[1], error_summary(error))
        try:
            await write_status(state, ftj, observation)
        except Exception as status_error:  # the API server is down: the log has it, the retry writes it
            logger.warning("%s/%s: cannot write the status (%s)", key[0], key[1], error_summary(status_error))
        return None if failures >= MAX_RECONCILE_FAILURES else delay
    state.failures.pop(key, None)
    return None


def frozen_fields(diff: Iterable[Any], status: dict[str, Any]) -> list[str]:
    """Training-defining spec fields changed after the job started."""
    if not status.get("attempt"):
        return []
    changed = {tuple(str(part) for part in path) for _, path, _, _ in diff}
    return sorted(".".join(path) for path in changed if path[:1] == ("spec",) and frozen_after_start(path[1:]))


def is_queued(status: Mapping[str, Any], **_: Any) -> bool:
    return status.get("phase") == Phase.QUEUED and not status.get("jobName")


async def replan_queued(state: State, cluster: Cluster) -> None:
    """Try to place every Queued FineTuneJob again (capacity may have changed)."""
    for ftjs in list(cluster.finetunejobs.values()):
        for ftj in ftjs:
            if is_queued(current_status(state, ftj)):
                await reconcile_or_report(state, cluster, ftj, wait_for_backoff=True)


def ttl_remaining(status: dict[str, Any], ttl: int, at: datetime.datetime) -> float:
    finished = datetime.datetime.fromisoformat(str(status["completionTime"]).replace("Z", "+00:00"))
    return max(0.0, (finished - at).total_seconds() + ttl)
