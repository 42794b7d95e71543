"""The status machine: what the Job and its pods say -> phase, conditions and failure reason.

Pure functions over the dicts the API server returns. `observe(job, pods)` reads the state;
`status_patch(current, observation, ...)` turns it into the merge patch of the operator-owned status
fields, empty when nothing changed (so an unchanged state costs no API write).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kubetune import contract
from kubetune.api import ConditionType, Phase, Reason

# Pod waiting reasons that mean the image cannot be pulled.
IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
# Reasons that say the spec itself is wrong (condition Validated=False).
INVALID_REASONS = frozenset({Reason.INVALID_SPEC, Reason.UNKNOWN_MODEL, Reason.SPEC_FROZEN})
# Reasons that say the cluster has no room for the job (now or ever): condition Schedulable=False.
UNSCHEDULABLE_REASONS = frozenset(
    {
        Reason.WAITING_FOR_GPUS,
        Reason.WAITING_FOR_NODES,
        Reason.GPU_MEMORY_UNKNOWN,
        Reason.INSUFFICIENT_GPU_MEMORY,
        Reason.NOT_ENOUGH_GPUS_PER_NODE,
        Reason.NOT_ENOUGH_NODES,
        Reason.NO_GPU_NODES,
        Reason.NO_MATCHING_GPU_PRODUCT,
        Reason.UNSCHEDULABLE,
    }
)
# Reasons that say a Job exists for the job, so it was placed: condition Schedulable=True.
PLACED_PHASES = frozenset({Phase.RUNNING, Phase.SUCCEEDED})
PLACED_REASONS = frozenset({Reason.PLACED, Reason.JOB_CREATED, Reason.PODS_PENDING, Reason.QUEUED_BY_KUEUE})
# Specific failure reasons from the pod explain a Job failure better than the Job's own reason.
POD_REASONS_OVER_JOB_REASON = frozenset(
    {
        Reason.OUT_OF_MEMORY,
        Reason.OOM_KILLED,
        Reason.DATASET_ERROR,
        Reason.MODEL_LOAD_ERROR,
        Reason.CONFIG_ERROR,
    }
)
JOB_FAILURE_REASONS = {
    "DeadlineExceeded": Reason.DEADLINE_EXCEEDED,
    "BackoffLimitExceeded": Reason.BACKOFF_LIMIT_EXCEEDED,
}


@dataclass(frozen=True)
class Observation:
    """Where a FineTuneJob stands: its phase, why, and a sentence for humans; from a Job, also how
    many times its trainer restarted (None when no Job says)."""

    phase: Phase
    reason: str
    message: str
    exit_code: int | None = None
    restarts: int | None = None


@dataclass(frozen=True)
class PodFailure:
    reason: str
    message: str
    exit_code: int | None


# -------------------------------------------------------------------------------- reading pods


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == contract.TRAINER_CONTAINER), {})


def pod_failure(pod: dict[str, Any]) -> PodFailure | None:
    """Why the trainer container of a pod ended, when it ended badly."""
    state = _trainer_status(pod).get("state") or {}
    terminated = state.get("terminated")
    if not terminated or terminated.get("exitCode") == 0:
        return None
    exit_code = terminated.get("exitCode")
    if terminated.get("reason") == "OOMKilled":
        return PodFailure(
            Reason.OOM_KILLED,
            "the trainer exceeded its memory limit and was killed; raise spec.resources.memory "
            "or lower spec.training.batchSize",
            exit_code,
        )
    from_trainer = contract.read_termination_message(terminated.get("message") or "")
    if from_trainer is not None:
        return PodFailure(from_trainer[0], from_trainer[1], exit_code)
    if exit_code in set(contract.EXIT_CODE_REASONS):
        reason = contract.EXIT_CODE_REASONS[contract.ExitCode(exit_code)]
        return PodFailure(reason, f"the trainer exited with code {exit_code} ({reason})", exit_code)
    detail = (terminated.get("message") or "").strip().splitlines()[-1:] or [
        terminated.get("reason", "Error")
    ]
    return PodFailure(Reason.UNKNOWN, f"the trainer exited with code {exit_code}: {detail[0]}", exit_code)


def _latest_failure(pods: list[dict[str, Any]]) -> PodFailure | None:
    def finished_at(pod: dict[str, Any]) -> str:
        terminated = (_trainer_status(pod).get("state") or {}).get("terminated") or {}
        return str(terminated.get("finishedAt") or "")

    failures = [(finished_at(pod), failure) for pod in pods if (failure := pod_failure(pod)) is not None]
    return max(failures, key=lambda pair: pair[0])[1] if failures else None


def _pending_problem(pod: dict[str, Any]) -> Observation | None:
    """Why a pending pod does not start: an image it cannot pull, or no node that takes it."""
    waiting = (_trainer_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in IMAGE_PULL_REASONS:
        return Observation(
            Phase.PENDING,
            Reason.IMAGE_PULL_ERROR,
            f"cannot pull the trainer image ({waiting['reason']}): {waiting.get('message', '')}".rstrip(": ")
            + "; check spec.image and the registry's pull secret",
        )
    for condition in (pod.get("status") or {}).get("conditions") or []:
        unschedulable = (condition.get("type"), condition.get("status"), condition.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        )
        if unschedulable:
            return Observation(
                Phase.PENDING,
                Reason.UNSCHEDULABLE,
                f"the scheduler cannot place the trainer pod: {condition.get('message', '')}",
            )
    return None


def _is_running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get(
        "deletionTimestamp"
    )


# ---------------------------------------------------------------------------------- the machine


def _job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def job_finished(job: dict[str, Any]) -> bool:
    """The Job completed or failed for good."""
    return _job_condition(job, "Complete") is not None or _job_condition(job, "Failed") is not None


def _failed(job: dict[str, Any], condition: dict[str, Any], pods: list[dict[str, Any]]) -> Observation:
    job_reason = condition.get("reason", "")
    failure = _latest_failure(pods)
    if failure is not None and (
        failure.reason in POD_REASONS_OVER_JOB_REASON or job_reason == "PodFailurePolicy"
    ):
        return Observation(Phase.FAILED, failure.reason, failure.message, failure.exit_code)
    reason = JOB_FAILURE_REASONS.get(job_reason, Reason.UNKNOWN)
    if reason == Reason.DEADLINE_EXCEEDED:
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        message = (
            f"the attempt ran longer than spec.activeDeadlineSeconds ({deadline} s); raise it or train less"
        )
    elif reason == Reason.BACKOFF_LIMIT_EXCEEDED:
        failed = (job.get("status") or {}).get("failed", 0)
        message = f"{failed} trainer pod(s) failed, more than spec.maxRetries allows"
    else:
        message = condition.get("message") or f"the Job failed ({job_reason or 'no reason given'})"
    if failure is not None:
        message += f"; last pod: {failure.message}"
    return Observation(Phase.FAILED, reason, message, failure.exit_code if failure else None)


def _suspended(job: dict[str, Any]) -> Observation:
    queue = job["metadata"].get("labels", {}).get(contract.LABEL_KUEUE_QUEUE)
    if queue is None:
        return Observation(Phase.SUSPENDED, Reason.SUSPENDED_BY_USER, "the Job is suspended")
    if (job.get("status") or {}).get("startTime"):
        return Observation(
            Phase.QUEUED,
            Reason.EVICTED_BY_KUEUE,
            f"Kueue evicted the Job from queue {queue}; it resumes from the last checkpoint when re-admitted",
        )
    return Observation(
        Phase.QUEUED, Reason.QUEUED_BY_KUEUE, f"waiting for Kueue to admit the Job in queue {queue}"
    )


def trainer_restarts(job: dict[str, Any]) -> int:
    """Times the Job started its trainer again after a failure, what spec.maxRetries bounds: its failed
    pods (a multi-node gang's failure once, however many of its pods failed), less the failure that
    ended a failed Job. A pod the podFailurePolicy ignores (preempted, evicted) is replaced uncounted,
    as the Job counts it neither."""
    failed = int((job.get("status") or {}).get("failed") or 0)
    gang = max(1, int((job.get("spec") or {}).get("parallelism") or 1))
    failures = -(-failed // gang)
    ended_by_a_failure = failures > 0 and _job_condition(job, "Failed") is not None
    return failures - 1 if ended_by_a_failure else failures


def observe(job: dict[str, Any], pods: list[dict[str, Any]]) -> Observation:
    """Where a FineTuneJob whose current attempt is `job` with these trainer `pods` stands."""
    return replace(_phase(job, pods), restarts=trainer_restarts(job))


def _phase(job: dict[str, Any], pods: list[dict[str, Any]]) -> Observation:
    if _job_condition(job, "Complete") is not None:
        return Observation(Phase.SUCCEEDED, Reason.SUCCEEDED, "training finished")
    failed = _job_condition(job, "Failed")
    if failed is not None:
        return _failed(job, failed, pods)
    if (job.get("spec") or {}).get("suspend"):
        return _suspended(job)
    running = [pod for pod in pods if _is_running(pod)]
    if running:
        nodes = sorted({pod.get("spec", {}).get("nodeName") or "?" for pod in running})
        return Observation(Phase.RUNNING, Reason.TRAINING, f"training on {', '.join(nodes)}")
    pending = [pod for pod in pods if (pod.get("status") or {}).get("phase", "Pending") == "Pending"]
    for pod in pending:
        problem = _pending_problem(pod)
        if problem is not None:
            return problem
    retrying = _latest_failure(pods)
    if retrying is not None:
        return Observation(
            Phase.PENDING,
            Reason.PODS_PENDING,
            f"restarting the trainer after a failure ({retrying.reason}: {retrying.message}); "
            "it resumes from the last checkpoint",
        )
    if pending:
        return Observation(Phase.PENDING, Reason.PODS_PENDING, "waiting for the trainer pod to start")
    return Observation(Phase.PENDING, Reason.JOB_CREATED, f"created Job {job['metadata']['name']}")


def waiting_for_nodes(observation: Observation, pods: list[dict[str, Any]], node_types: list[str]) -> Observation:
    """A Job pinned to node types the cluster is adding (autoscale): until one of its pods is bound to a
    node, it is Queued waiting for the node, not a pod the scheduler cannot place."""
    bound = any((pod.get("spec") or {}).get("nodeName") for pod in pods)
    waiting = observation.reason in (Reason.UNSCHEDULABLE, Reason.PODS_PENDING, Reason.JOB_CREATED)
    if not node_types or bound or observation.phase != Phase.PENDING or not waiting:
        return observation
    scheduler = f" ({observation.message})" if observation.reason == Reason.UNSCHEDULABLE else ""
    return replace(observation, phase=Phase.QUEUED, reason=Reason.WAITING_FOR_NODES,
                   message=f"waiting for the autoscaler to add a node of: {'; '.join(node_types)}{scheduler}; "
                   "if none joins, see the autoscaler's events (Karpenter: kubectl get nodeclaims)")


# ---------------------------------------------------------------------------------- the patch


def lifecycle_conditions(observation: Observation) -> dict[str, tuple[str, str]]:
    """Condition type -> (status, reason) that this observation decides."""
    phase, reason = observation.phase, observation.reason
    decided: dict[str, tuple[str, str]] = {
        ConditionType.VALIDATED: ("False", reason) if reason in INVALID_REASONS else ("True", Reason.VALID),
    }
    if reason in UNSCHEDULABLE_REASONS:
        decided[ConditionType.SCHEDULABLE] = ("False", reason)
    elif phase in PLACED_PHASES or reason in PLACED_REASONS:
        decided[ConditionType.SCHEDULABLE] = ("True", Reason.PLACED)
    if reason == Reason.ADJUSTED:
        decided[ConditionType.ADJUSTED] = ("True", reason)  # stays True: describe shows the latest change
    if reason == Reason.SPEC_FROZEN:
        return decided
    for kind, active in (
        (ConditionType.RUNNING, Phase.RUNNING),
        (ConditionType.COMPLETE, Phase.SUCCEEDED),
        (ConditionType.FAILED, Phase.FAILED),
        (ConditionType.SUSPENDED, Phase.SUSPENDED),
    ):
        decided[kind] = ("True", reason) if phase == active else ("False", reason)
    return decided


def merge_conditions(
    existing: list[dict[str, Any]], observation: Observation, *, generation: int | None, now: str
) -> list[dict[str, Any]]:
    """The conditions with this observation applied; lastTransitionTime moves only when status does."""
    by_type = {condition["type"]: dict(condition) for condition in existing}
    for kind, (status, reason) in lifecycle_conditions(observation).items():
        old = by_type.get(kind)
        by_type[kind] = {
            "type": str(kind),
            "status": status,
            "reason": str(reason),
            "message": observation.message
            if status == "True" or kind in (ConditionType.VALIDATED, ConditionType.SCHEDULABLE, ConditionType.ADJUSTED)
            else "",
            "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == status else now,
            "observedGeneration": generation,
        }
    order = [str(kind) for kind in ConditionType]
    return sorted(
        by_type.values(), key=lambda c: order.index(c["type"]) if c["type"] in order else len(order)
    )


def _failure(observation: Observation, current: dict[str, Any]) -> dict[str, Any]:
    message = observation.message
    estimate = current.get("estimate") or {}
    if observation.reason in (Reason.OUT_OF_MEMORY, Reason.OOM_KILLED) and "perGpuGiB" in estimate:
        message += f" (kubetune estimated {estimate['perGpuGiB']} GiB per GPU)"
    failure: dict[str, Any] = {"reason": str(observation.reason), "message": message}
    if observation.exit_code is not None:
        failure["exitCode"] = observation.exit_code
    return failure


def status_patch(
    current: dict[str, Any], observation: Observation, *, generation: int | None, now: str
) -> dict[str, Any]:
    """The merge patch of the operator-owned status fields; {} when the status already says this."""
    wanted: dict[str, Any] = {
        "phase": str(observation.phase),
        "message": observation.message,
        "conditions": merge_conditions(
            current.get("conditions") or [], observation, generation=generation, now=now
        ),
        "observedGeneration": generation,
    }
    if observation.restarts is not None:
        wanted["restarts"] = observation.restarts
    if observation.phase == Phase.FAILED:
        wanted["failure"] = _failure(observation, current)
    elif current.get("failure") is not None and observation.reason != Reason.SPEC_FROZEN:
        wanted["failure"] = None
    if observation.phase == Phase.RUNNING and not current.get("startTime"):
        wanted["startTime"] = now
    if observation.phase in (Phase.SUCCEEDED, Phase.FAILED) and not current.get("completionTime"):
        wanted["completionTime"] = now
    elif observation.phase not in (Phase.SUCCEEDED, Phase.FAILED) and current.get("completionTime"):
        wanted["completionTime"] = None  # a fixed spec (after InvalidSpec or no fit) runs again
    return {key: value for key, value in wanted.items() if current.get(key) != value}
