"""The operator <-> trainer <-> chart contract: env names, paths, exit codes, metric names.

Every name here is also written in ../shared/DESIGN.md; dashboards and alerts use the metric
names, the operator's Job builder and the trainer use the env names and exit codes.
"""

from __future__ import annotations

import json
from enum import IntEnum

from kubetune.api import Reason

# ---------------------------------------------------------------- environment of the trainer pod
ENV_SPEC_PATH = "KUBETUNE_SPEC_PATH"
ENV_JOB_NAME = "KUBETUNE_JOB_NAME"
ENV_JOB_NAMESPACE = "KUBETUNE_JOB_NAMESPACE"
ENV_OUTPUT_DIR = "KUBETUNE_OUTPUT_DIR"
ENV_METRICS_PORT = "KUBETUNE_METRICS_PORT"
ENV_STATUS_INTERVAL_SECONDS = "KUBETUNE_STATUS_INTERVAL_SECONDS"
ENV_HF_TOKEN = "HF_TOKEN"
ENV_HF_HOME = "HF_HOME"

# Multi-node jobs (resources.nodes > 1); Kubernetes itself sets JOB_COMPLETION_INDEX on Indexed Job pods.
ENV_RDZV_ENDPOINT = "KUBETUNE_RDZV_ENDPOINT"  # host:port of pod 0's c10d rendezvous store
ENV_RDZV_ID = "KUBETUNE_RDZV_ID"  # one rendezvous per Job (attempt)
ENV_RDZV_TIMEOUT_SECONDS = "KUBETUNE_RDZV_TIMEOUT_SECONDS"  # how long a pod waits for the others
ENV_JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
RDZV_PORT = 29400
# The trainer's CUDA caching allocator maps memory in growable segments unless the pod's env says otherwise:
# without them, reserved memory ran 18-78% above allocated with gradient checkpointing and QLoRA
# (docs/estimator.md), and the estimator could only guess that fragmentation.
ENV_CUDA_ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
CUDA_ALLOC_CONF = "expandable_segments:True"

# Names a user may not set in spec.env: the contract above, and what torchrun gives each worker.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                "MASTER_ADDR", "MASTER_PORT")
RESERVED_ENV_PREFIXES = ("KUBETUNE_", "TORCHELASTIC_")
RESERVED_ENV_NAMES = (ENV_HF_TOKEN, ENV_HF_HOME, ENV_JOB_COMPLETION_INDEX, *TORCHRUN_ENV)


def is_reserved_env_name(name: str) -> bool:
    """Whether kubetune sets this variable itself (spec.env may not)."""
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)

DEFAULT_METRICS_PORT = 9090
DEFAULT_STATUS_INTERVAL_SECONDS = 30

# ------------------------------------------------------------------- paths inside the trainer pod
SPEC_MOUNT_DIR = "/etc/kubetune"
SPEC_FILE_NAME = "spec.yaml"
SPEC_PATH = f"{SPEC_MOUNT_DIR}/{SPEC_FILE_NAME}"
OUTPUT_DIR = "/output"
CACHE_DIR = "/cache"
HF_HOME = f"{CACHE_DIR}/huggingface"
TMP_DIR = "/tmp"
SHM_DIR = "/dev/shm"
TERMINATION_LOG = "/dev/termination-log"
SUMMARY_FILE_NAME = "training_summary.json"

# ------------------------------------------------------------------------ trainer exit codes
class ExitCode(IntEnum):
    """Exit codes of `python -m kubetune_trainer`; the Job's podFailurePolicy reads them."""

    OK = 0
    UNEXPECTED = 1
    CONFIG_ERROR = 10
    DATASET_ERROR = 11
    MODEL_LOAD_ERROR = 12
    OUT_OF_MEMORY = 13
    INTERRUPTED = 14


# Retrying these cannot help: the same spec fails the same way. The Job fails at once.
NON_RETRYABLE_EXIT_CODES = (
    ExitCode.CONFIG_ERROR,
    ExitCode.DATASET_ERROR,
    ExitCode.MODEL_LOAD_ERROR,
    ExitCode.OUT_OF_MEMORY,
)

# The `reason` the trainer writes into its JSON termination message, per exit code.
EXIT_CODE_REASONS: dict[ExitCode, Reason] = {
    ExitCode.CONFIG_ERROR: Reason.CONFIG_ERROR,
    ExitCode.DATASET_ERROR: Reason.DATASET_ERROR,
    ExitCode.MODEL_LOAD_ERROR: Reason.MODEL_LOAD_ERROR,
    ExitCode.OUT_OF_MEMORY: Reason.OUT_OF_MEMORY,
    ExitCode.INTERRUPTED: Reason.INTERRUPTED,
}



def read_termination_message(text: str) -> tuple[str, str] | None:
    """The trainer's JSON termination message, {"reason": ..., "message": ...}, as (reason, message);
    None when the text is not one (the operator reads it from the pod, the launcher from its workers)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
        return None
    return data["reason"], str(data.get("message", ""))


# --------------------------------------------------------------------------------- labels
LABEL_FINETUNEJOB = "kubetune.io/finetunejob"
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_APP_NAME = "app.kubernetes.io/name"
LABEL_APP_INSTANCE = "app.kubernetes.io/instance"
LABEL_APP_COMPONENT = "app.kubernetes.io/component"
LABEL_APP_MANAGED_BY = "app.kubernetes.io/managed-by"
TRAINER_APP_NAME = "kubetune-trainer"  # app.kubernetes.io/name of trainer pods (the PodMonitor selects it)
OPERATOR_APP_NAME = "kubetune-operator"  # app.kubernetes.io/name of the operator's pods
MANAGED_BY = "kubetune"
TRAINER_METRICS_PORT_NAME = "metrics"  # named container port the PodMonitor scrapes
TRAINER_CONTAINER = "trainer"
TRAINER_SERVICE_ACCOUNT = "kubetune-trainer"
GPU_RESOURCE = "nvidia.com/gpu"

# ---------------------------------------------------------------------------- metric names
# Every rank's GPU memory, gathered to rank 0 at each log: a sample per rank, labelled RANK_LABEL.
TRAINER_RANK_METRICS = (
    "kubetune_train_rank_gpu_memory_allocated_bytes",
    "kubetune_train_rank_gpu_memory_reserved_bytes",
    "kubetune_train_rank_gpu_memory_peak_bytes",
)
RANK_LABEL = "rank"  # the global rank, 0 .. world size - 1
TRAINER_METRICS = (
    "kubetune_train_loss",
    "kubetune_train_eval_loss",
    "kubetune_train_learning_rate",
    "kubetune_train_grad_norm",
    "kubetune_train_step",
    "kubetune_train_total_steps",
    "kubetune_train_epoch",
    "kubetune_train_tokens_total",
    "kubetune_train_tokens_per_second",
    "kubetune_train_samples_per_second",
    "kubetune_train_eta_seconds",
    "kubetune_train_gpu_memory_allocated_bytes",
    "kubetune_train_gpu_memory_reserved_bytes",
    "kubetune_train_gpu_memory_peak_bytes",
    "kubetune_train_gpu_utilization_ratio",
    "kubetune_train_estimated_gpu_memory_bytes",
    "kubetune_train_trainable_parameters",
    "kubetune_train_checkpoints_saved_total",
    *TRAINER_RANK_METRICS,
)
OPERATOR_METRICS = (
    "kubetune_operator_reconcile_total",
    "kubetune_operator_reconcile_duration_seconds",
    "kubetune_operator_finetunejobs",
    "kubetune_operator_api_errors_total",
    "kubetune_operator_estimate_accuracy_ratio",
)
